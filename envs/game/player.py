"""A scripted Wordle player: keeps the words consistent with all feedback and picks the guess that
splits them into the most feedback classes (greedy max-partition, near-optimal for Wordle)."""

from __future__ import annotations

import re

from envs.game.wordle import feedback
from envs.game.words import word_list

_FEEDBACK = re.compile(r"Guess \d+: ([a-z]+) -> ([GY_]+)")


class WordlePlayer:
    """Plays one episode. Call `act(observation)` with each observation; it returns the action text.

    Args:
        words: the env's word list (`word_list(list_size, list_seed)`).
        max_scored: at most this many candidates are scored per guess (keeps each move cheap).
    """

    def __init__(self, words: tuple[str, ...] | None = None, max_scored: int = 64):
        self.words = words or word_list()
        self.candidates = list(self.words)
        self.max_scored = max_scored

    def act(self, observation: str) -> str:
        for guess, marks in _FEEDBACK.findall(observation):
            self.candidates = [w for w in self.candidates if feedback(guess, w) == marks]
        return f"<guess>{self.best_guess()}</guess>"

    def best_guess(self) -> str:
        if not self.candidates:
            return self.words[0]
        if len(self.candidates) <= 2:
            return self.candidates[0]
        if len(self.candidates) == len(self.words):  # the opener depends only on the list: compute once
            key = (id(self.words), self.max_scored)
            if key not in _OPENERS:
                _OPENERS[key] = self._max_partition()
            return _OPENERS[key]
        return self._max_partition()

    def _max_partition(self) -> str:
        pool = self.candidates[: self.max_scored]
        targets = self.candidates[:: max(1, len(self.candidates) // 256)]
        return max(pool, key=lambda g: len({feedback(g, t) for t in targets}))


_OPENERS: dict[tuple[int, int], str] = {}


def play_transcript(secret: str, words: tuple[str, ...] | None = None, max_turns: int = 6) -> list[str]:
    """The actions the player takes against `secret` (for benchmarks that replay a game cheaply)."""
    player = WordlePlayer(words)
    observation, actions = "", []
    for turn in range(1, max_turns + 1):
        action = player.act(observation)
        actions.append(action)
        guess = action[len("<guess>"):-len("</guess>")]
        if guess == secret:
            break
        observation = f"Guess {turn}: {guess} -> {feedback(guess, secret)}"
    return actions
