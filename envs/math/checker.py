"""Rule-based answer checking: pull the final answer out of a response and compare it to the gold one.

    >>> extract_answer("... so the total is \\boxed{\\frac{3}{4}}.")
    '\\frac{3}{4}'
    >>> is_equivalent("\\frac{3}{4}", "0.75"), is_equivalent("1,000", "1000"), is_equivalent("x=5", "5")
    (True, True, True)
"""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*([^\n]+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else None


def extract_answer(text: str) -> str | None:
    """The final answer: last \\boxed{}, else last <answer></answer>, "the answer is ...", "#### ...",
    else the last number in the text; None if there is nothing answer-like."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_ANSWER_TAG, _ANSWER_IS, _HASHES):
        found = pattern.findall(text)
        if found:
            return found[-1].strip().rstrip(".").strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _strip_braces_command(s: str, command: str, fmt: str) -> str:
    pattern = re.compile(re.escape(command) + r"\{([^{}]*)\}\{([^{}]*)\}" if fmt.count("{}") == 2
                         else re.escape(command) + r"\{([^{}]*)\}")
    while True:
        new = pattern.sub(lambda m: fmt.format(*m.groups()), s)
        if new == s:
            return s
        s = new


def normalize(answer: str) -> str:
    """Canonical text form: no $, spaces, \\left/\\right, \\text{}, thousands commas, trailing units of
    degree/percent; \\frac{a}{b} -> (a)/(b), \\sqrt{x} -> sqrt(x); a leading "x =" is dropped."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right|!|,|;|:|quad|displaystyle)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("°", "")
    s = _strip_braces_command(s, "\\text", "{}")
    s = _strip_braces_command(s, "\\mathrm", "{}")
    s = re.sub(r"\\frac(\d)(\d)", r"(\1)/(\2)", s)  # \frac12
    s = _strip_braces_command(s, "\\frac", "({})/({})")
    s = _strip_braces_command(s, "\\sqrt", "sqrt({})")
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"^[a-zA-Z]\w*=", "", s)  # "x=5" -> "5"
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000 -> 1000
    return s.rstrip(".").lower()


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}
_FUNCS = {"sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos,
          "tan": math.tan, "abs": abs, "round": round}
_CONSTS = {"pi": math.pi, "e": math.e}
MAX_BITS = 16_384  # an exact intermediate past this many bits (~4,900 digits) is refused: 999**999 * ... is a DoS
MAX_ANSWER_CHARS = 1000  # a longer answer is compared as text only, never evaluated


def _bounded(value):
    if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ValueError(f"number too large (over {MAX_BITS} bits)")
    return value


def safe_eval(expression: str) -> float | Fraction:
    """Evaluates arithmetic (numbers, + - * / // % **, sqrt/log/exp/sin/cos/tan/abs/round, pi, e) without
    `eval`; exact (Fraction) while only + - * / and integer powers are used. Raises ValueError otherwise."""
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {expression!r} ({e.msg})") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > 1000 or abs(left) > 1e100:
                    raise ValueError("exponent too large")
                if isinstance(right, Fraction) and right.denominator == 1:
                    return _bounded(left ** int(right))
                return float(left) ** float(right)
            return _bounded(_BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 1 and not node.keywords):
            return _FUNCS[node.func.id](float(ev(node.args[0])))
        raise ValueError(f"unsupported in arithmetic: {ast.dump(node)[:80]}")

    try:
        return ev(tree)
    except (ZeroDivisionError, OverflowError) as e:
        raise ValueError(f"cannot evaluate {expression!r}: {e}") from None


def _value(s: str) -> float | None:
    if len(s) > MAX_ANSWER_CHARS:
        return None
    s = re.sub(r"(?<=[\d)])(?=[a-z(])", "*", s)  # implicit multiplication: 2pi, 2sqrt(2), 3(4)
    try:
        value = float(safe_eval(s))
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError):
        return None
    return None if math.isnan(value) else value


def is_equivalent(predicted: str | None, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when `predicted` matches `gold` as text after `normalize`, as numbers within `rel_tol`,
    or element-wise for comma-separated tuples/sets of the same length."""
    if predicted is None:
        return False
    p, g = normalize(predicted), normalize(gold)
    if p == g:
        return True
    pv, gv = _value(p), _value(g)
    if pv is not None and gv is not None:
        return math.isclose(pv, gv, rel_tol=rel_tol, abs_tol=1e-9)
    strip = "()[]{}"
    if "," in p and "," in g:
        ps, gs = p.strip(strip).split(","), g.strip(strip).split(",")
        if len(ps) == len(gs) and len(ps) > 1:
            return all(is_equivalent(a, b, rel_tol) for a, b in zip(ps, gs, strict=True))
    return False
