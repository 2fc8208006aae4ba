"""The GeneralPoints verifier: one test per reward category and per edge case, the check order, the formula
parser's syntax errors, and property-based fuzzing (never raises, reward from the table, bounded time)."""

import ast
import json
import re
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.common import MAX_RESPONSE_CHARS, parse_json_object
from tasks.general_points import REWARDS, Card, GeneralPointsConfig, recognition_correct, verify
from tasks.general_points.formula import FormulaError, parse_formula

HAND = (Card(11, "S"), Card(3, "C"), Card(8, "S"), Card(1, "C"))  # values 10 3 8 1 ("ten"), 11 3 8 1 ("distinct")
TEXT = GeneralPointsConfig()
VISION = GeneralPointsConfig(modality="vision")
RULE_OOD = GeneralPointsConfig(face_cards="distinct")


def answer(formula, cards=("J", "3", "8", "A"), **extra):
    return json.dumps({"cards": list(cards), "number": [10, 3, 8, 1], "formula": formula, **extra})


def category(response, config=TEXT, hand=HAND):
    verdict = verify(response, hand, config)
    assert verdict.reward == REWARDS[verdict.category]
    assert verdict.success == (verdict.category == "correct")
    assert verdict.feedback
    return verdict.category


def test_correct():
    verdict = verify(answer("(10 - 1) * 8 / 3"), HAND, TEXT)
    assert (verdict.reward, verdict.success, verdict.category) == (5.0, True, "correct")


def test_text_after_equals_is_ignored():
    assert category(answer("(10 - 1) * 8 / 3 = 24")) == "correct"
    assert category(answer("(10 - 1) * 8 / 3 = 25 = nonsense x")) == "correct"
    assert category(answer("10 * 3 - 8 + 1 = 24")) == "wrong_value"


def test_exact_fractions_not_floats():
    hand = (Card(8, "S"), Card(8, "C"), Card(3, "S"), Card(3, "C"))
    assert category(answer("8 / (3 - 8 / 3)", cards=("8", "8", "3", "3")), hand=hand) == "correct"


def test_wrong_value_and_its_feedback():
    verdict = verify(answer("10 * 3 - 8 + 1"), HAND, TEXT)
    assert (verdict.category, verdict.reward) == ("wrong_value", -1.0)
    assert "23" in verdict.feedback and "24" in verdict.feedback
    verdict = verify(answer("(10 + 1) / 8 * 3"), HAND, TEXT)
    assert "33/8" in verdict.feedback


def test_division_by_zero_is_wrong_value():
    hand = (Card(3, "S"), Card(3, "C"), Card(8, "S"), Card(1, "C"))
    verdict = verify(json.dumps({"formula": "8 / (3 - 3) * 1"}), hand, TEXT)
    assert verdict.category == "wrong_value" and "zero" in verdict.feedback


def test_illegal_numbers_names_missing_and_extra():
    verdict = verify(answer("(10 - 8 + 1) * 8"), HAND, TEXT)
    assert (verdict.category, verdict.reward) == ("illegal_numbers", -2.0)
    assert "8" in verdict.feedback and "leaves out 3" in verdict.feedback
    assert category(answer("10 + 3 + 8")) == "illegal_numbers"  # a number left unused
    assert category(answer("10 + 3 + 8 + 1 + 2")) == "illegal_numbers"  # an extra number
    assert category(answer("10 * 3 - 8 + 1 + 0")) == "illegal_numbers"
    assert category(answer("010 * 3 - 8 + 1")) == "illegal_numbers"  # leading zero is not the card 10
    assert category(answer("9" * 400 + " * 3 - 8 + 1")) == "illegal_numbers"  # huge numbers never converted


def test_face_card_rule_decides_the_numbers():
    assert category(answer("(10 - 1) * 8 / 3")) == "correct"
    assert category(answer("(10 - 1) * 8 / 3"), config=RULE_OOD) == "illegal_numbers"
    assert category(answer("(11 - 3) * (1 + 8) / 3"), config=RULE_OOD) == "illegal_numbers"
    hand = (Card(13, "S"), Card(12, "C"), Card(1, "S"), Card(1, "C"))  # 13 12 1 1 under "distinct"
    assert category(answer("13 + 12 - 1 * 1", cards=("K", "Q", "A", "A")), config=RULE_OOD, hand=hand) == "correct"


