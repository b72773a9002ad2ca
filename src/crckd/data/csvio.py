"""Reading the label and split CSV files: stripped strings, checked columns, errors by line.

Problems raise `DataError` naming the file and line; given an `Issues` collector instead, rows
with a blank value are recorded and left out, and a BOM or unused columns are noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd

from crckd.errors import DataError

_BOM = b"\xef\xbb\xbf"


class Issues(Protocol):
    """Collects the problems of a dataset instead of raising at the first one."""

    def error(self, code: str, message: str, items: Sequence[str] = ()) -> None: ...

    def note(self, code: str, message: str, items: Sequence[str] = ()) -> None: ...


def csv_line(position: int) -> int:
    """The CSV line of a data row (the header is line 1)."""
    return position + 2


def read_csv(
    path: Path,
    required: Sequence[str],
    issues: Issues | None = None,
    optional: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a CSV as stripped strings (a UTF-8 BOM is allowed) and check its columns.

    With `issues`, rows with a blank required value are recorded and left out, and a BOM or
    columns outside `required` and `optional` are noted.
    """
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse CSV file {path}: {err}") from err
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took surplus fields for an index
        raise DataError(f"cannot parse CSV file {path}: rows have more fields than the header")
    frame.columns = [str(c).strip() for c in frame.columns]
    doubled = frame.columns[frame.columns.duplicated()].unique().tolist()
    if doubled:
        raise DataError(f"CSV file {path} has duplicate column(s) {', '.join(doubled)}")
    if frame.empty:
        raise DataError(f"CSV file {path} lists no images")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"CSV file {path} lacks column(s) {', '.join(missing)} "
            f"(it has: {', '.join(frame.columns)})"
        )
    frame = frame.apply(lambda column: column.str.strip())
    if issues is not None:
        _note_format(path, frame, [*required, *optional], issues)
    blank = frame[list(required)].eq("")
    rows = frame.index[blank.any(axis=1)]
    if len(rows) and issues is None:
        column = blank.columns[blank.loc[rows[0]]][0]
        raise DataError(f"{path}, line {csv_line(rows[0])}: column {column!r} is empty")
    if len(rows):
        issues.error(
            "blank_value",
            f"{path.name}: rows with an empty {'/'.join(required)} value, left out",
            [f"line {csv_line(r)}" for r in rows],
        )
    return frame.drop(index=rows)


def _note_format(path: Path, frame: pd.DataFrame, known: Sequence[str], issues: Issues) -> None:
    """Note a UTF-8 BOM (read correctly) and columns the layout does not use."""
    with path.open("rb") as handle:
        if handle.read(len(_BOM)) == _BOM:
            issues.note("csv_bom", f"{path.name} starts with a UTF-8 BOM (read correctly)")
    unused = [c for c in frame.columns if c not in known]
    if unused:
        issues.note("unused_columns", f"{path.name}: column(s) not used, ignored", unused)
