"""Reading the per-token store: its SQL views, and the checks that name an unreadable part.

`tokens` and `rollouts` are TEMP views over the Parquet globs of `gae.store` (TEMP, so a
read-only connection can create them), typed from the one schema there, and empty typed
relations before the first write. A part DuckDB cannot read never stops a connection from
opening: the view of that table raises one line naming the part and `gae doctor --fix`.
Nothing here imports torch: `gae sql` and `gae query` open views without it.
"""

from __future__ import annotations

from pathlib import Path

from gae.store import PART_FILE, TABLES, _data_dir

__all__ = [
    "broken_parts",
    "check_part",
    "describe_broken",
    "parts",
    "read_file_metadata",
    "register_views",
    "view_sql",
]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def view_sql(table: str, data_dir) -> str:
    """`create or replace temp view <table>` over the Parquet glob, or over an empty typed
    relation built from the schema when no file exists yet."""
    root = getattr(_data_dir(data_dir), table)
    cols = TABLES[table]
    if any(root.glob(f"*/*/{PART_FILE}")):
        glob = str(root / "*" / "*" / "*.parquet")
        hive_types = ", ".join(f"{_sql_str(c.name)}: {_sql_str(c.sql_type)}" for c in cols if c.partition)
        source = (
            f"read_parquet({_sql_str(glob)}, hive_partitioning = true, union_by_name = true, "
            f"hive_types = {{{hive_types}}})"
        )
        # Partition columns first, then the file columns in schema order (reward_<name> last).
        body = f"select run_id, iteration, * exclude (run_id, iteration) from {source}"
    else:
        body = "select " + ", ".join(f"cast(null as {c.sql_type}) as {c.name}" for c in cols) + " where false"
    return f"create or replace temp view {table} as {body}"


def register_views(con, data_dir) -> None:
    """Create TEMP views `tokens` and `rollouts` on a DuckDB connection.

    A part DuckDB cannot read (truncated, overwritten) must not stop the connection from
    opening: a new run reads prompts through it, and one broken file of a finished run
    would block every later run (issue 12). The view of that table then fails when it is
    queried, with one line naming the part and `gae doctor --fix`; the other table, and
    everything else on the connection, work as usual.
    """
    import duckdb

    for table in TABLES:
        try:
            con.execute(view_sql(table, data_dir))
        except duckdb.Error:
            bad = broken_parts(data_dir, table)
            if not bad:
                raise
            con.execute(_broken_view_sql(table, bad))


def parts(data_dir, table: str) -> list[Path]:
    """Every Parquet part of `table` in the store (what the view's glob reads), sorted."""
    return sorted(getattr(_data_dir(data_dir), table).glob("*/*/*.parquet"))


def check_part(path: str | Path, *, full: bool = False) -> str | None:
    """None when the Parquet file at `path` reads, else why not (one line).

    full=False reads the footer (schema and row groups: what a view needs to open, cheap);
    full=True also decodes every page, which finds damage inside the data.
    """
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        if full:
            for _ in f.iter_batches(batch_size=1 << 16):
                pass
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: each means unreadable here
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def broken_parts(data_dir, table: str, *, full: bool = False) -> list[tuple[Path, str]]:
    """(path, reason) of every part of `table` that does not read (see `check_part`)."""
    out = []
    for p in parts(data_dir, table):
        reason = check_part(p, full=full)
        if reason is not None:
            out.append((p, reason))
    return out


def describe_broken(table: str, bad: list[tuple[Path, str]]) -> str:
    path, reason = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (
        f"{table}: the store part {path} is unreadable ({reason}){more}; `gae doctor --fix` moves broken "
        "parts to quarantine/ so the store reads again"
    )


def _broken_view_sql(table: str, bad: list[tuple[Path, str]]) -> str:
    """A view with the table's columns that raises `describe_broken` when it is read."""
    cols = ", ".join(f"cast(null as {c.sql_type}) as {c.name}" for c in TABLES[table])
    return (
        f"create or replace temp view {table} as select {cols} from range(1) "
        f"where error({_sql_str(describe_broken(table, bad))}) is null"
    )


def read_file_metadata(path: str | Path) -> dict[str, str]:
    """The gaeflow.* key-value metadata of one Parquet file."""
    import pyarrow.parquet as pq

    md = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"gaeflow.")}
