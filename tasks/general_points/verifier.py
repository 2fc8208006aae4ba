"""The GeneralPoints verifier: one reward category per (untrusted) response, checked in this order.

1. vision only: the "cards" labels (any order, case-insensitive) differ from the hand   -> -1.5 wrong_cards
2. no JSON object or no formula, a character other than digits, + - * / ( ) and spaces,
   or a syntax error                                                                    -> -3   illegal_formula
3. the multiset of numbers used differs from the hand's values under the face-card rule -> -2   illegal_numbers
4. the exact (Fraction) value differs from the target, or a division by zero           -> -1   wrong_value
5. otherwise                                                                            -> +5   correct
Text of the formula from the first '=' on is ignored. Time is bounded for any input: the response is cut to
MAX_RESPONSE_CHARS, the formula to MAX_FORMULA_CHARS, parsing is iterative, and the exact arithmetic that runs
while parsing never converts a number of more than MAX_NUMBER_DIGITS digits (formula.py), so its integers stay
small; the value is compared with the target only after the numbers matched the hand's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from tasks.common import Verdict, parse_json_object
from tasks.general_points.config import (LABEL_RANKS, RANK_LABEL_TABLE, RANK_VALUES, Card, GeneralPointsConfig,
                                         card_value)
from tasks.general_points.formula import FormulaError, parse_formula

REWARDS = {
    "correct": 5.0,
    "wrong_value": -1.0,
    "illegal_numbers": -2.0,
    "illegal_formula": -3.0,
    "wrong_cards": -1.5,
    "budget_exceeded": -1.0,
}


def _verdict(category: str, feedback: str) -> Verdict:
    return Verdict(reward=REWARDS[category], success=category == "correct", feedback=feedback, category=category)


# Accepted spellings of each label: 'J' or 'j', and the number cards also as JSON integers 2..10.
_LABEL_OF: dict[Any, str] = {**{label: label for label in LABEL_RANKS},
                             **{label.lower(): label for label in LABEL_RANKS},
                             **{rank: str(rank) for rank in range(2, 11)}}


def _label(item: Any) -> str | None:
    """A card label as written in the response, normalised ('j' -> 'J', 10 -> '10'); None if not a label."""
    if type(item) is str:  # exact types: True or 2.0 must not pass as 1 or 2
        return _LABEL_OF.get(item) or _LABEL_OF.get(item.strip().upper())
    if type(item) is int:
        return _LABEL_OF.get(item)
    return None


def _card_labels(parsed: dict[str, Any] | None) -> list[str | None] | None:
    cards = None if parsed is None else parsed.get("cards")
    if not isinstance(cards, list):
        return None
    return [_label(item) for item in cards]


def recognition_correct(response: str, hand: Sequence[Card], config: GeneralPointsConfig | None = None) -> bool:
    """Whether the response's "cards" field names exactly the hand's cards (any order, case-insensitive): the
    recognition accuracy of GP-VL. `config` is accepted for a uniform signature; labels do not depend on it."""
    return _cards_match(_card_labels(parse_json_object(response)), hand)


def rule_followed(response: str, hand: Sequence[Card], config: GeneralPointsConfig) -> bool:
    """Whether the response's "number" field holds exactly the hand's values under the config's face-card rule
    (any order; JSON integers only): did the model apply the rule its prompt states? On a hand with a J/Q/K the
    two rules disagree, so this separates following the stated rule from repeating a memorised one."""
    parsed = parse_json_object(response)
    numbers = None if parsed is None else parsed.get("number")
    if not isinstance(numbers, list) or any(type(n) is not int for n in numbers):
        return False
    return sorted(numbers) == sorted(card_value(card.rank, config.face_cards) for card in hand)


def _cards_match(labels: list[str | None] | None, hand: Sequence[Card]) -> bool:
    if labels is None or len(labels) != len(hand) or None in labels:
        return False
    return sorted(labels) == sorted([RANK_LABEL_TABLE[card.rank] for card in hand])  # type: ignore[type-var]


def expected_fields(hand: Sequence[Card], config: GeneralPointsConfig) -> dict[str, list]:
    """The ideal "cards" and "number" fields for a hand (the ground truth of recognition)."""
    return {"cards": [card.label for card in hand],
            "number": [card_value(card.rank, config.face_cards) for card in hand]}


def _wrong_cards_feedback(labels: list[str | None] | None, hand: Sequence[Card]) -> str:
    if labels is None:
        return "the answer has no \"cards\" list naming the cards in the image."
    if len(labels) != len(hand):
        return f"you listed {len(labels)} cards, but the image shows {len(hand)}."
    if None in labels:
        return "some entries of \"cards\" are not card labels (A, 2-10, J, Q, K)."
    shown = ", ".join(label or "?" for label in labels)
    return f"the cards you recognised ({shown}) are not the cards in the image."


def _numbers_feedback(written: Sequence[str], hand_values: Sequence[int]) -> str:
    missing = [str(v) for v in hand_values]
    extra = []
    for number in written:
        if number in missing:
            missing.remove(number)
        else:
            extra.append(number)
    parts = []
    if extra:
        parts.append(f"it uses {_clip(', '.join(extra))} beyond the cards' numbers")
    if missing:
        parts.append(f"it leaves out {', '.join(missing)}")
    needed = ", ".join(str(v) for v in hand_values)
    return f"the formula must use each of the numbers {needed} exactly once, but {' and '.join(parts)}."


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def verify(response: str, hand: Sequence[Card], config: GeneralPointsConfig) -> Verdict:
    """Judge one response to a GeneralPoints prompt for `hand` (see the module docstring for the order)."""
    parsed = parse_json_object(response) if isinstance(response, str) else None
    if parsed is not None and config.modality == "vision":
        labels = _card_labels(parsed)
        if not _cards_match(labels, hand):
            return _verdict("wrong_cards", _wrong_cards_feedback(labels, hand))
    if parsed is None:
        return _verdict("illegal_formula", "the answer is not a JSON object with a \"formula\" field.")
    formula = parsed.get("formula")
    if not isinstance(formula, str):
        what = "no \"formula\" field" if formula is None else "a \"formula\" that is not a text string"
        return _verdict("illegal_formula", f"the answer has {what}.")
    expression = formula.split("=", 1)[0]
    try:
        program = parse_formula(expression)
    except FormulaError as error:
        return _verdict("illegal_formula", f"the formula is not legal: {error}.")
    values_of = RANK_VALUES[config.face_cards]
    hand_values = [values_of[card.rank] for card in hand]
    # Compare canonical decimal texts: '08' or a 40-digit number never equals a card value, and no number is
    # converted to an integer before it is known to be one of the hand's.
    written = program.numbers
    if sorted(written) != sorted([str(v) for v in hand_values]):
        return _verdict("illegal_numbers", _numbers_feedback(written, hand_values))
    value = program.value
    if value is None:
        return _verdict("wrong_value", f"the formula divides by zero, so it does not equal {config.target}.")
    if value != config.target:
        return _verdict("wrong_value", f"the formula evaluates to {_fraction_text(value)}, not {config.target}.")
    return _verdict("correct", f"the formula equals {config.target}.")
