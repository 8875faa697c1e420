"""The calculator tool: exact arithmetic without eval()."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from agentic.env.tools import Tool, ToolError
from envs.math.checker import safe_eval


class Calculator(Tool):
    name = "calculator"
    description = "Evaluates an arithmetic expression (+ - * / ** %, sqrt, log, sin, cos, pi, e)."
    parameters = {"type": "object",
                  "properties": {"expression": {"type": "string", "description": "e.g. (3 + 4) * 2 / 7"}},
                  "required": ["expression"]}

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        expression = arguments.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise ToolError("argument 'expression' must be a non-empty string")
        if len(expression) > 1000:
            raise ToolError("expression longer than 1000 characters")
        try:
            value = safe_eval(expression)
        except ValueError as e:
            raise ToolError(str(e)) from None
        if isinstance(value, Fraction):
            return str(value.numerator) if value.denominator == 1 else f"{value} = {float(value):.12g}"
        return f"{value:.12g}"
