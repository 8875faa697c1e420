"""experiments/eval_search_r1.py on the training's process layout: a checkpoint written by 2 processes
(jax.distributed on 127.0.0.1, the `test` variant's Learner on one mesh over both) evaluated by 2
processes, weights only; and an eval of Hugging Face weights from a directory."""

import json
import os
import re
import subprocess
import sys

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One process of a 2-process learner: the test variant's Learner on a mesh over both processes'
# devices, its policy scaled (so it is not the base init), saved as training saves it.
WRITER = r"""
import sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from agentic import launcher, sharding
from experiments.configs import search_r1
from agentic.learner.learner import Learner
workdir, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
sharding.initialize_distributed(f"127.0.0.1:{{port}}", 2, pid)
config = search_r1.get_config("test")
cfg, params, _ = launcher.build_model(config.model.name, config.model.dtype)
params = jax.tree.map(lambda x: x * 0.5, params)
mesh = sharding.make_mesh(config.learner.mesh_shape, devices=jax.devices())
learner = Learner(launcher.learner_config(config, workdir), cfg, params, mesh=mesh)
learner.save(1, force=True)
learner.close()
host = sharding.host_local(learner.params)
fp = float(np.sum([np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(host)]))
print(f"saved fingerprint {{fp:.6e}}", flush=True)
"""


def _env():
    return {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


def _two(commands, timeout=400):
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    logs = []
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
    return logs


@pytest.mark.slow
def test_two_process_eval_of_a_two_process_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=ROOT))
    port = portpicker.pick_unused_port()
    logs = _two([[sys.executable, str(script), workdir, str(port), str(i)] for i in range(2)])
    saved = re.search(r"saved fingerprint (\S+)", logs[0]).group(1)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))

    port = portpicker.pick_unused_port()
    logs = _two([[sys.executable, "experiments/eval_search_r1.py", "--config=experiments/configs/search_r1.py:test",
                  f"--workdir={workdir}", "--limit=4", "--config.distributed=True",
                  f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
                  f"--config.process_id={i}"] for i in range(2)])
    for i, log in enumerate(logs):  # both read the policy written by both, and evaluate half the tasks
        assert f"weights: checkpoint step 1 of {workdir} (policy only; fingerprint {saved})" in log, log[-3000:]
        assert f"process {i}: synthetic-1hop     n=2 " in log, log[-3000:]
    assert "Avg." in logs[0] and "Avg." not in logs[1]  # process 0 prints the table
    report = json.load(open(os.path.join(workdir, "eval_step1.json")))
    assert report["processes"] == 2 and report["datasets"]["synthetic-1hop"]["n"] == 4
    assert report["weights"] == "step 1"


@pytest.mark.slow
def test_eval_from_an_hf_directory(tmp_path):
    """HF weights (config.json + model.safetensors + tokenizer) evaluated with no checkpoint."""
    hf = tmp_path / "hf_model"
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from agentic import launcher, models\n"
            "cfg, params, tok = launcher.build_model('tiny', 'float32')\n"
            f"models.export_hf(cfg, params, {str(hf)!r}, tokenizer=tok)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "experiments/eval_search_r1.py", "--config=experiments/configs/search_r1.py:test",
                        f"--hf_dir={hf}", "--limit=2", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert re.search(r"hf:hf_model\s+\|\s+\d\.\d{3} \|", r.stdout), r.stdout[-2000:]
    report = json.loads(out.read_text())
    assert report["weights"] == "hf:hf_model" and report["datasets"]["synthetic-1hop"]["n"] == 2


def test_table_has_the_papers_layout():
    sys.path.insert(0, ROOT)
    from experiments.eval_search_r1 import COLUMNS, table

    results = {k: {"em": 0.1 * i, "n": 10 + i} for i, k in enumerate(COLUMNS)}
    text = table(results, "step 1005")
    header, row = text.splitlines()[1:3]
    assert [h.strip() for h in header.split("|")][1:] == ["NQ", "TriviaQA", "PopQA", "HotpotQA", "2wiki", "Musique",
                                                          "Bamboogle", "Avg."]
    assert "General QA" in text.splitlines()[0] and "Multi-Hop QA" in text.splitlines()[0]
    assert row.split("|")[-1].strip() == "0.300"  # the mean of 0.0 ... 0.6


from tests.envs.search.conftest import memory_url  # noqa: E402, F401 (a fixture: memory:// as gs://)


def test_checkpoints_and_report_at_a_bucket_url(memory_url):  # noqa: F811
    """A gs://-style workdir: the latest finished checkpoint is found and the report written there."""
    from etils import epath

    sys.path.insert(0, ROOT)
    from experiments.eval_search_r1 import latest_step

    workdir = memory_url + "/runs/r1"
    assert latest_step(workdir) is None
    for name in ("1", "3", "4.orbax-checkpoint-tmp-1234"):  # an unfinished save is not a checkpoint
        (epath.Path(workdir) / "checkpoints" / name).mkdir(parents=True)
    assert latest_step(workdir) == 3
