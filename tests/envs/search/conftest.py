"""Shared fixtures: a small synthetic world with its BM25 index, built once per test session."""

import pytest

from envs.search.build_index import build_index
from envs.search.world import build_world

WORLD_PASSAGES = 2000


@pytest.fixture(scope="session")
def world():
    return build_world(WORLD_PASSAGES, seed=7)


@pytest.fixture(scope="session")
def index_dir(world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("search_index"))
    return build_index(world.corpus, out, tasks={"train": world.train_tasks, "test": world.test_tasks})


@pytest.fixture
def memory_url(monkeypatch):
    """`memory://bucket`: fsspec's in-memory filesystem registered with etils.epath through the same
    fsspec backend class epath uses for gs:// (gcsfs), fresh for each test."""
    import os

    import fsspec
    from etils.epath import backend, gpath, register

    class MemoryBackend(backend._FileSystemSpecBackend):
        def fs(self, path):
            assert os.fspath(path).startswith("memory://"), path
            return fsspec.filesystem("memory")

    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "memory", MemoryBackend())
    monkeypatch.setattr(gpath, "_URI_PREFIXES", (*gpath._URI_PREFIXES, "memory://"))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"memory"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "memory://", "/memory/")
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "memory://", gpath.PosixGPath)
    fs = fsspec.filesystem("memory")
    monkeypatch.setattr(fs, "store", {})
    monkeypatch.setattr(fs, "pseudo_dirs", [""])
    return "memory://bucket"
