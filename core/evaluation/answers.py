"""Checkable answers: which evaluation rows have a final answer that exact match can score, and what it is.

After fine-tuning on a selection, every held-out row gets a cross-entropy; a row whose reference ends in a
*checkable* answer also gets exact-match accuracy from greedy decoding.  A reference (the last assistant
message) is checkable when it ends in an explicit final-answer statement whose answer is

* a number (kind ``"number"``): "So the answer is 18." (GSM8K as shipped in the targets and the pool, BBH
  arithmetic and counting tasks), or a last line "#### 42" (the original GSM8K format).  Numbers are compared
  in a canonical form (``normalise_number``): no thousands commas, "$" or leading "+", no trailing zeros after
  the decimal point, so "$1,234.50" and "1234.5" are the same answer;
* a choice letter (kind ``"choice"``): "The answer is: B" (MMLU), "So the answer is (B)." (BBH).  A bare
  letter counts only from A to J (ten options, as MMLU-Pro has), since a lone capital further on is more often
  a word or an initial than an option; a letter in parentheses may be any of A-Z, because BBH colour questions
  run their options up to (R) and the parentheses make it unambiguous.

Everything else is not checkable (``None``), on purpose:

* word answers, among them BBH's Yes/No, True/False, valid/invalid, bracket sequences and sorted word lists.
  Their vocabulary belongs to each task, so without the task's option list there is no sound way to find the
  model's answer in free text ("no" and "true" occur in ordinary prose), and two-way labels would mix a 50 %
  chance floor into an accuracy that is otherwise at 25 % or near 0 %.  They keep their cross-entropy;
* open answers (HumanEval code, AlpacaEval prose, TyDi QA spans): there is no single string to match.  TyDi QA
  writes "Answer: ..." in the question's own language, so a reference must say "the answer is" (or "####")
  in English to count, which keeps a span that happens to be a year out of the numbers.

The reference must *end* with the statement (its last line), so a number quoted mid-way through a long answer
never makes a row checkable.  Reading the model's output is more lenient (``predicted_answer``): generated
text is scored by the same rules whatever the model's style, markers first, then a fallback.

Pure Python (``re`` only): it is shared by the fine-tuning evaluator, the CLI and the app page.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

KINDS = ("number", "choice")

# A number as written in text: optional sign and "$", thousands commas (only in groups of three, so a list
# "1,2,3" stays three numbers), an optional decimal part.  The look-behind keeps the minus of "5-3" and the
# digits of "x2" or "v1.5" from being read as a number of their own.
_NUMBER = (
    r"(?<![\w.])(?P<number>[-+\u2212]?\$?[-+\u2212]?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+))"
)
# A choice letter: any capital in parentheses, or a bare A-J not followed by more of a word ("A dog" is not B).
_LETTER = r"(?:\((?P<paren>[A-Z])\)|(?<![A-Za-z])(?P<bare>[A-J])(?![A-Za-z0-9']))"
# What may stand between a marker and its answer on the same line: punctuation, "$", bold "**", "\boxed{".
_GAP = r"(?:[^\w\n]|\\boxed\{)*?"

_ANSWER_IS = r"(?i:\banswer\s+is)"
_ANSWER_COLON = r"(?i:\banswer\s*:)"

# Reference side: the text after the last "answer is" must be the whole answer, up to a final full stop.
_LAST_ANSWER_IS = re.compile(_ANSWER_IS + r"(?!.*" + _ANSWER_IS + r")", re.S)
_WHOLE_NUMBER = re.compile(_NUMBER)
_WHOLE_LETTER = re.compile(_LETTER)
_HASHES_LINE = re.compile(r"####[ \t]*" + _NUMBER + r"[ \t]*")

# Generated side, in order of preference.  The *first* match of a marker wins, since greedy decoding that does
# not stop may go on to invent a next question and answer it too.
_NUMBER_MARKERS = tuple(re.compile(marker + _GAP + _NUMBER) for marker in (r"####", _ANSWER_IS, _ANSWER_COLON))
_CHOICE_MARKERS = tuple(re.compile(marker + _GAP + _LETTER) for marker in (_ANSWER_IS, _ANSWER_COLON))
_ANY_NUMBER = re.compile(_NUMBER)
# A reply that opens with its letter: "(B) ...", or a bare "B" standing alone ("B", "B.", "B: 12", "B" then a new
# line), never the first word of a sentence ("A dog ...", "I think ...").
_LEADING_LETTER = re.compile(
    r"\A\s*(?:\*\*)?(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-J])(?=[.:)]|\*\*|[ \t]*(?:\n|\Z)))"
)


@dataclass(frozen=True)
class CheckableAnswer:
    """The answer exact match compares against: a canonical number ("1234.5", "-3") or a capital letter."""

    kind: str  # "number" or "choice"
    value: str  # normalised: ``normalise_number`` for numbers, the bare capital for choices


def normalise_number(text: str) -> str:
    """The canonical form of a written number: "$1,234.50" -> "1234.5", "+7" -> "7", "-0.0" -> "0", ".5" -> "0.5".

    Raises ``ValueError`` when ``text`` is not one number."""
    cleaned = re.sub(r"[\s,$]", "", text).replace("\u2212", "-")
    sign = ""
    if cleaned[:1] in ("-", "+"):
        sign, cleaned = cleaned[0], cleaned[1:]
    if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", cleaned):
        raise ValueError(f"not a number: {text!r}")
    whole, _, fraction = cleaned.partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    value = whole + ("." + fraction if fraction else "")
    return "-" + value if sign == "-" and value != "0" else value


def _letter_of(match: re.Match) -> str:
    return match.group("paren") or match.group("bare")


def _answer_from_tail(tail: str) -> CheckableAnswer | None:
    """The checkable answer a reference states after its last "answer is", if the tail is nothing but that."""
    tail = tail.strip().lstrip(":* \t").rstrip(".* \t")
    if (number := _WHOLE_NUMBER.fullmatch(tail)) is not None:
        return CheckableAnswer("number", normalise_number(number.group("number")))
    if (letter := _WHOLE_LETTER.fullmatch(tail)) is not None:
        return CheckableAnswer("choice", _letter_of(letter))
    return None


def reference_text(messages: Sequence[Mapping]) -> str | None:
    """The reference answer of a chat row: the content of its last assistant message (None when it has none)."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def reference_answer(messages: Sequence[Mapping]) -> CheckableAnswer | None:
    """The checkable answer of a chat row, or None when its reference does not end in a number or a letter.

    The reference is the last assistant message; it must end with "... the answer is N." / "The answer is: B" /
    "So the answer is (B)." on its last line, or with a last line "#### N" (see the module docstring)."""
    text = reference_text(messages)
    if text is None:
        return None
    text = text.strip()
    last_line = text.rsplit("\n", 1)[-1]
    if (hashes := _HASHES_LINE.fullmatch(last_line)) is not None:
        return CheckableAnswer("number", normalise_number(hashes.group("number")))
    marker = _LAST_ANSWER_IS.search(last_line)
    if marker is None:
        return None
    return _answer_from_tail(last_line[marker.end():])


