"""One registry type for everything a config picks by name: envs, tools, models, advantage
estimators, policy losses, judge backends.

    ESTIMATORS = Registry("advantage estimator")

    @ESTIMATORS.register("grpo")          # or ESTIMATORS.add("grpo", fn)
    def grpo(...): ...

    ESTIMATORS.get("grpo")                # a miss names the registered ones (and `hint`)

Registering the same object twice under a name is a no-op (modules may be imported twice,
e.g. as `__main__` and by name); a different object under a taken name is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """`Registry.get` of a name nobody registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class Registry(Generic[T]):
    """Values registered by name.

    Args:
      kind: what the values are, for messages ("env", "tool", "policy loss").
      hint: said after the list of registered names on a miss (e.g. how to register more).
    """

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._values: dict[str, T] = {}

    def add(self, name: str, value: T) -> T:
        existing = self._values.get(name)
        if existing is not None and existing is not value:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._values[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda value: self.add(name, value)

    def get(self, name: str) -> T:
        try:
            return self._values[name]
        except KeyError:
            hint = f". {self.hint}" if self.hint else ""
            raise UnknownName(f"unknown {self.kind} {name!r}; registered: {self.names() or 'none'}{hint}") from None

    def names(self) -> list[str]:
        return sorted(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values
