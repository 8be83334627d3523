"""CSV files: DuckDB's reader with its rejects table, the header row decided, and each record's line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gae.ingest.config import BOM, IngestConfig
from gae.ingest.staging import _is_empty, _open, _peek, _rows_as_json, _stage

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa


def _csv(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> pa.Table:
    import duckdb
    import pyarrow as pa

    with _open(path) as f:
        data = f.read()
    con.execute("drop table if exists _csv_rejects")
    con.execute("drop table if exists _csv_scans")
    rejects = "store_rejects = true, rejects_table = '_csv_rejects', rejects_scan = '_csv_scans'"
    # One row with an unbalanced double quote makes the free sniffer settle on a dialect without quotes,
    # which cuts every good quoted field holding a delimiter or newline into pieces. Where the file has a
    # double quote it is pinned; the delimiter and the escape ('"' doubled, or a backslash) are sniffed.
    # With no double quote anywhere the dialect (a single-quote one too) is DuckDB's to sniff.
    quote = """, quote = '"'""" if b'"' in data else ""
    params: dict = {"path": str(path)}
    fallback = None
    try:
        ((sniffed_header, columns, delim),) = con.execute(
            f"select HasHeader, Columns, Delimiter from sniff_csv($path{quote})", params
        ).fetchall()
        names, types = [c["name"] for c in columns], [c["type"] for c in columns]
    except duckdb.Error:
        # The sniffer finds no dialect with that quote (the unterminated one runs to the end of its
        # sample): read without it, RFC 4180's escape (a doubled quote), the delimiter and columns taken
        # from the first record, so the good rows are kept and the bad one is rejected at its line.
        delim, first = _csv_dialect_fallback(data, header=True)
        names, types, sniffed_header, fallback = list(first), ["VARCHAR"] * len(first), None, delim
    header, rename, no_header = _csv_layout(cfg, names, types, sniffed_header, data, delim)
    params["header"] = header
    if rename:
        params["names"] = rename
    named = ", names = $names" if rename else ""
    try:
        if fallback is None:
            source = f"read_csv($path, header = $header, all_varchar = true{quote}{named}, {rejects})"
        else:
            _, cols = _csv_dialect_fallback(data, header=header)
            if rename:
                cols = dict(zip(rename + list(cols)[len(rename) :], cols.values(), strict=True))
            params.update(delim=fallback, columns=cols)
            source = f"""read_csv($path, header = $header, auto_detect = false, delim = $delim, quote = '"',
                                  escape = '"', columns = $columns, {rejects})"""
            params.pop("names", None)
        good = _rows_as_json(con, source, params)
    except duckdb.Error as exc:
        if _is_empty(path):
            return _stage(0)
        return _stage(
            1, raw=[_peek(path, cfg.raw_max_chars)], is_json=[False], reason=["unreadable"], detail=[str(exc)]
        )
    if no_header:
        # every record, the first row included, is quarantined: it cannot be told which is data
        n = good.num_rows
        good = good.set_column(
            good.schema.get_field_index("reason"), "reason", pa.array(["csv_no_header"] * n)
        )
        good = good.set_column(good.schema.get_field_index("detail"), "detail", pa.array([no_header] * n))
    bad = con.sql(
        # DuckDB may report several errors for one line: one quarantined record per line
        """select line::bigint as line, null::bigint as record, min(byte_position)::bigint as byte_offset,
                  null::blob as raw, any_value(csv_line)::varchar as body, false as is_json, null::varchar as meta,
                  case when bool_or(error_type::varchar ilike '%unicode%' or error_type::varchar ilike '%encoding%')
                       then 'invalid_utf8' else 'malformed_csv' end as reason,
                  string_agg(distinct error_message, '; ')::varchar as detail, null::varchar as source
           from _csv_rejects
           group by line
           order by line"""
    ).to_arrow_table()
    good, bad = _csv_physical_lines(path, good, bad, header=header, data=data)
    return pa.concat_tables([good, bad.cast(good.schema)])


def _csv_layout(
    cfg: IngestConfig,
    names: list[str],
    types: list[str],
    sniffed_header: bool | None,
    data: bytes,
    delim: str,
) -> tuple[bool, list[str] | None, str | None]:
    """(whether the first row is a header, the leading column names of a header-less read with the text
    column renamed to the text field, the csv_no_header detail when the file cannot be read as either).

    `names`/`types`: the sniffer's columns (the first row's values where it took that row for a header);
    `sniffed_header`: DuckDB's verdict (None: the sniffer failed, `names` are the first record's).

    With `csv_header` unset (auto): a first row holding the text or prompt field's name is a header;
    a first row the sniffer tells apart from the data (typed columns: numbers under a name) is a header
    only then, and data where it matches the columns' types. An all-text file whose first row names
    neither field is ambiguous (a header with other names, or a first record): every record is
    quarantined as csv_no_header rather than the first one silently taken for column names or a header
    guessed into a document. Without a header the text is the column the text field names (`column1`),
    else the only column, else the text column with the longest values.
    """
    fields = (cfg.text_field, cfg.prompt_field)
    if cfg.csv_header is True:
        return True, None, None
    if cfg.csv_header is None and sniffed_header is not False:
        if any(f in names for f in fields):
            return True, None, None
        shown = ", ".join(repr(n[:40]) for n in names[:6]) + (", ..." if len(names) > 6 else "")
        return (
            False,
            None,
            (
                f"no column named {cfg.text_field!r} or {cfg.prompt_field!r} in the first row ({shown}), and "
                "nothing tells whether that row is a header: if it is, name its text column (--text-field); "
                "if the file has no header row, read it without one (--no-csv-header)"
            ),
        )
    default = [f"column{i}" for i in range(len(names))]
    if any(f in default for f in fields) or not default:
        return False, None, None
    k = 0 if len(default) == 1 else _longest_text_column(data, delim, types)
    return False, default[:k] + [cfg.text_field], None


def _longest_text_column(data: bytes, delim: str, types: list[str]) -> int:
    """The text (VARCHAR) column with the most characters per row over the file's first MB (0 if none)."""
    import csv
    import io

    head = data[3:] if data.startswith(BOM) else data
    rows = csv.reader(io.StringIO(head[: 1 << 20].decode("utf-8", "replace"), newline=""), delimiter=delim)
    chars = [0] * len(types)
    for row in rows:
        for i, v in enumerate(row[: len(types)]):
            chars[i] += len(v)
    text = [i for i, t in enumerate(types) if t == "VARCHAR"] or list(range(len(types)))
    return max(text, key=lambda i: (chars[i], -i))


