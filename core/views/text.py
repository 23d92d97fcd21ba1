"""Text shown literally in Streamlit: Markdown escaping for user data (file names, row texts, error messages).

Every page writes user-controlled text through ``markdown_text`` or ``markdown_code``, never raw: a row's text
must not become a link, an image, raw HTML or a ``:red[...]`` directive (tests/test_security.py plants them).
"""
from __future__ import annotations

import re

# Characters Markdown, GFM or Streamlit interpret anywhere in a line: emphasis, code, links and images, raw HTML and
# entities, strike-through, tables, ``$`` maths and ``:red[...]`` / ``:material/icon:`` / emoji directives.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()!|<>~$:&])")
# ... and those that only mean something at the start of a line: headings, lists, block quotes, setext rules.
_MARKDOWN_LINE_STARTS = re.compile(r"^([ \t]*)([#+=-]|\d+(?=[.)]))", re.MULTILINE)


def markdown_text(text: str) -> str:
    """``text`` shown literally by ``st.markdown`` / ``st.error`` & co.: every character Markdown (or Streamlit's
    ``$`` maths and ``:color[...]`` directives) would interpret is backslash-escaped, as CommonMark allows.
    Hyphens, dots and digits are escaped only at the start of a line, so ordinary words stay readable."""
    escaped = _MARKDOWN_SPECIALS.sub(r"\\\1", str(text))
    return _MARKDOWN_LINE_STARTS.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit()
                                                                 else "\\" + m.group(2)), escaped)


def markdown_code(text: str) -> str:
    """``text`` as an inline code span, which Markdown shows literally; the fence is one backtick longer than any
    run of backticks in the text (CommonMark), so nothing in it can close the span early."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"
