"""Wordle over a generated word list: a multi-turn text game with a known optimal strategy family."""

from __future__ import annotations

import collections
import re

from agentic.core import Env, Observation, Step, Task
from envs.game.words import word_list, word_set

GREEN, YELLOW, GRAY = "G", "Y", "_"
_GUESS = re.compile(r"<guess>\s*([A-Za-z]+)\s*</guess>")


def feedback(guess: str, secret: str) -> str:
    """Wordle colouring, e.g. "GY__G": G right letter right spot, Y in the word elsewhere, _ absent.

    Repeated letters are coloured at most as often as they occur in the secret (greens first).
    """
    marks = [GRAY] * len(guess)
    unmatched = collections.Counter()
    for i, (g, s) in enumerate(zip(guess, secret, strict=False)):
        if g == s:
            marks[i] = GREEN
        else:
            unmatched[s] += 1
    for i, g in enumerate(guess):
        if marks[i] == GRAY and unmatched[g] > 0:
            marks[i] = YELLOW
            unmatched[g] -= 1
    return "".join(marks)


def parse_guess(action: str) -> str | None:
    """The last <guess>word</guess> in the action, or the action itself when it is one bare word."""
    found = _GUESS.findall(action)
    if found:
        return found[-1].lower()
    bare = action.strip().lower()
    return bare if bare.isalpha() and len(bare) == 5 else None


class WordleEnv(Env):
    """Guess a secret 5-letter word in `max_turns` guesses; reward 1 for a win.

    Env kwargs: `max_turns` (6), `list_size` / `list_seed` (the generated word list, see
    `words.word_list`). Task: `{"secret": word}` or `{"index": i}` (into the list) or
    `{"seed": s}` (a reproducible random word). Each observation after a guess reads
    "Guess 2: crane -> GY__G (4 guesses left)"; guesses not in the list are answered
    with an error and cost a turn.
    """

    def __init__(self, max_turns: int = 6, list_size: int = 2000, list_seed: int = 0):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.words = word_list(list_size, list_seed)
        self._vocab = word_set(list_size, list_seed)
        self.secret = ""
        self.turns = self.invalid = 0
        self.won = False

    async def reset(self, task: Task) -> Observation:
        if "secret" in task:
            self.secret = str(task["secret"]).lower()
            if self.secret not in self._vocab:
                raise ValueError(f"secret {self.secret!r} is not in the word list")
        elif "index" in task:
            self.secret = self.words[int(task["index"]) % len(self.words)]
        else:
            import random
            self.secret = random.Random(task.get("seed")).choice(self.words)
        text = (f"Let's play Wordle. Guess the secret 5-letter word in {self.max_turns} guesses. "
                f"Words come from a list of {len(self.words)} made-up words such as "
                f"{', '.join(self.words[:3])}. Reply with <guess>word</guess>. After each guess you "
                f"see one mark per letter: G = right letter, right spot; Y = in the word, elsewhere; "
                f"_ = not in the word.")
        return Observation(text=text, info={"max_turns": self.max_turns, "stop": ["</guess>"]})

    async def step(self, action: str) -> Step:
        self.turns += 1
        left = self.max_turns - self.turns
        guess = parse_guess(action)
        if guess is None or guess not in self._vocab:
            self.invalid += 1
            why = "no <guess>word</guess> found" if guess is None else f"{guess!r} is not in the word list"
            text = f"Invalid guess {self.turns}: {why} ({left} guesses left)."
            return self._after(text, left)
        marks = feedback(guess, self.secret)
        if guess == self.secret:
            self.won = True
            return Step(observation=f"Guess {self.turns}: {guess} -> {marks}. Solved!", reward=1.0, done=True,
                        info={"outcome": "won", "metrics": self.metrics()})
        return self._after(f"Guess {self.turns}: {guess} -> {marks} ({left} guesses left).", left)

    def _after(self, text: str, left: int) -> Step:
        if left > 0:
            return Step(observation=text)
        return Step(observation=f"{text} Out of guesses; the word was {self.secret}.", done=True,
                    info={"outcome": "lost", "metrics": self.metrics()})

    def metrics(self) -> dict[str, float]:
        return {"turns": float(self.turns), "won": float(self.won), "invalid_guesses": float(self.invalid)}
