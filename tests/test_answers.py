"""Checkable answers (core/evaluation/answers.py): references parsed from the real target files, the model's
answer read from generated text, exact match, and the checkable share the CLI and page report."""
from __future__ import annotations

import json
import re

import pytest
from conftest import REPO

from core.evaluation.answers import (
    CheckableAnswer,
    CheckableShare,
    checkable_share,
    exact_match,
    normalise_number,
    predicted_answer,
    reference_answer,
)

DATA = REPO.parent / "shared" / "data"


def rows_of(relative: str) -> list[dict]:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data sets are not mounted here)")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def chat(answer: str, question: str = "Q?") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# ------------------------------------------------------------------------------------------- real target rows


def test_every_gsm8k_target_row_has_its_meta_answer_as_a_number():
    rows = rows_of("targets/gsm8k.jsonl")
    assert len(rows) >= 50
    for row in rows:
        answer = reference_answer(row["messages"])
        assert answer == CheckableAnswer("number", row["meta"]["answer"]), row["id"]


def test_every_pool_gsm8k_row_parses_commas_and_negatives_included():
    rows = rows_of("pool/gsm8k_train.jsonl")
    written = [row["meta"]["answer"] for row in rows]
    assert any("," in answer for answer in written) and any(answer.startswith("-") for answer in written)
    for row in rows:
        expected = row["meta"]["answer"].replace(",", "")
        assert reference_answer(row["messages"]) == CheckableAnswer("number", expected), row["id"]


def test_every_mmlu_row_is_its_meta_letter():
    rows = rows_of("targets/mmlu.jsonl")
    assert {row["meta"]["answer"] for row in rows} == {"A", "B", "C", "D"}
    for row in rows:
        assert reference_answer(row["messages"]) == CheckableAnswer("choice", row["meta"]["answer"]), row["id"]


def test_bbh_letters_and_numbers_are_checkable_and_word_answers_are_not():
    rows = rows_of("targets/bbh.jsonl")
    seen = {"choice": 0, "number": 0, "word": 0}
    for row in rows:
        meta = row["meta"]["answer"]
        answer = reference_answer(row["messages"])
        if letter := re.fullmatch(r"\(([A-Z])\)", meta):
            assert answer == CheckableAnswer("choice", letter.group(1)), row["id"]
            seen["choice"] += 1
        elif re.fullmatch(r"-?\d+", meta):
            assert answer == CheckableAnswer("number", meta), row["id"]
            seen["number"] += 1
        else:  # Yes/No, True/False, valid/invalid, bracket sequences, sorted words: not checkable by design
            assert answer is None, (row["id"], meta)
            seen["word"] += 1
    assert seen["choice"] >= 40 and seen["number"] >= 3 and seen["word"] >= 10, seen
    share = checkable_share(row["messages"] for row in rows)
    assert (share.kinds, share.total) == ({"choice": seen["choice"], "number": seen["number"]}, len(rows))


@pytest.mark.parametrize("name", ["humaneval", "alpaca_eval", "tydiqa"])
def test_open_answer_targets_are_not_checkable(name):
    rows = rows_of(f"targets/{name}.jsonl")
    assert rows
    assert [row["id"] for row in rows if reference_answer(row["messages"]) is not None] == []


# ------------------------------------------------------------------------------------- hand-written references


@pytest.mark.parametrize(("text", "expected"), [
    ("Step one.\nStep two.\n#### 1,234", CheckableAnswer("number", "1234")),
    ("48/2 = 24\n#### -3.50", CheckableAnswer("number", "-3.5")),
    ("It costs 3 + 4 = 7 dollars.\nSo the answer is $7.00.", CheckableAnswer("number", "7")),
    ("So the answer is +12.", CheckableAnswer("number", "12")),
    ("The answer is: J", CheckableAnswer("choice", "J")),
    ("The colour is pink. So the answer is (R).", CheckableAnswer("choice", "R")),
    ("So the answer is Yes.", None),
    ("So the answer is ] } ].", None),
    ("So the answer is 18 dollars.", None),  # a number with words after it is not the whole answer
    ("The answer is 5, as shown above.\nHope this helps!", None),  # the statement must end the reference
    ("### Ingredients:\n\n#### 2023", CheckableAnswer("number", "2023")),
    ("### Ingredients:\n\n#### For the Dough:\n- 500 g flour", None),
    ("Answer: 1953", None),  # TyDi QA style: a span, not a stated final answer
])
def test_reference_answer_rules(text, expected):
    assert reference_answer(chat(text)) == expected


