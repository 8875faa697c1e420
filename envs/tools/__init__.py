"""ToolEnv (Hermes/Qwen2.5 <tool_call> format over registered tools) and the calculator tool."""

import envs.code  # noqa: F401  (registers the "python" tool ToolEnv offers by default)
from agentic.env.registry import EnvSpec, register
from agentic.env.tools import register_tool
from envs.tools.calculator import Calculator
from envs.tools.env import ToolEnv

register_tool("calculator", Calculator)
register(EnvSpec(name="tools", factory=ToolEnv, max_sessions=1024, step_deadline_s=60.0, memory_mb=512,
                 description="multi-turn tool use: <tool_call> JSON -> <tool_response>, <answer> ends",
                 example_task={"prompt": "What is 17 * 23?", "answer": "391"},
                 example_kwargs={"tools": ["calculator", "python"], "max_turns": 4}))
