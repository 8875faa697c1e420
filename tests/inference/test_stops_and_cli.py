"""Stop rules on their own (SGLang's order and trimming), and the launch_server command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import portpicker

from agentic.inference.stops import Finish, StopChecker, completion_text
from tests.inference.conftest import ByteTokenizer

TOK = ByteTokenizer(384)


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def test_stop_string_spanning_tokens_matches_on_the_tail():
    checker = StopChecker(max_new_tokens=100, stop=("</search>",), tokenizer=TOK)
    out = ids("I will look it up. <search> capital of France </sea")
    for n in range(1, len(out) + 1):
        assert checker.check(out[:n]) is None
    out += ids("rch>")
    assert checker.check(out) == Finish("stop", matched="</search>")
    # a long output is matched on its tail only (the check does not decode everything)
    long = ids("x" * 5000 + "</answer>")
    assert StopChecker(max_new_tokens=10_000, stop=("</answer>",), tokenizer=TOK).check(long).matched == "</answer>"


def test_finish_order_and_text_trimming():
    checker = StopChecker(max_new_tokens=3, stop=("b",), stop_token_ids=(7,), tokenizer=TOK)
    assert checker.check([ord("a"), 7]) == Finish("stop", matched=7)
    assert checker.check([ord("a"), ord("b")]) == Finish("stop", matched="b")
    assert checker.check([ord("a"), ord("c"), 7]) == Finish("length", length=3)  # length first, as SGLang
    out = ids("answer: 42</answer> trailing")
    fin = Finish("stop", matched="</answer>")
    assert completion_text(TOK, out, fin) == "answer: 42"
    assert completion_text(TOK, out, fin, no_stop_trim=True) == "answer: 42</answer>"
    assert completion_text(TOK, ids("ok") + [256], Finish("stop", matched=256)) == "ok"
    assert completion_text(TOK, ids("ok") + [256], Finish("stop", matched=256), skip_special_tokens=False,
                           no_stop_trim=True) == "ok<eos>"


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def test_launch_server_command_line():
    port = portpicker.pick_unused_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentic.inference.launch_server", "--model-path", "tiny", "--port", str(port),
         "--context-length", "64", "--max-running-requests", "2", "--mem-fraction-static", "0.8", "--warmup",
         "--weight-version", "base"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        body = json.dumps({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4, "temperature": 0},
                           "return_logprob": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert len(out["output_ids"]) == out["meta_info"]["completion_tokens"] >= 1
        assert len(out["meta_info"]["output_token_logprobs"]) == len(out["output_ids"])
        info = json.loads(_get(f"http://127.0.0.1:{port}/get_model_info")[1])
        assert info["model_path"] == "tiny" and info["weight_version"] == "base"  # a string label, as SGLang's
        models = json.loads(_get(f"http://127.0.0.1:{port}/v1/models")[1])
        assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 64
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            log = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert "--mem-fraction-static" in log  # accepted with a warning, as documented
    assert "warmup: compiled" in log
