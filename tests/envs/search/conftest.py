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
