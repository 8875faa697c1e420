"""Concrete environments. Importing this package registers every bundled env."""

from envs import echo  # noqa: F401  (registers "echo")
