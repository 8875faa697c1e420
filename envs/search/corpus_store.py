"""A wiki-18 JSONL corpus read in place: memory-mapped, one row parsed per hit, no Python dict of it.

wiki-18 (21M passages, ~14 GB of JSONL) does not fit a retrieval VM as Python objects (a list of
21M dicts is ~20 GB). `MmapCorpus` maps the file and keeps only the byte offset of each line (a
uint64 array, 8 bytes a passage, 168 MB at 21M), built by one streaming pass on first use and
cached beside the corpus (`CORPUS.offsets.npy`, or under `$AGENTIC_CACHE_DIR` when the corpus's
directory is read-only). Row i is line i, as in Search-R1 (its faiss ids are line numbers); rows
are returned as `{"id", "contents"}` (`data.corpus_row`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from envs.search.data import corpus_row

_CHUNK = 1 << 24  # bytes read per step while counting lines


def line_offsets(path: str) -> np.ndarray:
    """Start offsets of the non-empty lines of `path`, plus the file size: uint64 [rows + 1]."""
    size = os.path.getsize(path)
    starts = []
    with open(path, "rb") as f:
        pos = 0
        carry_blank = True  # the previous chunk ended on a newline (or this is the start)
        while chunk := f.read(_CHUNK):
            a = np.frombuffer(chunk, np.uint8)
            nl = np.flatnonzero(a == 10)
            # a line starts at 0 (if the previous chunk ended with "\n") and after every "\n"
            cand = np.concatenate([[0] if carry_blank else [], nl + 1]).astype(np.int64)
            cand = cand[cand < len(a)]
            # skip empty lines (a "\n" right at the start position)
            cand = cand[a[cand] != 10]
            starts.append(cand.astype(np.uint64) + np.uint64(pos))
            carry_blank = a[-1] == 10
            pos += len(a)
    out = np.concatenate([*starts, np.asarray([size], np.uint64)]) if starts else np.asarray([size], np.uint64)
    return out


def _offsets_path(path: str) -> str:
    beside = path + ".offsets.npy"
    if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return beside
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = os.environ.get("AGENTIC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "agentic")
    return os.path.join(cache, "search_r1", "offsets", f"{key}.npy")


class MmapCorpus:
    """A sequence of `{"id", "contents"}` rows backed by a memory-mapped JSONL file.

    Args:
        path: a wiki-18 style JSONL file (`{"id", "contents"}` or `{"id", "title", "text"}` rows).
        offsets_path: where to cache the line offsets (default: beside the corpus, or the cache dir).
    """

    def __init__(self, path: str, offsets_path: str | None = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no corpus file {path!r}")
        self.path = path
        self.offsets_path = offsets_path or _offsets_path(path)
        st = os.stat(path)
        offsets = None
        if os.path.exists(self.offsets_path):
            offsets = np.load(self.offsets_path, mmap_mode="r")
            if len(offsets) == 0 or int(offsets[-1]) != st.st_size or os.path.getmtime(self.offsets_path) < st.st_mtime:
                offsets = None  # stale: the corpus changed
        if offsets is None:
            offsets = line_offsets(path)
            os.makedirs(os.path.dirname(os.path.abspath(self.offsets_path)), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.offsets_path)), suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, offsets)
            os.replace(tmp, self.offsets_path)
            offsets = np.load(self.offsets_path, mmap_mode="r")
        self._offsets = offsets
        self._file = open(path, "rb")  # noqa: SIM115 (held for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else b""

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> dict[str, str]:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"corpus row {i} out of range [0, {n})")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return corpus_row(json.loads(self._map[start:end]), i)

    def __iter__(self) -> Iterator[dict[str, str]]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._file.close()


def iter_corpus(path: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, str]]:
    """Rows `start:stop` of a JSONL corpus, streamed (never the whole file in memory)."""
    i = -1
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            i += 1
            if i < start:
                continue
            if stop is not None and i >= stop:
                return
            yield corpus_row(json.loads(line), i)