@pytest.mark.parametrize("formula,where", [
    ("", "empty"), ("   ", "empty"), ("(10 - 1) x 8 / 3", "'x'"), ("(10 - 1) * 8 ÷ 3", "'÷'"),
    ("2.5 * 10 - 1", "'.'"), ("J * 3 - 8 + 1", "'J'"), ("(10 - 1 * 8 / 3", "never closed"),
    ("10 - 1) * 8 / 3", "without a matching"), ("-10 + 3 * 8 + 1", "unary minus"),
    ("10 * (-3) + 8 * 1", "unary minus"), ("10 3 * 8 + 1", "two numbers"), ("10 * 3(8 - 1)", "implicit"),
    ("(10 - 1)(8 / 3)", "implicit"), ("(10 - 1)8 / 3", "two numbers"), ("10 ** 3 + 8 + 1", "'**'"),
    ("10 * 3 - 8 + 1 +", "ends"), ("() + 10 * 3 - 8 + 1", "empty parentheses"), ("10 * (3 -) 8 + 1", "')'"),
    ("+10 * 3 - 8 + 1", "no left operand"), ("10 */ 3 - 8 + 1", "no left operand"),
    ("١٠ * 3 - 8 + 1", "'١'"), ("10 * 3 ² - 8 + 1", "'²'"),
])
def test_illegal_formula_syntax_errors(formula, where):
    verdict = verify(answer(formula), HAND, TEXT)
    assert (verdict.category, verdict.reward) == ("illegal_formula", -3.0), formula
    assert where in verdict.feedback, verdict.feedback


def test_no_formula_is_illegal_formula():
    assert category("I think the answer is 24.") == "illegal_formula"
    assert category(json.dumps({"cards": ["J", "3", "8", "A"]})) == "illegal_formula"
    assert category(json.dumps({"formula": 24})) == "illegal_formula"
    assert category(json.dumps({"formula": ["10 * 3 - 8 + 1"]})) == "illegal_formula"
    assert category(answer("= 24")) == "illegal_formula"
    assert category(json.dumps([1, 2, 3])) == "illegal_formula"
    assert category(answer("(" * 600 + "10 * 3 - 8 + 1" + ")" * 600)) == "illegal_formula"  # too long


def test_lenient_json_forms():
    assert category("Sure! ```json\n" + answer("(10 - 1) * 8 / 3") + "\n```") == "correct"
    assert category("Here it is: " + answer("(10 - 1) * 8 / 3") + " Hope it helps.") == "correct"
    single = "{'cards': ['J', '3', '8', 'A'], 'number': [10, 3, 8, 1], 'formula': '(10 - 1) * 8 / 3',}"
    assert category(single) == "correct"
    bare = '{"cards": [J, 3, 8, A], "number": [10, 3, 8, 1], "formula": "(10 - 1) * 8 / 3"}'
    assert category(bare, config=VISION) == "correct"


def test_vision_checks_cards_first():
    assert category(answer("(10 - 1) * 8 / 3"), config=VISION) == "correct"
    assert category(answer("(10 - 1) * 8 / 3", cards=("a", "8", "j", "3")), config=VISION) == "correct"
    assert category(answer("(10 - 1) * 8 / 3", cards=("J", "3", "8", "A", "2")), config=VISION) == "wrong_cards"
    assert category(answer("(10 - 1) * 8 / 3", cards=("Q", "3", "8", "A")), config=VISION) == "wrong_cards"
    assert category(answer("(10 - 1) * 8 / 3", cards=("10", "3", "8", "A")), config=VISION) == "wrong_cards"
    two = (Card(2, "S"), Card(3, "C"), Card(8, "S"), Card(1, "C"))
    assert category(json.dumps({"cards": [2, 3, 8, "A"], "formula": "(2 + 3 - 1) * 8"}), VISION, two) == "wrong_value"
    assert category(json.dumps({"cards": [2.0, 3, 8, "A"], "formula": "2*3*8/1"}), VISION, two) == "wrong_cards"
    assert category(json.dumps({"cards": [2, 3, 8, True], "formula": "2*3*8/1"}), VISION, two) == "wrong_cards"
    assert category(json.dumps({"cards": [2, 3, 8, "1"], "formula": "2*3*8/1"}), VISION, two) == "wrong_cards"
    # wrong cards outrank an illegal formula; without a JSON object there are no cards to check
    verdict = verify(answer("10 ** 3", cards=("K", "3", "8", "A")), HAND, VISION)
    assert (verdict.category, verdict.reward) == ("wrong_cards", -1.5)
    assert category(json.dumps({"formula": "(10 - 1) * 8 / 3"}), config=VISION) == "wrong_cards"
    assert category("no json here", config=VISION) == "illegal_formula"
    # the text modality ignores the cards field
    assert category(answer("(10 - 1) * 8 / 3", cards=("Q", "Q")), config=TEXT) == "correct"


