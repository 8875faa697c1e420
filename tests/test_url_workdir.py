"""A workdir given as a URL stays a URL: config, metrics, plots and the checkpoint directory go
through etils.epath, and nothing is created on the local disk.

`gs://` needs a network, so the test registers fsspec's in-memory filesystem under
`memory://` with etils.epath (the same fsspec backend epath uses for gs:// and s3://).
"""

from __future__ import annotations

import os

import fsspec
import pytest
from etils import epath
from etils.epath import backend, gpath, register

from agentic import launcher
from agentic.learner import checkpoint
from agentic.learner.checkpoint import Checkpointer
from agentic.metrics import MetricsWriter
from agentic.paths import as_path
from experiments import plot
from experiments.configs import search_r1


class _MemoryBackend(backend._FileSystemSpecBackend):
    """epath's fsspec backend (as for gs://), on fsspec's in-memory filesystem."""

    def fs(self, path):
        assert os.fspath(path).startswith("memory://"), path
        return fsspec.filesystem("memory")


@pytest.fixture
def memory_url(monkeypatch, tmp_path):
    """A fresh `memory://` workdir URL; the test runs in an empty cwd to catch local writes."""
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "memory", _MemoryBackend())
    monkeypatch.setattr(gpath, "_URI_PREFIXES", (*gpath._URI_PREFIXES, "memory://"))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"memory"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "memory://", "/memory/")
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "memory://", gpath.PosixGPath)
    fs = fsspec.filesystem("memory")
    monkeypatch.setattr(fs, "store", {})
    monkeypatch.setattr(fs, "pseudo_dirs", [""])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield "memory://bucket/runs/r1"
    assert os.listdir(cwd) == [], f"a URL workdir made local files: {os.listdir(cwd)}"


def test_url_workdir_is_never_a_local_path(memory_url, monkeypatch):
    url = memory_url
    assert isinstance(epath.Path(url), gpath.PosixGPath) and os.fspath(as_path(url)) == url
    config = search_r1.get_config("test")

    # the learner's checkpoint directory, and the checkpointer, hand orbax the URL unchanged (orbax
    # writes gs:// through tensorstore's own drivers, which know no memory://: the test stops there)
    lc = launcher.learner_config(config, url)
    assert lc.checkpoint_dir == url + "/checkpoints"
    given = []
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", lambda directory, **kw: given.append(directory))
    assert Checkpointer(lc.checkpoint_dir).directory == url + "/checkpoints" and given == [url + "/checkpoints"]

    # metrics go to the URL (no TensorBoard events: those are written for local workdirs only)
    writer = MetricsWriter(url, total_steps=2)
    writer.write(1, {"reward": 0.25, "turns": 2.0})
    writer.write(2, {"reward": 0.75, "turns": 2.0})
    writer.close()
    rows = plot.read_metrics(url)
    assert [r["reward"] for r in rows] == [0.25, 0.75]

    # the curves too
    out = plot.plot_workdir(url)
    assert out == url + "/curves.png" and epath.Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume detection reads the URL's checkpoints directory
    assert not launcher.has_checkpoint(url)
    (epath.Path(url) / "checkpoints" / "3").mkdir(parents=True)
    assert launcher.has_checkpoint(url)
    assert fsspec.filesystem("memory").exists("/bucket/runs/r1/metrics.jsonl")  # really there, not on disk


def test_non_primary_processes_write_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), total_steps=1, primary=False)
    writer.write(1, {"reward": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()
