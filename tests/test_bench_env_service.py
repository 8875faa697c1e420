"""bench/env_service.py end to end at a tiny size: both servers (ours and the FastAPI baseline)
must finish every episode, or the bench's ratios compare against nothing."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_both_servers_finish_every_episode(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run([sys.executable, "bench/env_service.py", "--envs", "echo,game", "--concurrency", "8",
                    "--episodes", "16", "--out", str(out)], cwd=ROOT, env=env, check=True, timeout=240,
                   capture_output=True)
    result = json.loads(out.read_text())
    for side in ("ours", "baseline"):
        assert {(r["env"], r["episodes"], r["lost"]) for r in result[side]} == {("echo", 16, 0), ("game", 16, 0)}, side