_CSV_DELIMS = (",", ";", "\t", "|")  # DuckDB's sniffer's candidates


def _csv_dialect_fallback(data: bytes, *, header: bool) -> tuple[str, dict[str, str]]:
    """(delimiter, {column: 'VARCHAR'}) from the first record: the candidate delimiter met most often
    outside double quotes on the first line (',' on a tie), and the header's names (made unique and
    non-empty as DuckDB makes them: `a`, `a_1`, `column2`), or column0.. without a header."""
    import csv
    import io

    head = data[3:] if data.startswith(BOM) else data
    first_line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    outside = "".join(first_line.split('"')[::2])
    delim = max(_CSV_DELIMS, key=lambda c: (outside.count(c), c == ","))
    text = head[: 1 << 20].decode("utf-8", "replace")
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delim, quotechar='"'), [])
    if not header:
        return delim, {f"column{i}": "VARCHAR" for i in range(max(len(first), 1))}
    names: list[str] = []
    for i, name in enumerate(first):
        name = name or f"column{i}"
        base, k = name, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return delim, {n: "VARCHAR" for n in names or ["column0"]}


def _csv_record_lines(path: Path, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(1-based line where each CSV record starts, whether it is blank), for every record of the file in
    order, blank ones included: records end at a newline outside double quotes (a quoted field may hold
    newlines; a doubled quote inside one toggles twice, so the parity of the quotes before a newline
    says whether it is inside a field)."""
    import numpy as np

    if data is None:
        with _open(path) as f:
            data = f.read()
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == 10)
    quotes = np.flatnonzero(a == 34)
    ends = nl[np.searchsorted(quotes, nl) % 2 == 0]  # newlines outside quotes end records
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(a)]))
    if stops[-1] == starts[-1]:  # the file ends with a newline: no record after it
        starts, stops = starts[:-1], stops[:-1]
    lines = np.searchsorted(nl, starts) + 1  # newlines before a record's start, plus one
    if len(data) and data.startswith(BOM):
        starts[0] += 3
    n = stops - starts
    blank = (n == 0) | ((n == 1) & (a[np.minimum(starts, max(len(a) - 1, 0))] == 13))
    return lines, blank


def _csv_physical_lines(
    path: Path, good: pa.Table, bad: pa.Table, *, header: bool, data: bytes | None = None
) -> tuple[pa.Table, pa.Table]:
    """Good CSV rows get the line where they start; quarantined ones the line instead of DuckDB's row count.

    DuckDB's reader numbers rows (header and blank rows included) and reports that number as the
    `line` of a rejected row; a quoted field spanning lines makes it differ from the line in the file.
    The records found by `_csv_record_lines` map both: DuckDB row r is record r, and the good rows are
    the records that are neither the header, blank nor rejected, in order. Where the counts disagree
    (a dialect the quote scan does not model: another quote character, a backslash escape before a
    newline, lone \r line ends), the lines are left as DuckDB gave them: null rather than wrong.
    """
    import numpy as np
    import pyarrow as pa

    lines, blank = _csv_record_lines(path, data)
    given = bad.column("line").to_pylist()
    if None in given:
        return good, bad
    rejected = np.asarray(given, dtype=np.int64) - 1
    if len(rejected) and (rejected.min() < 0 or rejected.max() >= len(lines)):
        return good, bad
    keep = ~blank
    keep[rejected] = False
    if header:
        first = np.flatnonzero(~blank)
        if len(first):
            keep[first[0]] = False
    good_lines = lines[keep]
    if len(good_lines) != good.num_rows:
        return good, bad
    # by record number (the good rows' ordinal in the file), not by position: the table's row order is not
    # promised with preserve_insertion_order = false
    record = np.asarray(good.column("record").to_numpy(zero_copy_only=False), dtype=np.int64)
    line = good_lines[record - 1]
    good = good.set_column(good.schema.get_field_index("line"), "line", pa.array(line, pa.int64()))
    bad = bad.set_column(bad.schema.get_field_index("line"), "line", pa.array(lines[rejected], pa.int64()))
    return good, bad
