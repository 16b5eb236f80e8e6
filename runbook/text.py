"""Small text rules shared by the UI, the engine and the report: text from
outside made safe for a terminal (:func:`visible`, the one rule) and counts
that agree with their nouns (:func:`plural`).

Its own small module (only ``re``) so that fast paths such as ``runbook list``
and modules below the UI can use it without loading the terminal UI;
:mod:`runbook.ui` re-exports both.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, and C1 controls (0x9b is a one-byte CSI on some terminals)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # on one line: tab and newline too
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def visible(text, *, one_line: bool = False) -> str:
    """Text from outside (command output, labels, API and database errors, SQL rows)
    fit for a terminal: every control character shown, never sent (ESC as ``\\x1b``,
    CR as ``\\r``, other C0/C1 controls and DEL as ``\\xNN``), so a compromised target
    cannot clear the screen, move the cursor or fake a status line.  Newlines and tabs
    are kept (CRLF line ends read as newlines) unless ``one_line``: then they are shown
    too.  Every path of runbook.ui to the terminal goes through here (``ui.esc``)."""
    s = str(text)
    if one_line:
        return _CONTROL_LINE.sub(_show, s)
    return _CONTROL.sub(_show, s.replace("\r\n", "\n"))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` agreeing: "1 write step", "2 write steps", "0 checks"
    (``many``: the plural when it is not ``word`` + "s")."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _show(m: re.Match) -> str:
    ch = m.group()
    return _NAMED.get(ch) or f"\\x{ord(ch):02x}"
