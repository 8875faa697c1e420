"""Process plumbing shared by the env host, its workers and the launcher's child processes."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child process (Linux): get `sig` when the parent dies, even by SIGKILL, so nothing is
    orphaned. A no-op where prctl is missing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def tune_gc() -> None:
    """For servers holding many live objects (thousands of sessions): freeze what start-up
    allocated and collect young objects less often (requests make little cyclic garbage), so
    Python's full collections stay rare and short."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
