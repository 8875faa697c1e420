"""TextArena games, hosted as they are: `reset(num_players, seed)`, `get_observation()`,
`step(action) -> (done, info)`, `close() -> (rewards, game_info)`.

    python -m agentic.env.host --envs textarena --import envs.ecosystem.textarena

Env kwargs: `env_id` (required: a TextArena registry id such as "TicTacToe-v0-raw", or
"package.module:Class" for a game class outside the registry), `num_players` (1), `seat` (0: the seat
the policy plays), `opponent` (two-player games: "listed_moves", a fixed opponent that plays a
seed-chosen move among those the game lists as `'[...]'` in its latest observation; "self", self-play:
the policy plays every seat; or "package.module:function", a function `(observation, rng) -> action`),
`make_kwargs` ({}), `imports` (modules to import first). Task: `{"seed": s}`.

Observations: a "-raw" id gives the messages since the seat last moved (TextArena's observation
list), written one per line as "[GAME] ..." / "[Player 1] ..."; other ids give TextArena's own
rendering. With a fixed opponent, the opponent's turns run inside `step`, and the observation is
what the policy's seat sees when it is to move again. In self-play each observation is the next
seat's view, headed "[You are Player k]"; the whole game is one episode, rewarded for `seat` (the
other seats' moves are the policy's too, in the same transcript). The reward is TextArena's final
reward of `seat` (e.g. 1 win, 0 draw, -1 loss), given on the last step; `Step.info["rewards"]` has
every seat's. Deterministic when the game and the opponent draw only from the task's seed.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable
from typing import Any

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register
from envs.ecosystem._common import as_float, jsonable, load_object

_LISTED = re.compile(r"'(\[[^\]\n]{1,40}\])'")
MAX_OPPONENT_MOVES = 1000  # a fixed opponent stuck in a loop of invalid moves ends the episode


def listed_moves(observation: str, rng: random.Random) -> str:
    """A fixed opponent: a seed-chosen move among the `'[...]'` moves the latest observation lists."""
    start = observation.rfind("Available")
    moves = _LISTED.findall(observation[start:] if start >= 0 else observation)
    return rng.choice(moves) if moves else "[0]"


def _render(obs: Any) -> str:
    if isinstance(obs, str):
        return obs
    lines = []
    for item in obs:  # TextArena's raw observations: (from_id, message, observation type)
        sender, message = item[0], item[1]
        lines.append(f"[{'GAME' if sender == -1 else f'Player {sender}'}] {message}")
    return "\n".join(lines)


class TextArenaEnv(Env):
    """One TextArena game (see the module docstring)."""

    def __init__(self, env_id: str = "", num_players: int = 1, seat: int = 0, opponent: str = "listed_moves",
                 make_kwargs: dict[str, Any] | None = None, imports: list[str] | tuple[str, ...] = ()):
        if not env_id:
            raise ValueError("env kwarg 'env_id' is required (a TextArena id such as 'TicTacToe-v0-raw')")
        if not 0 <= seat < num_players:
            raise ValueError(f"seat {seat} is outside [0, {num_players}) (num_players)")
        for module in imports:
            importlib.import_module(module)
        if ":" in env_id and "." in env_id.split(":")[0]:
            self.game = load_object(env_id)(**(make_kwargs or {}))
        else:
            import textarena  # imported on first use

            self.game = textarena.make(env_id, **(make_kwargs or {}))
        self.env_id, self.num_players, self.seat = env_id, num_players, seat
        self.self_play = opponent == "self"
        self.opponent: Callable[[str, random.Random], str] | None = None
        if num_players > 1 and not self.self_play:
            self.opponent = listed_moves if opponent == "listed_moves" else load_object(opponent)
        self.rng = random.Random(0)
        self.moves = 0
        self.rewards: dict[str, float] = {}

    async def reset(self, task: Task) -> Observation:
        seed = task.get("seed")
        self.rng = random.Random(seed)
        self.game.reset(num_players=self.num_players, seed=None if seed is None else int(seed))
        text, done = self._advance()
        if done:
            raise RuntimeError(f"TextArena game {self.env_id!r} ended before the policy's first move")
        return Observation(text=text, info={"num_players": self.num_players, "seat": self.seat})

    def _advance(self) -> tuple[str, bool]:
        """Plays the fixed opponent's turns; returns (what the policy's seat sees next, game over)."""
        for _ in range(MAX_OPPONENT_MOVES):
            player, obs = self.game.get_observation()
            text = _render(obs)
            if self.self_play or self.opponent is None or player == self.seat:
                return (f"[You are Player {player}]\n{text}" if self.self_play else text), False
            done, _ = self.game.step(self.opponent(text, self.rng))
            if done:
                return text, True
        raise RuntimeError(f"the fixed opponent made {MAX_OPPONENT_MOVES} moves without the game reaching "
                           f"seat {self.seat}")

    async def step(self, action: str) -> Step:
        self.moves += 1
        done, info = self.game.step(action)
        text = ""
        if not done:
            text, done = self._advance()
        if not done:
            return Step(observation=text, info={"env_info": jsonable(info or {})})
        rewards, game_info = self.game.close()
        self.rewards = {str(k): as_float(v, f"{self.env_id} reward") for k, v in (rewards or {}).items()}
        reward = self.rewards.get(str(self.seat), 0.0)
        return Step(observation=text, reward=reward, done=True,
                    info={"rewards": self.rewards, "game_info": jsonable(game_info or {}), "metrics": self.metrics()})

    def metrics(self) -> dict[str, float]:
        reward = self.rewards.get(str(self.seat), 0.0)
        return {"moves": float(self.moves), "won": float(reward > 0), "reward": reward}


register(EnvSpec(name="textarena", factory=TextArenaEnv, max_sessions=20_000, step_deadline_s=30.0,
                 memory_mb=1024, deterministic=True,
                 description="TextArena games: one player, or two with a fixed opponent or self-play",
                 example_task={"seed": 1},
                 example_kwargs={"env_id": "TicTacToe-v0-raw", "num_players": 2, "opponent": "listed_moves"}))
