"""The game's word list: pronounceable 5-letter pseudo-words generated from a seed (no downloads)."""

from __future__ import annotations

import functools
import random

_CONSONANTS = "bcdfghklmnprstvwz"
_VOWELS = "aeiouy"
_PATTERNS = ("CVCVC", "CVCCV", "CCVCV", "VCCVC", "CVVCC", "CVCVV", "CCVVC")


@functools.lru_cache(maxsize=8)
def word_list(size: int = 2000, seed: int = 0) -> tuple[str, ...]:
    """`size` distinct lowercase 5-letter words, sorted; the same for the same (size, seed)."""
    if not 10 <= size <= 50_000:
        raise ValueError(f"word list size must be in [10, 50000], got {size}")
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        pattern = rng.choice(_PATTERNS)
        words.add("".join(rng.choice(_CONSONANTS if c == "C" else _VOWELS) for c in pattern))
    return tuple(sorted(words))


@functools.lru_cache(maxsize=8)
def word_set(size: int = 2000, seed: int = 0) -> frozenset[str]:
    """`word_list(size, seed)` as a set, shared by every episode (not copied per session)."""
    return frozenset(word_list(size, seed))