def predicted_answer(text: str, kind: str) -> str | None:
    """The model's answer in generated ``text``, normalised like a reference of ``kind``, or None if it gives none.

    Numbers: the first "#### N", else the first "answer is N", else the first "answer: N", else the last
    number in the text (a chain of thought ends on its result).  Choices: the first "answer is (X)" /
    "answer is: X", else "Answer: X", else a letter standing alone at the very start ("B", "(B)", "B.")."""
    if kind == "number":
        for marker in _NUMBER_MARKERS:
            if (found := marker.search(text)) is not None:
                return normalise_number(found.group("number"))
        numbers = list(_ANY_NUMBER.finditer(text))
        return normalise_number(numbers[-1].group("number")) if numbers else None
    if kind == "choice":
        for marker in _CHOICE_MARKERS:
            if (found := marker.search(text)) is not None:
                return _letter_of(found)
        leading = _LEADING_LETTER.match(text)
        return _letter_of(leading) if leading is not None else None
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")


def exact_match(reference: CheckableAnswer, generated_text: str) -> bool:
    """Whether ``generated_text`` gives the reference's answer (after both are normalised)."""
    return predicted_answer(generated_text, reference.kind) == reference.value


@dataclass(frozen=True)
class CheckableShare:
    """How many of a set of evaluation rows exact match can score, by answer kind."""

    total: int
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> rows, only kinds that occur

    @property
    def checkable(self) -> int:
        return sum(self.kinds.values())

    def describe(self) -> str:
        """E.g. "42 of 50 evaluation rows are checkable (40 numbers, 2 choice letters)"."""
        rows = "row is" if self.total == 1 else "rows are"
        head = f"{self.checkable} of {self.total} evaluation {rows} checkable"
        if not self.checkable:
            return head + " (none ends in a number or a choice letter)"
        names = {"number": ("number", "numbers"), "choice": ("choice letter", "choice letters")}
        parts = [f"{n} {names[kind][n != 1]}" for kind in KINDS if (n := self.kinds.get(kind, 0))]
        return f"{head} ({', '.join(parts)})"


def checkable_share(rows_messages: Iterable[Sequence[Mapping]]) -> CheckableShare:
    """Count the rows (each given as its chat messages) whose reference answer is checkable, by kind."""
    total = 0
    kinds: dict[str, int] = {}
    for messages in rows_messages:
        total += 1
        answer = reference_answer(messages)
        if answer is not None:
            kinds[answer.kind] = kinds.get(answer.kind, 0) + 1
    return CheckableShare(total, kinds)
