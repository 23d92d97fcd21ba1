"""Instruction records: one decoded JSON record in, the parts of one normalised chat row out.

This is the record-level half of the first pipeline stage (``core/data/readers.py`` streams the files and
calls into it).  It knows the four supported formats (Alpaca, ShareGPT, chat ``messages``,
prompt/completion): ``detect_format`` judges a record by its keys, ``normalise`` turns it into a list of
``{"role", "content"}`` chat messages, ``content_hash_of`` gives the conversation a stable hash (a row's id is
the record's own ``"id"``, else the first 16 hex digits of that hash), and the helpers here pick a row's
source and group.  It also holds the public data types every reader shares: ``Row``, ``RowError`` and the
errors ``FormatError`` (a whole file), ``RowProblem`` (one record; the message is the reason shown to the
user) and ``BadRowsError`` (fail mode).

What a record may hold on purpose (tests/test_fuzz_inputs.py tries each): keys no format uses (ignored), and
any Unicode text, ``\u0000`` and U+2028 included (kept exactly).  A lone surrogate (a ``"\ud800"`` escape)
cannot be written as UTF-8, so it is a bad record, as is every other departure from the four formats, with a
precise reason.

Only the standard library is used; nothing here knows about files, the store, the model or the app.
"""
from __future__ import annotations

import codecs
import hashlib
import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_json_string  # the one ensure_ascii=False uses
from typing import Any

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")

# The keys that make a record detect as each format, in detection order (see ``detect_format``).
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}

# Field names that name a row's target group (task / subject) when no group field is given.
AUTO_GROUP_FIELDS = ("group", "subtask", "task", "subject", "category")

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "model": "assistant",
    "system": "system",
}
CHAT_ROLES = ("system", "user", "assistant")

MAX_ERRORS_IN_MESSAGE = 10


# ----------------------------------------------------------------------------------------------------------
# Public data types


