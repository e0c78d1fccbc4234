"""CSV cells a spreadsheet will not run: the one writer every CSV the system produces goes through.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by
spreadsheet programs (CSV injection): a vehicle's remarks saying `=HYPERLINK(...)` would run when an
admin opens the export. Such a cell is written with a leading single quote, which spreadsheets show
as text and never evaluate. Numbers are written as they are: they come from typed columns, not from
a person, and `-3` stays a number. The quote is not stripped on import: a re-imported cell keeps it,
visibly, rather than a formula slipping back in.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, Protocol

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


class _Writable(Protocol):
    def write(self, s: str, /) -> Any: ...


def neutralise(value: Any) -> Any:
    """The cell as a spreadsheet will show it, never evaluate it (text only; other values unchanged)."""
    if isinstance(value, str) and value.startswith(TRIGGERS):
        return "'" + value
    return value


class SafeWriter:
    """`csv.writer` whose every cell goes through `neutralise`."""

    def __init__(self, out: _Writable, **fmt: Any) -> None:
        # RFC 4180 line ends: with a bare "\n", the csv module leaves a cell holding "\r" unquoted
        # and the file splits the row there.
        fmt.setdefault("lineterminator", "\r\n")
        self._w = csv.writer(out, **fmt)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([neutralise(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        self._w.writerows([neutralise(v) for v in row] for row in rows)


def safe_writer(out: _Writable, **fmt: Any) -> SafeWriter:
    """The CSV writer to use everywhere the system writes CSV (RFC 4180 line ends)."""
    return SafeWriter(out, **fmt)