def test_recognition_correct():
    assert recognition_correct(answer("x", cards=("A", "8", "3", "j")), HAND, VISION)
    assert not recognition_correct(answer("x", cards=("A", "8", "3", "Q")), HAND, VISION)
    assert not recognition_correct("garbage", HAND, VISION)
    assert recognition_correct('{"cards": [J, 3, 8, A]}', HAND)


def test_rule_followed_checks_the_number_field_under_the_stated_rule():
    from tasks.general_points import GeneralPointsConfig, rule_followed

    hand = (Card(12, "S"), Card(3, "C"), Card(1, "H"))
    ten, distinct = GeneralPointsConfig(face_cards="ten"), GeneralPointsConfig(face_cards="distinct")
    assert rule_followed('{"number": [10, 3, 1]}', hand, ten)
    assert rule_followed('{"number": [1, 10, 3], "formula": "junk"}', hand, ten)  # any order
    assert not rule_followed('{"number": [10, 3, 1]}', hand, distinct)  # the memorised rule, not the stated one
    assert rule_followed('{"number": [12, 3, 1]}', hand, distinct)
    for bad in ('{"number": [12.0, 3, 1]}', '{"number": [true, 3, 12]}', '{"number": "12 3 1"}', "12, 3, 1", "",
                '{"number": [12, 3]}', '{"number": [12, 3, 1, 1]}'):
        assert not rule_followed(bad, hand, distinct), bad


def test_parser_precedence_and_associativity():
    cases = {"10 - 3 - 8 + 1": 0, "10 / 5 / 2": "1", "2 * 3 + 4 * 5": 26, "((2))": 2, "8 / 3 * 3": 8,
             "2 + 3 * (4 - 1) / 9": 3, "10 - (3 - (8 - 1))": 14}
    for text, value in cases.items():
        assert parse_formula(text).value == int(value), text
    with pytest.raises(FormulaError):
        parse_formula("1 +")
    with pytest.raises(FormulaError, match="character 4 "):
        parse_formula("(1 (2 + 3)")
    with pytest.raises(FormulaError, match="character 1 "):
        parse_formula("(1 + (2 + 3)")


def test_deep_nesting_does_not_recurse():
    # An iterative parser handles any nesting within MAX_FORMULA_CHARS; deeply nested JSON is no crash either.
    program = parse_formula("(" * 200 + "1" + ")" * 200 + "+ 2")
    assert program.value == 3
    assert parse_formula("(1 + 2) / (3 - 3) * 4").value is None  # division by zero
    deep_json = "[" * 100_000 + "]" * 100_000
    assert category(deep_json) == "illegal_formula"


# --- property-based fuzzing ---------------------------------------------------------------------------------

FORMULA_ALPHABET = st.sampled_from(list("0123456789+-*/() ") + ["10", "11", "=", "**", "x", "J", ".", "\n"])
near_miss_formulas = st.lists(FORMULA_ALPHABET, max_size=40).map("".join)
tokens = st.sampled_from(["10", "3", "8", "1", "11", "0", "(", ")", "+", "-", "*", "/", " "])
structured_formulas = st.lists(tokens, min_size=1, max_size=25).map("".join)
cards_field = st.lists(st.sampled_from(["J", "3", "8", "A", "a", "10", 10, 3, None, "Q", "JOKER"]), max_size=6)


