"""Parsing and exact evaluation of an untrusted arithmetic formula, without eval() and without recursion.

Grammar: numbers (digit runs), binary + - * /, parentheses, whitespace. Not allowed: unary minus, '**',
implicit multiplication such as 3(4+5) or (2)(3), two numbers in a row, unbalanced or empty parentheses, any
other character. `parse_formula` is one pass of shunting-yard with a two-state scanner (expecting an operand /
expecting an operator) that reduces operators as it goes on explicit stacks of exact rationals (unreduced integer
numerator / positive denominator pairs; the result is a `fractions.Fraction`).

Bounds: the formula is at most MAX_FORMULA_CHARS long, and a number of more than MAX_NUMBER_DIGITS digits is
never converted (it counts as 0 in the value, which is then meaningless, and a caller that checks the numbers
against a hand rejects it first), so the integers stay a few hundred digits at worst.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_FORMULA_CHARS = 512
MAX_NUMBER_DIGITS = 3
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
# Numbers, operators and parentheses; any other non-space character is a token of its own (and an error).
_TOKEN = re.compile(r"[0-9]+|[-+*/()]|\S", re.ASCII)
_DIGITS = frozenset("0123456789")
_SYMBOLS = frozenset("+-*/()")


@dataclass(frozen=True)
class ParsedFormula:
    """A syntactically valid formula: its `numbers` as written (digit strings, in order) and its exact `value`
    (None when it divides by zero). `value` is only meaningful when every number has at most MAX_NUMBER_DIGITS
    digits."""

    numbers: tuple[str, ...]
    value: Fraction | None


class FormulaError(ValueError):
    """The formula is not a legal arithmetic expression; the message says where and why."""


def _where(text: str, index: int) -> str:
    pos = [match.start() for match in _TOKEN.finditer(text)][index]
    return f"at character {pos + 1} (near '{text[max(0, pos - 8) : pos + 8]}')"


def _reduce(operator: str, numerators: list[int], denominators: list[int]) -> bool:
    """Apply `operator` to the top two stack entries; False on a division by zero (0 is pushed instead)."""
    b, d = numerators.pop(), denominators.pop()
    a, c = numerators.pop(), denominators.pop()
    ok = True
    if operator == "+":
        a, c = a * d + b * c, c * d
    elif operator == "-":
        a, c = a * d - b * c, c * d
    elif operator == "*":
        a, c = a * b, c * d
    elif b == 0:
        a, c, ok = 0, 1, False
    else:
        a, c = (a * d, c * b) if b > 0 else (-a * d, -c * b)
    numerators.append(a)
    denominators.append(c)
    return ok


def parse_formula(text: str) -> ParsedFormula:
    """Check the syntax of `text` and evaluate it exactly; raises FormulaError naming where the syntax broke."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is {len(text)} characters long; at most {MAX_FORMULA_CHARS} are allowed")
    tokens = _TOKEN.findall(text)  # ASCII whitespace is all that findall skips
    if not tokens:
        raise FormulaError("the formula is empty")

    def fail(index: int, reason: str) -> FormulaError:
        return FormulaError(f"{reason} {_where(text, index)}")  # positions are computed on this path only

    numbers: list[str] = []
    numerators: list[int] = []
    denominators: list[int] = []
    operators: list[str] = []
    open_parens: list[int] = []  # token indices of the '(' not closed yet
    divides_by_zero = False
    expect_operand = True
    previous = ""
    for index, token in enumerate(tokens):
        if token[0] in _DIGITS:
            if not expect_operand:
                raise fail(index, f"the number {token} follows a number or ')' without an operator (two numbers "
                                  "in a row or implicit multiplication)")
            numbers.append(token)
            numerators.append(int(token) if len(token) <= MAX_NUMBER_DIGITS else 0)
            denominators.append(1)
            expect_operand = False
        elif token not in _SYMBOLS:
            raise FormulaError(
                f"it contains the character {token!r}; only digits, + - * / ( ) and spaces are allowed")
        elif token == "(":
            if not expect_operand:
                raise fail(index, "'(' follows a number or ')' without an operator (implicit multiplication)")
            operators.append("(")
            open_parens.append(index)
        elif token == ")":
            if expect_operand:
                raise fail(index, "empty parentheses" if previous == "(" else "')' follows an operator")
            while operators and operators[-1] != "(":
                divides_by_zero |= not _reduce(operators.pop(), numerators, denominators)
            if not operators:
                raise fail(index, "unbalanced parentheses: ')' without a matching '('")
            operators.pop()
            open_parens.pop()
        else:
            if expect_operand:
                if token == "*" and previous == "*":
                    raise fail(index, "'**' (power) is not an operator")
                if token == "-":
                    raise fail(index, "a minus sign without a left operand (unary minus is not allowed)")
                raise fail(index, f"the operator '{token}' has no left operand")
            precedence = _PRECEDENCE[token]
            while operators and operators[-1] != "(" and _PRECEDENCE[operators[-1]] >= precedence:
                divides_by_zero |= not _reduce(operators.pop(), numerators, denominators)
            operators.append(token)
            expect_operand = True
        previous = token
    if expect_operand:
        raise fail(len(tokens) - 1, "the formula ends where a number was expected")
    if open_parens:
        raise fail(open_parens[-1], "unbalanced parentheses: '(' is never closed")
    while operators:
        divides_by_zero |= not _reduce(operators.pop(), numerators, denominators)
    value = None if divides_by_zero else Fraction(numerators[0], denominators[0])
    return ParsedFormula(numbers=tuple(numbers), value=value)
