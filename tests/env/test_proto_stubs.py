"""The committed gRPC stubs match env_service.proto (regenerate: python -m agentic.env.proto.generate)."""

import pathlib

from agentic.env.proto import generate


def test_committed_stubs_are_current(tmp_path):
    generate.generate(tmp_path)
    for name in generate.OUTPUTS:
        fresh = (tmp_path / "agentic/env/proto" / name).read_text()
        committed = (pathlib.Path(generate.__file__).parent / name).read_text()
        assert fresh == committed, (f"agentic/env/proto/{name} is stale: run "
                                    "`.venv/bin/python -m agentic.env.proto.generate` and commit the result")
