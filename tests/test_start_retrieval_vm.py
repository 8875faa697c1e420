"""tools/start_retrieval_vm.sh --dry-run: the VM is sized for the index type, the server is started
off loopback only with a token file, and bad flags are refused."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "start_retrieval_vm.sh")


def dry_run(*args):
    return subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True, timeout=60)


def test_vm_is_sized_for_the_index_and_the_server_needs_a_token():
    r = dry_run("--index-type", "flat", "--data", "gs://bucket/wiki18")
    assert r.returncode == 0, r.stderr
    assert "--machine-type=n2-highmem-16" in r.stdout and "--boot-disk-size=120GB" in r.stdout
    serve = next(line for line in r.stdout.splitlines() if "retrieval_server" in line)
    assert "--faiss data/e5_Flat.index --corpus data/wiki-18.jsonl" in serve and "--encoder-family e5" in serve
    assert "--host 0.0.0.0" in serve and "--token-file retrieval_token" in serve
    r = dry_run("--index-type", "ivfpq", "--data", "gs://bucket/wiki18", "--machine-type", "n2-standard-4")
    assert "--machine-type=n2-standard-4" in r.stdout and "--index data/index --retriever dense" in r.stdout


def test_bad_flags_are_refused():
    assert "must be flat, sqfp16, hnsw or ivfpq" in dry_run("--index-type", "big", "--data", "gs://b/x").stderr
    assert "must be a gs:// directory" in dry_run("--index-type", "flat", "--data", "/local").stderr
