"""The framework imports no environment: `agentic/` loads nothing from `envs/`."""

import subprocess
import sys
import textwrap

import pytest

from agentic.env import registry


def test_importing_every_agentic_module_loads_no_env():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import agentic
        names = [m.name for m in pkgutil.walk_packages(agentic.__path__, "agentic.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m == "envs" or m.startswith("envs."))
        print(len(names), loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) > 40 and loaded.strip() == "[]", out.stdout


def test_an_unknown_env_names_the_registered_ones_and_how_to_register_more():
    with pytest.raises(KeyError) as e:
        registry.get_spec("no_such_env")
    message = str(e.value)
    assert message.startswith("unknown env 'no_such_env'; registered: [")
    assert "'search_r1'" in message and "--import MODULE" in message and "config.env.imports" in message