def near_miss_responses():
    plain = st.builds(lambda f, c: json.dumps({"cards": c, "number": [10, 3, 8, 1], "formula": f}),
                      st.one_of(near_miss_formulas, structured_formulas), cards_field)
    mangled = st.builds(lambda r, cut, junk: (r[:cut] + junk + r[cut:]),
                        plain, st.integers(0, 80), st.sampled_from(["", "'", ",", "}", "{", "```", "\\", '"']))
    return st.one_of(plain, mangled, st.text(max_size=300), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=near_miss_responses(), vision=st.booleans(), distinct=st.booleans())
def test_fuzz_never_raises_and_reward_in_table(response, vision, distinct):
    config = GeneralPointsConfig(modality="vision" if vision else "language",
                                 face_cards="distinct" if distinct else "ten")
    start = time.perf_counter()
    verdict = verify(response, HAND, config)
    elapsed = time.perf_counter() - start
    assert verdict.reward == REWARDS[verdict.category]
    assert verdict.category in {"correct", "wrong_value", "illegal_numbers", "illegal_formula", "wrong_cards"}
    assert isinstance(verdict.feedback, str) and verdict.feedback
    assert elapsed < 0.5
    assert isinstance(recognition_correct(response, HAND, config), bool)


def ast_value(formula):
    """Exact value of an arithmetic formula by walking Python's ast (independent of the verifier's parser)."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        left, right = walk(node.left), walk(node.right)
        op = type(node.op)
        if op is ast.Div and right == 0:
            raise ZeroDivisionError
        return {ast.Add: lambda: left + right, ast.Sub: lambda: left - right,
                ast.Mult: lambda: left * right, ast.Div: lambda: left / right}[op]()

    return walk(ast.parse(formula.strip(), mode="eval"))


CORRECT = answer("(10 - 1) * 8 / 3 = 24")
EDIT_CHARS = list("0123456789+-*/()= {}[]\"',:JQKA") + ["**", "\n", "```"]


@settings(max_examples=400, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0, len(CORRECT)),
                                st.sampled_from(EDIT_CHARS)), min_size=1, max_size=4),
       vision=st.booleans())
def test_fuzz_edits_of_a_correct_answer(edits, vision):
    """Near misses: a correct answer with a few characters inserted, deleted or replaced."""
    response = CORRECT
    for kind, position, text in edits:
        position = min(position, len(response))
        if kind == "insert":
            response = response[:position] + text + response[position:]
        elif kind == "delete":
            response = response[:position] + response[position + 1:]
        else:
            response = response[:position] + text + response[position + 1:]
    config = VISION if vision else TEXT
    start = time.perf_counter()
    verdict = verify(response, HAND, config)
    assert time.perf_counter() - start < 0.5
    assert verdict.reward == REWARDS[verdict.category] and verdict.feedback
    if verdict.category == "correct":  # the edits kept a formula over the hand's numbers that equals 24
        formula = parse_json_object(response)["formula"].split("=")[0]
        assert ast_value(formula) == 24
        assert sorted(int(n) for n in re.findall(r"[0-9]+", formula)) == [1, 3, 8, 10]


@settings(max_examples=150, deadline=None)
@given(formula=structured_formulas)
def test_fuzz_structured_formulas_agree_with_python_arithmetic(formula):
    """Legal formulas over the hand's numbers get the value Python's exact arithmetic gives (test-side ast)."""
    verdict = verify(answer(formula), HAND, TEXT)
    if verdict.category in ("correct", "wrong_value"):
        try:
            value = ast_value(formula)
        except ZeroDivisionError:
            assert verdict.category == "wrong_value"
            return
        assert (value == 24) == (verdict.category == "correct")


def test_huge_inputs_are_bounded_in_time():
    big = [
        "{" * MAX_RESPONSE_CHARS * 4,
        answer("1+" * 5000 + "1"),
        answer("9" * 100_000),
        '{"formula": "' + "(" * 50_000 + '"}',
        "x" * 10_000_000,
        answer("(10 - 1) * 8 / 3") + " " * 10_000_000,
    ]
    for response in big:
        start = time.perf_counter()
        verdict = verify(response, HAND, VISION)
        assert verdict.reward == REWARDS[verdict.category]
        assert time.perf_counter() - start < 1.0
