"""Python code tool: a bubblewrap sandbox (namespaces, rlimits, timeout, no network) as an env and as a tool."""

from agentic.env.registry import EnvSpec, register
from agentic.env.tools import register_tool
from envs.code.env import CodeEnv, PythonTool

register(EnvSpec(name="code", factory=CodeEnv, max_sessions=64, step_deadline_s=30.0, memory_mb=512,
                 description="write Python that passes the task's tests; sandboxed runs",
                 example_task={"prompt": "Define f(x) that returns 2 * x.", "tests": "assert f(2) == 4"},
                 example_kwargs={"timeout_s": 5.0}))
register_tool("python", PythonTool)