# The first bytes of files that are certainly not UTF-8 text, and what to do about each: every reader refuses them
# (``readers`` for JSON, ``tabular`` for CSV and tables), each adding the starts only it knows (zip, Parquet, ...).
NOT_UTF8_TEXT_STARTS = (
    (codecs.BOM_UTF32_LE, "is UTF-32 encoded; save it as UTF-8"),
    (codecs.BOM_UTF32_BE, "is UTF-32 encoded; save it as UTF-8"),
    (codecs.BOM_UTF16_LE, "is UTF-16 encoded; save it as UTF-8"),
    (codecs.BOM_UTF16_BE, "is UTF-16 encoded; save it as UTF-8"),
    (b"\x1f\x8b", "is gzip-compressed; decompress it first (gunzip)"),
    (b"\x28\xb5\x2f\xfd", "is zstd-compressed; decompress it first (unzstd)"),
    (b"BZh", "is bzip2-compressed; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "is xz-compressed; decompress it first (unxz)"),
)

@dataclass(frozen=True)
class Row:
    """One normalised training/target example."""

    row_id: str  # the record's own "id" (str or int, as str) if present, else content_hash[:16]
    content_hash: str  # sha256 hex of the canonical JSON of ``messages``
    # Left out of the hash so rows stay hashable (dicts are not); equality still compares it.
    messages: tuple[dict, ...] = field(hash=False)
    format: str  # one of FORMATS
    file: str  # path as given
    line: int  # 1-based line where the record starts
    source: str  # the record's "source" / "dataset" string, else the file stem
    group: str | None  # target group / subtask, if any


@dataclass(frozen=True)
class RowError:
    """One bad record (or a structural problem in a file, line 0 when it has no line)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


class FormatError(ValueError):
    """The whole file cannot be read as instruction data (missing, empty, not JSON, unknown format...)."""


class RowProblem(ValueError):
    """A single record is invalid; the message is the reason shown to the user."""


class BadRowsError(ValueError):
    """Raised in ``on_error="fail"`` mode when a file (or a set of files) has bad records."""

    def __init__(self, errors: list[RowError], advice: str | None = None):
        self.errors: list[RowError] = list(errors)
        files = sorted({error.file for error in self.errors})
        advice = advice or "fix them, or ingest with --on-error skip to leave them out"
        lines = [f"{len(self.errors)} bad row(s) in {', '.join(files)}; {advice}:"]
        lines += [str(error) for error in self.errors[:MAX_ERRORS_IN_MESSAGE]]
        if len(self.errors) > MAX_ERRORS_IN_MESSAGE:
            lines.append(f"... and {len(self.errors) - MAX_ERRORS_IN_MESSAGE} more")
        super().__init__("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Format detection and normalisation of one record


def detect_format(record: dict) -> str | None:
    """The format a record is in, judged by its keys only (validation is ``normalise``'s job)."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def normalise(record: dict, fmt: str) -> list[dict]:
    """Chat messages ``[{"role", "content"}, ...]`` for a record of format ``fmt``; raises RowProblem."""
    if fmt == "alpaca":
        turns = _alpaca_turns(record)
    elif fmt == "sharegpt":
        turns = _sharegpt_turns(record)
    elif fmt == "messages":
        turns = _message_list_turns(record.get("messages"), "messages", '"messages"', "turn")
    elif fmt == "prompt_completion":
        turns = _prompt_completion_turns(record)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _checked_conversation(turns)


# A turn on its way to becoming a message: (role, content, place, number).  ``place`` and ``number`` say
# where it came from in the record ("turn", 3 -> "turn 3"; '"output"', 0 -> '"output"') so that error
# messages point at the right spot; the text is only built when there is an error to report.
_Turn = tuple[str, str, str, int]


def _where(place: str, number: int) -> str:
    return f"{place} {number}" if number else place


def _is_blank(text: str) -> bool:
    # Same test as ``not text.strip()`` without copying the text (this runs for every message).
    return not text or text.isspace()


def _alpaca_turns(record: dict) -> list[_Turn]:
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or _is_blank(instruction):
        raise RowProblem('alpaca: "instruction" must be a non-empty string')
    output = record.get("output")
    if not isinstance(output, str) or _is_blank(output):
        raise RowProblem('alpaca: "output" must be a non-empty string')
    extra_input = record.get("input")
    if extra_input is None:  # many Alpaca exports write null for "no input"
        extra_input = ""
    if not isinstance(extra_input, str):
        raise RowProblem('alpaca: "input" must be a string')
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise RowProblem('alpaca: "system" must be a string')
    history = record.get("history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise RowProblem('alpaca: "history" must be a list of [question, answer] pairs')

    turns: list[_Turn] = []
    if system is not None and not _is_blank(system):
        turns.append(("system", system, '"system"', 0))
    for number, pair in enumerate(history, 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise RowProblem(f'alpaca: "history" item {number} must be a [question, answer] pair of strings')
        turns.append(("user", pair[0], '"history" item', number))
        turns.append(("assistant", pair[1], '"history" item', number))
    user_content = instruction if _is_blank(extra_input) else instruction + "\n\n" + extra_input
    turns.append(("user", user_content, '"instruction"', 0))
    turns.append(("assistant", output, '"output"', 0))
    return turns


def _sharegpt_turns(record: dict) -> list[_Turn]:
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RowProblem('sharegpt: "conversations" must be a non-empty list')
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise RowProblem('sharegpt: "system" must be a string')

    turns: list[_Turn] = []
    if system is not None and not _is_blank(system):
        turns.append(("system", system, '"system"', 0))
    for number, turn in enumerate(conversations, 1):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            found = f" (found keys: {_key_list(turn)})" if isinstance(turn, dict) else ""
            raise RowProblem(f'sharegpt: turn {number} must be an object with "from" and "value"{found}')
        speaker = turn["from"]
        # Case is ignored because exports differ ("human", "Human", "GPT").
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise RowProblem(f"sharegpt: turn {number} has unknown role {_show(speaker)}")
        value = turn["value"]
        if not isinstance(value, str) or _is_blank(value):
            raise RowProblem(f'sharegpt: turn {number} "value" must be a non-empty string')
        if role == "system" and turns:
            raise RowProblem(f"system message must be the first turn (found in turn {number})")
        turns.append((role, value, "turn", number))
    return turns


def _message_list_turns(messages: Any, fmt: str, what: str, place: str) -> list[_Turn]:
    """Turns of an OpenAI-style message list (used by the messages format and conversational prompt/completion)."""
    if not isinstance(messages, list) or not messages:
        raise RowProblem(f"{fmt}: {what} must be a non-empty list of messages")
    turns: list[_Turn] = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            found = f" (found keys: {_key_list(message)})" if isinstance(message, dict) else ""
            raise RowProblem(f'{fmt}: {place} {number} must be an object with "role" and "content"{found}')
        speaker = message["role"]
        role = speaker if speaker in CHAT_ROLES else speaker.lower() if isinstance(speaker, str) else None
        if role not in CHAT_ROLES:
            raise RowProblem(f"{fmt}: {place} {number} has unknown role {_show(speaker)}")
        content = message["content"]
        if not isinstance(content, str):
            content = _parts_text(content, fmt, f"{place} {number}")
        turns.append((role, content, place, number))
    return turns


def _parts_text(content: Any, fmt: str, where: str) -> str:
    """The text of an OpenAI-style list of content parts, joined with newlines."""
    if not isinstance(content, list):
        raise RowProblem(f'{fmt}: {where} "content" must be a string or a list of text parts')
    texts = []
    for number, part in enumerate(content, 1):
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type != "text":
            shown = _show(part_type) if isinstance(part, dict) else f"a {_json_type(part)}"
            raise RowProblem(f"{fmt}: {where} has a non-text content part ({shown})")
        if not isinstance(part.get("text"), str):
            raise RowProblem(f'{fmt}: {where} content part {number} has no "text" string')
        texts.append(part["text"])
    return "\n".join(texts)


def _prompt_completion_turns(record: dict) -> list[_Turn]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        if _is_blank(prompt):
            raise RowProblem('prompt_completion: "prompt" must be a non-empty string')
        if _is_blank(completion):
            raise RowProblem('prompt_completion: "completion" must be a non-empty string')
        return [("user", prompt, '"prompt"', 0), ("assistant", completion, '"completion"', 0)]
    if isinstance(prompt, list) and isinstance(completion, list):
        return (_message_list_turns(prompt, "prompt_completion", '"prompt"', "prompt turn")
                + _message_list_turns(completion, "prompt_completion", '"completion"', "completion turn"))
    raise RowProblem('prompt_completion: "prompt" and "completion" must both be strings or both be lists of messages')


def _checked_conversation(turns: list[_Turn]) -> list[dict]:
    """Rules shared by every format; content is kept exactly, emptiness is judged after strip."""
    if not turns:
        raise RowProblem("record has no messages")
    has_user = False
    for index, (role, content, place, number) in enumerate(turns):
        if role == "system" and index != 0:
            raise RowProblem(f"system message must be the first turn (found in {_where(place, number)})")
        if role == "assistant" and _is_blank(content):
            raise RowProblem(f"empty assistant answer in {_where(place, number)}")
        if role == "user":
            if _is_blank(content):
                raise RowProblem(f"empty user message in {_where(place, number)}")
            has_user = True
        if not _is_valid_unicode(content):
            raise RowProblem(f"text in {_where(place, number)} is not valid Unicode (unpaired surrogate)")
    last_role = turns[-1][0]
    if last_role != "assistant":
        raise RowProblem(f'last message must be from the assistant (got "{last_role}")')
    if not has_user:
        raise RowProblem("no user message")
    return [{"role": turn[0], "content": turn[1]} for turn in turns]


def _is_valid_unicode(text: str) -> bool:
    # JSON "\ud800" escapes decode to lone surrogates, which cannot be written as UTF-8 (hashing, storage,
    # tokenizers all fail on them later), so they are caught here.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: Any) -> str:
    """A value as it looks in JSON, shortened, for error messages."""
    try:
        shown = json.dumps(value, ensure_ascii=False)
        if not _is_valid_unicode(shown):
            # A lone surrogate ("\ud800" in the file) cannot be written as UTF-8: a message holding it would
            # break every place that shows or stores it (terminal, DuckDB, the browser), so escape it.
            shown = json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested almost as deep as JSON allows
        shown = f"a JSON {_json_type(value)}"
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _key_list(record: dict, limit: int = 12) -> str:
    keys = [str(key) for key in record]
    shown = ", ".join(_show(key) for key in keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "") if keys else "none"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expected_formats() -> str:
    return "; ".join(f"{fmt} ({', '.join(_show(key) for key in FORMAT_KEYS[fmt])})" for fmt in FORMATS)


# The canonical JSON is ``json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))``.
_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def content_hash_of(messages: list[dict]) -> str:
    """sha256 of the canonical JSON of the messages: the same conversation always hashes the same."""
    if all(type(m) is dict and len(m) == 2 and type(m.get("role")) is str and type(m.get("content")) is str
           for m in messages):
        # Normalised messages have exactly these two string keys, so the canonical JSON can be written
        # directly, byte for byte what the encoder gives, in about half the time (this runs for every row).
        canonical = "[" + ",".join([
            '{"content":%s,"role":%s}' % (_encode_json_string(m["content"]), _encode_json_string(m["role"]))  # noqa: UP031
            for m in messages
        ]) + "]"
    else:
        canonical = _CANONICAL_JSON.encode(messages)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _explicit_id(record: dict) -> str | None:
    if "id" not in record:
        return None
    value = record["id"]
    # bool is an int subclass in Python, but true/false is never a meaningful id.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and _is_blank(value)):
        raise RowProblem('"id" must be a non-empty string or integer')
    return str(value)


def _as_label(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if text.strip() else None


def _group_of(record: dict, group_field: str | None) -> str | None:
    if group_field is not None:
        if group_field in record:  # a key that itself contains dots wins over the dotted path
            return _as_label(record[group_field])
        value: Any = record
        for part in group_field.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return _as_label(value)
    meta = record.get("meta")
    for container in (record, meta) if isinstance(meta, dict) else (record,):
        for name in AUTO_GROUP_FIELDS:
            value = container.get(name)
            if value is not None:
                label = _as_label(value)
                if label is not None:
                    return label
    return None


def _source_of(record: dict, file_stem: str) -> str:
    for name in ("source", "dataset"):
        value = record.get(name)
        if isinstance(value, str) and not _is_blank(value):
            return value
    return file_stem
