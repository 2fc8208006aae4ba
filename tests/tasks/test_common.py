"""The shared lenient JSON parser reads what models write and never chokes on hostile text."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.common import MAX_RESPONSE_CHARS, parse_json_object


def test_strict_json():
    assert parse_json_object('{"formula": "4*6", "cards": ["4", "6"]}') == {"formula": "4*6", "cards": ["4", "6"]}


def test_fenced_and_surrounded():
    text = "Here's my answer:\n```json\n{\"formula\": \"(1+2)*8\"}\n```\nGood luck!"
    assert parse_json_object(text) == {"formula": "(1+2)*8"}
    assert parse_json_object('I think {"action": "stop()"} is right') == {"action": "stop()"}


def test_single_quotes_trailing_commas_bare_labels():
    text = "{'cards': [J, Q, 'K', 5], 'number': [10, 10, 10, 5,], 'formula': \"10+10-10+5\",}"
    assert parse_json_object(text) == {
        "cards": ["J", "Q", "K", 5], "number": [10, 10, 10, 5], "formula": "10+10-10+5"}


def test_not_an_object():
    assert parse_json_object("no json here") is None
    assert parse_json_object("[1, 2, 3]") is None
    assert parse_json_object("{unclosed") is None
    assert parse_json_object(None) is None  # type: ignore[arg-type]


def test_braces_inside_strings_do_not_count():
    assert parse_json_object('{"a": "}{"} tail') == {"a": "}{"}


def test_hostile_nesting_is_bounded():
    for text in ["{" * 100_000, "[" * 100_000, '{"a":' * 50_000, "{'" * 50_000]:
        start = time.perf_counter()
        assert parse_json_object(text) is None
        assert time.perf_counter() - start < 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2 * MAX_RESPONSE_CHARS // 8))
def test_never_raises(text):
    result = parse_json_object(text)
    assert result is None or isinstance(result, dict)
