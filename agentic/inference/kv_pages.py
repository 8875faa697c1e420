"""The KV cache's pages, host side: a refcounted pool and the sequences that hold pages.

The device cache is {"kv": [L, P, page_size, 2 * KVH, Dh]} (`decode_model`); this module
decides which page holds which positions. A `KVSeq` is the KV of one token sequence: its
`tokens` (whose k/v are written) live in `pages[p // page_size]` at offset `p % page_size`.
Pages are allocated when a sequence grows into them and returned to the pool when no sequence
holds them (refcounts): sequences with a common prefix hold the same full pages read-only
(prefix sharing); a partially filled page is never shared with a writer, it is copied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class OutOfPages(RuntimeError):
    """The pool has no free page (the scheduler evicts or preempts, then retries)."""


class PagePool:
    """Fixed-size pages with refcounts; `alloc` hands out the lowest free page.

    Args:
      num_pages: pages in the pool.
      page_size: tokens per page.
    """

    def __init__(self, num_pages: int, page_size: int):
        self.num_pages, self.page_size = num_pages, page_size
        self.refs = np.zeros(num_pages, np.int32)
        self._free = list(range(num_pages - 1, -1, -1))  # pop() -> lowest

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def pages_for(self, tokens: int) -> int:
        """Pages holding `tokens` positions."""
        return -(-tokens // self.page_size)

    def alloc(self) -> int:
        if not self._free:
            raise OutOfPages(f"all {self.num_pages} KV pages are in use")
        p = self._free.pop()
        self.refs[p] = 1
        return p

    def retain(self, pages: list[int]) -> None:
        for p in pages:
            assert self.refs[p] > 0, f"retaining free page {p}"
            self.refs[p] += 1

    def release(self, pages: list[int]) -> None:
        for p in pages:
            assert self.refs[p] > 0, f"releasing free page {p}"
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self._free.append(p)
        if pages:
            self._free.sort(reverse=True)


@dataclasses.dataclass(eq=False)
class KVSeq:
    """The KV of one token sequence: a running request's, or an ended one's kept for reuse.

    Attributes:
      tokens: the tokens whose k/v are written, positions 0..len-1.
      pages: the pages holding them (and any allocated ahead of them).
      session: the episode it belongs to (its next turn reuses it), or None.
      running: the request writing it, or None once that ended (an idle, cached prefix).
      last_used: scheduler clock when it last ended (idle sequences are evicted oldest first).
    """

    tokens: np.ndarray
    pages: list[int] = dataclasses.field(default_factory=list)
    session: str | None = None
    running: Any = None
    last_used: int = 0

    def truncate(self, pool: PagePool, n: int) -> None:
        """Keeps the first n tokens, releasing the pages past them."""
        self.tokens = self.tokens[:n]
        keep = pool.pages_for(n)
        pool.release(self.pages[keep:])
        del self.pages[keep:]

    def free(self, pool: PagePool) -> None:
        self.truncate(pool, 0)
