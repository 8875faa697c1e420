"""Multi-turn text game: Wordle over a generated word list, with a scripted near-optimal player."""

from agentic.env.registry import EnvSpec, register
from envs.game.wordle import WordleEnv

register(EnvSpec(name="game", factory=WordleEnv, max_sessions=20_000, step_deadline_s=10.0, memory_mb=256,
                 deterministic=True,  # the secret comes from the task; replayed after a worker dies
                 description="Wordle over a generated 5-letter word list; reward 1 for solving in max_turns",
                 example_task={"seed": 1}))
