"""Parsing and exact evaluation of an untrusted arithmetic formula, without eval() and without recursion.

Grammar: numbers (digit runs), binary + - * /, parentheses, whitespace. Not allowed: unary minus, '**',
implicit multiplication such as 3(4+5) or (2)(3), two numbers in a row, unbalanced or empty parentheses.
`parse_formula` checks the syntax with a two-state scanner (expecting an operand / expecting an operator) and
converts to reverse Polish notation by shunting-yard; `evaluate_rpn` runs it on an explicit stack in
`fractions.Fraction`. Numbers longer than MAX_NUMBER_DIGITS are kept as text and never converted, so no input
can make the arithmetic large; callers evaluate only after checking the numbers against the hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_FORMULA_CHARS = 512
MAX_NUMBER_DIGITS = 3
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\r\n\f\v")
_TOKEN = re.compile(r"[0-9]+|[-+*/()]")
_DIGITS = frozenset("0123456789")
_ALLOWED = re.compile(r"[0-9+\-*/()\s]*", re.ASCII)


@dataclass(frozen=True)
class ParsedFormula:
    """A syntactically valid formula: `numbers` as written (digit strings, in order) and the reverse Polish
    program `rpn` (digit strings and operator characters)."""

    numbers: tuple[str, ...]
    rpn: tuple[str, ...]


class FormulaError(ValueError):
    """The formula is not a legal arithmetic expression; the message says where and why."""


def _where(text: str, pos: int) -> str:
    snippet = text[max(0, pos - 8) : pos + 8]
    return f"at character {pos + 1} (near '{snippet}')"


def _token_starts(text: str) -> list[int]:
    return [match.start() for match in _TOKEN.finditer(text)]


def parse_formula(text: str) -> ParsedFormula:
    """Check the syntax of `text` and convert it to reverse Polish notation; raises FormulaError."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is {len(text)} characters long; at most {MAX_FORMULA_CHARS} are allowed")
    if _ALLOWED.fullmatch(text) is None:
        bad = next(ch for ch in text if ch not in _ALLOWED_CHARS)
        raise FormulaError(
            f"it contains the character {bad!r}; only digits, + - * / ( ) and spaces are allowed")
    # Only whitespace lies between tokens now, so findall sees every character that matters.
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise FormulaError("the formula is empty")

    def fail(index: int, reason: str) -> FormulaError:
        # Positions are only needed for the message: recompute them on the error path.
        return FormulaError(f"{reason} {_where(text, _token_starts(text)[index])}")

    numbers: list[str] = []
    output: list[str] = []
    operators: list[tuple[str, int]] = []  # (operator or '(', token index)
    expect_operand = True
    for index, token in enumerate(tokens):
        if token[0] in _DIGITS:
            if not expect_operand:
                raise fail(index, f"the number {token} follows a number or ')' without an operator (two numbers "
                                  "in a row or implicit multiplication)")
            numbers.append(token)
            output.append(token)
            expect_operand = False
        elif token == "(":
            if not expect_operand:
                raise fail(index, "'(' follows a number or ')' without an operator (implicit multiplication)")
            operators.append(("(", index))
        elif token == ")":
            if expect_operand:
                if operators and operators[-1][0] == "(" and operators[-1][1] == index - 1:
                    raise fail(index, "empty parentheses")
                raise fail(index, "')' follows an operator or '('")
            while operators and operators[-1][0] != "(":
                output.append(operators.pop()[0])
            if not operators:
                raise fail(index, "unbalanced parentheses: ')' without a matching '('")
            operators.pop()
        else:
            if expect_operand:
                if token == "*" and index > 0 and tokens[index - 1] == "*":
                    raise fail(index, "'**' (power) is not an operator")
                if token == "-":
                    raise fail(index, "a minus sign without a left operand (unary minus is not allowed)")
                raise fail(index, f"the operator '{token}' has no left operand")
            precedence = _PRECEDENCE[token]
            while operators and operators[-1][0] != "(" and _PRECEDENCE[operators[-1][0]] >= precedence:
                output.append(operators.pop()[0])
            operators.append((token, index))
            expect_operand = True
    if expect_operand:
        raise fail(len(tokens) - 1, "the formula ends where a number was expected")
    while operators:
        token, index = operators.pop()
        if token == "(":
            raise fail(index, "unbalanced parentheses: '(' is never closed")
        output.append(token)
    return ParsedFormula(numbers=tuple(numbers), rpn=tuple(output))


def evaluate_rpn(rpn: tuple[str, ...]) -> Fraction | None:
    """The exact value of a parsed formula, or None on a division by zero. Numbers must already be checked
    (every number of a formula that passed the hand check has at most MAX_NUMBER_DIGITS digits). Intermediate
    values are unreduced integer fractions (numerator, positive denominator), exact and faster than Fraction
    for a handful of operations; the result is a reduced Fraction."""
    numerators: list[int] = []
    denominators: list[int] = []
    for token in rpn:
        if token[0] in _DIGITS:
            if len(token) > MAX_NUMBER_DIGITS:
                raise ValueError(f"evaluate_rpn: the number {token[:20]} has more than {MAX_NUMBER_DIGITS} digits; "
                                 "check the numbers against the hand first.")
            numerators.append(int(token))
            denominators.append(1)
            continue
        b, d = numerators.pop(), denominators.pop()
        a, c = numerators.pop(), denominators.pop()
        if token == "+":
            a, c = a * d + b * c, c * d
        elif token == "-":
            a, c = a * d - b * c, c * d
        elif token == "*":
            a, c = a * b, c * d
        else:
            if b == 0:
                return None
            a, c = (a * d, c * b) if b > 0 else (-a * d, -c * b)
        numerators.append(a)
        denominators.append(c)
    return Fraction(numerators[0], denominators[0])
