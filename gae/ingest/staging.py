"""The staging format every reader produces (the columns classify.sql reads), and the file access the
readers share: decompressing opens, peeks, DuckDB rows as JSON text."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gae.ingest.config import BOM

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


def _open(path: Path):
    import pyarrow as pa

    # pyarrow decompresses .gz in C, far faster than Python's gzip module
    return pa.input_stream(str(path), compression="gzip" if path.suffix.lower() == ".gz" else None)


_STAGE_COLS = (
    "line",
    "record",
    "byte_offset",
    "raw",
    "body",
    "is_json",
    "meta",
    "reason",
    "detail",
    "source",
)


def _stage(n: int, **cols) -> pa.Table:
    """An Arrow table with the staging columns classify.sql reads; missing columns are null."""
    import pyarrow as pa

    types = {
        "line": pa.int64(),
        "record": pa.int64(),
        "byte_offset": pa.int64(),
        "raw": pa.large_binary(),
        "body": pa.large_string(),
        "is_json": pa.bool_(),
        "meta": pa.string(),
        "reason": pa.string(),
        "detail": pa.string(),
        "source": pa.string(),  # null: the unit's default source uri
    }
    arrays = []
    for name in _STAGE_COLS:
        v = cols.get(name)
        if v is None:
            arrays.append(pa.nulls(n, types[name]))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        else:
            arrays.append(pa.array(v, types[name]))
    return pa.Table.from_arrays(arrays, names=list(_STAGE_COLS))


def _peek(path: Path, n: int = 1 << 16) -> bytes:
    with _open(path) as f:
        head = f.read(n)
    return head[3:] if head.startswith(BOM) else head


def _is_empty(path: Path) -> bool:
    return not _peek(path, 1 << 12).strip()


def _rows_as_json(con: duckdb.DuckDBPyConnection, source_sql: str, params: dict) -> pa.Table:
    return con.sql(
        f"""select null::bigint as line, row_number() over () as record, null::bigint as byte_offset,
                   null::blob as raw, to_json(t)::varchar as body, true as is_json, null::varchar as meta,
                   null::varchar as reason, null::varchar as detail, null::varchar as source
            from {source_sql} as t""",
        params=params,
    ).to_arrow_table()
