"""Concrete environments. Importing this package registers every bundled env."""

from envs import (
    code,  # noqa: F401  (registers "code" and the "python" tool)
    echo,  # noqa: F401  (registers "echo")
    game,  # noqa: F401  (registers "game")
    math,  # noqa: F401  (registers "math")
    reward_model,  # noqa: F401  (registers "reward_model")
    search,  # noqa: F401  (registers "search_r1")
    tools,  # noqa: F401  (registers "tools" and the "calculator" tool)
)
