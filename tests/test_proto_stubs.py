"""The committed gRPC stubs match their .proto files (regenerate: python -m agentic.proto_stubs)."""


import pytest

from agentic import proto_stubs


@pytest.mark.parametrize("proto", proto_stubs.PROTOS)
def test_committed_stubs_are_current(proto, tmp_path):
    proto_stubs.generate(tmp_path, (proto,))
    for name in proto_stubs.outputs(proto):
        fresh = (tmp_path / name).read_text()
        committed = (proto_stubs.REPO_ROOT / name).read_text()
        assert fresh == committed, (f"{name} is stale: run `.venv/bin/python -m agentic.proto_stubs` and commit "
                                    "the result")
