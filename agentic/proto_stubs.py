"""Regenerates the committed gRPC stubs of every `.proto` of the framework.

    .venv/bin/python -m agentic.proto_stubs

It calls `grpc_tools.protoc` with the repo root as include path, so the stubs import each
other by package path (e.g. `agentic.env.proto.env_service_pb2`). `tests/test_proto_stubs.py`
regenerates into a temporary directory and fails when a committed file differs.
"""

from __future__ import annotations

import pathlib
import sys

PROTOS = (
    "agentic/env/proto/env_service.proto",
    "agentic/transport/proto/trajectory_queue.proto",
    "agentic/transport/proto/weight_stream.proto",
)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def outputs(proto: str) -> tuple[str, ...]:
    """The stub files protoc writes next to `proto` (paths from the repo root)."""
    stem = proto.removesuffix(".proto")
    return (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py")


def generate(out_dir: pathlib.Path, protos: tuple[str, ...] = PROTOS) -> None:
    """Writes the stubs of `protos` under `out_dir` (their repo-relative paths)."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in protos:
        rc = protoc.main(["grpc_tools.protoc", f"-I{REPO_ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                          f"--grpc_python_out={out_dir}", str(REPO_ROOT / proto)])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc} on {proto}")


if __name__ == "__main__":
    generate(REPO_ROOT)
    print(f"regenerated the stubs of {', '.join(PROTOS)}", file=sys.stderr)