def test_reference_is_the_last_assistant_message():
    messages = chat("So the answer is 3.") + [{"role": "user", "content": "And now?"},
                                              {"role": "assistant", "content": "So the answer is (C)."}]
    assert reference_answer(messages) == CheckableAnswer("choice", "C")
    assert reference_answer([{"role": "user", "content": "So the answer is 3."}]) is None


@pytest.mark.parametrize(("written", "canonical"), [
    ("1,234", "1234"), ("$1,234.50", "1234.5"), ("+7", "7"), ("-0.0", "0"), ("3.00", "3"), (".5", "0.5"),
    ("007", "7"), ("\u22124", "-4"), ("$-5", "-5"),
])
def test_normalise_number(written, canonical):
    assert normalise_number(written) == canonical


def test_normalise_number_refuses_non_numbers():
    for text in ("", "12a", "1.2.3", "-"):
        with pytest.raises(ValueError):
            normalise_number(text)


# ---------------------------------------------------------------------------------------- the model's answer


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 18. Next, 20 more eggs come in 3 boxes.", "18"),  # a marker beats a later number
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18\nQuestion: 5 apples", "18"),
    ("So the answer is 18.\nQuestion: ...\nSo the answer is 7.", "18"),  # the first statement, not an invented one
    ("I found the answer: 12 after checking 40 cases", "12"),
    ("Let me think: 16 - 3 = 13, then answer: 13 ... So the answer is 26.", "26"),  # "answer is" beats "answer:"
    ("She pays 3 + 4 = 7, then 7 * 2 = 14 dollars in all", "14"),  # no marker: the last number
    ("The total is $1,234.50.", "1234.5"),
    ("The answer is: -15", "-15"),
    ("Then 5-3 = 2, so nothing changes", "2"),
    ("What is left is 8-3", "3"),  # the minus of 8-3 is not a sign
    ("Each box costs -4 less, see figure x2", "-4"),  # the 2 of x2 is part of a name
    ("The answer is $\\boxed{42}$.", "42"),
    ("It came to 0.50 in the end", "0.5"),
    ("I cannot tell from this.", None),
    ("", None),
])
def test_predicted_number(text, expected):
    assert predicted_answer(text, "number") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Let's think. (A) is wrong, (B) fits. So the answer is (C).", "C"),
    ("The answer is: B", "B"),
    ("Answer: D", "D"),
    ("answer is **A**.", "A"),
    ("B", "B"),
    ("(C) 12/14/1937", "C"),
    ("D. Paris", "D"),
    ("A dog is an animal.", None),  # the article "A" is not option A
    ("I think it is hard.", None),
    ("The options are unclear.", None),
    ("", None),
])
def test_predicted_choice(text, expected):
    assert predicted_answer(text, "choice") == expected


def test_predicted_answer_refuses_unknown_kind():
    with pytest.raises(ValueError, match="unknown answer kind"):
        predicted_answer("42", "word")


def test_exact_match():
    number = CheckableAnswer("number", "1234")
    assert exact_match(number, "So the total is 1,234.")
    assert exact_match(number, "#### 1234.00")
    assert not exact_match(number, "So the answer is 1235.")
    assert not exact_match(number, "no idea")
    choice = CheckableAnswer("choice", "B")
    assert exact_match(choice, "So the answer is (B).")
    assert exact_match(choice, "B.")
    assert not exact_match(choice, "The answer is: C")
    assert not exact_match(choice, "Because b is wrong")


def test_checkable_share_counts_and_describes():
    rows = [chat("So the answer is 3."), chat("#### 4"), chat("The answer is: A"), chat("Some prose."), []]
    share = checkable_share(iter(rows))
    assert share == CheckableShare(5, {"number": 2, "choice": 1})
    assert share.checkable == 3
    assert share.describe() == "3 of 5 evaluation rows are checkable (2 numbers, 1 choice letter)"
    assert checkable_share([chat("prose")]).describe() == (
        "0 of 1 evaluation row is checkable (none ends in a number or a choice letter)")
