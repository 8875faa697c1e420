"""Workdirs and checkpoint directories that may be URLs (`gs://bucket/run`): etils.epath.

A URL is never turned into a local path (no `os.path.abspath`, which makes `gs://b/run`
into `./gs:/b/run` on each worker's disk); a local path is made absolute once.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URL as it is, a local path absolute."""
    return epath.Path(path) if is_url(path) else epath.Path(os.path.abspath(os.fspath(path)))
