"""`gae sql` (any read-only SQL) and `gae query` (named queries from sql/queries/)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import typer

FORMATS = ("table", "csv", "json")


def _cell(v) -> str:
    """A table cell: floats to 6 significant digits (the store keeps float32, whose full
    repr as a double is noise); csv and json keep every digit."""
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def register(app: typer.Typer) -> None:
    @app.command("sql")
    def sql_cmd(
        query: str = typer.Argument(
            ..., help='SQL to run, e.g. "select split, count(*) from prompts group by all".'
        ),
        data_dir: Path = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
        fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
        max_rows: int = typer.Option(100, help="Rows shown by --format table (csv and json print all)."),
        allow_external: bool = typer.Option(
            False,
            "--allow-external",
            help="Let the query read files outside the data directory (read_csv, read_parquet, glob of "
            "your own files). Off by default: only the data directory is readable.",
        ),
    ) -> None:
        """Run SQL on the project's database through a read-only connection (writes are refused;
        files outside the data directory are unreadable unless --allow-external)."""
        _check_format(fmt)
        from gae.db import connect

        con = connect(data_dir, read_only=True, views=False, confine=not allow_external)
        try:
            check_query_only(con, query, data_dir)
            rel = _with_views(con, data_dir, lambda: con.sql(query), query)
            _print(rel, fmt, max_rows, data_dir, query)
        finally:
            con.close()

    @app.command("query")
    def query_cmd(
        name: str = typer.Argument(None, help="A named query from sql/queries/ (see --list)."),
        param: list[str] = typer.Option(None, "--param", "-p", help="key=value bound as $key; repeatable."),
        list_: bool = typer.Option(False, "--list", help="List the named queries with a description each."),
        data_dir: Path = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
        fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
        max_rows: int = typer.Option(100, help="Rows shown by --format table (csv and json print all)."),
    ) -> None:
        """Run a named query (sql/queries/NAME.sql) read-only, with --param key=value for its $key parameters."""
        from gae.db import coerce_param, connect, list_queries, load_sql, query_params, run_query

        queries = list_queries()
        if list_ or not name:
            width = max((len(n) for n in queries), default=0)
            for n, desc in queries.items():
                needed, defaults = query_params(n)
                ps = " ".join(f"[{k}={defaults[k]}]" if k in defaults else f"{k}=..." for k in needed)
                typer.echo(f"{n:<{width}}  {desc}" + (f"  (params: {ps})" if ps else ""))
            return
        _check_format(fmt)
        params = {}
        for item in param or []:
            if "=" not in item:
                raise ValueError(f"--param {item!r}: expected key=value")
            k, v = item.split("=", 1)
            params[k.strip()] = coerce_param(v)
        if name not in queries:
            raise ValueError(f"no named query {name!r}; `gae query --list` shows them: {', '.join(queries)}")
        con = connect(data_dir, read_only=True, views=False, confine=True)
        try:
            sql = load_sql(f"queries/{name}")
            rel = _with_views(con, data_dir, lambda: run_query(con, name, params), sql)
            _print(rel, fmt, max_rows, data_dir, sql)
        finally:
            con.close()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


_EXPLAIN = re.compile(r"^\s*explain\b(\s+analy[sz]e\b)?(\s*\([^)]*\))?", re.IGNORECASE)


def check_query_only(con, query: str, data_dir=None) -> None:
    """Refuse anything but queries before running it. A read-only connection stops writes to
    the database, not statements that write files or change the session: `COPY ... TO` could
    overwrite gae.duckdb or the Parquet store, `EXPORT DATABASE` writes a folder, `INSTALL`
    downloads, `ATTACH` opens other files. So each statement must be a query (SELECT, WITH,
    FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE) or an EXPLAIN of one (EXPLAIN ANALYZE runs it)."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise _clear(exc, data_dir, query) from None
    for i, st in enumerate(statements, 1):
        kind = st.type
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.sub("", st.query, count=1)
            try:
                kinds = [x.type for x in con.extract_statements(inner)]
            except duckdb.Error:
                kinds = [None]
            ok = bool(kinds) and all(k == duckdb.StatementType.SELECT for k in kinds)
        else:
            ok = kind == duckdb.StatementType.SELECT
        if not ok:
            where = f"statement {i} " if len(statements) > 1 else ""
            raise RuntimeError(
                f"gae sql is read-only and runs queries only (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, "
                f"EXPLAIN of those): {where}is {kind.name}, refused before running; nothing was changed"
            )


def _with_views(con, data_dir, fn, sql: str | None = None):
    """Run without the Parquet views first: registering them imports gae.store, and with it torch
    (seconds). A query that names a table the database lacks (tokens, rollouts) gets them and a retry."""
    import duckdb

    from gae.db import register_store_views

    try:
        return fn()
    except duckdb.CatalogException:
        register_store_views(con, data_dir)
    except duckdb.Error as exc:
        raise _clear(exc, data_dir, sql) from None
    return _guard(fn, data_dir, sql)


def _guard(fn, data_dir=None, sql: str | None = None):
    """Turn DuckDB's errors into one clear line."""
    import duckdb

    try:
        return fn()
    except duckdb.Error as exc:
        raise _clear(exc, data_dir, sql) from None


_NO_ACCESS = re.compile(r'Cannot access (?:file|directory) "([^"]*)" - file system operations are disabled')


# DuckDB's words for a Parquet file it cannot decode. Damage inside a page is reported without
# the file's name ("Parquet file is likely corrupted, ..."); a damaged footer names it.
_PARQUET_DAMAGE = re.compile(r"corrupt|thrift|magic bytes|decompress|parquet file|page header", re.IGNORECASE)
_QUOTED_PARQUET = re.compile(r"""["']([^"']+\.parquet)["']""")


def _clear(exc: Exception, data_dir=None, sql: str | None = None) -> RuntimeError:
    from gae.errors import one_line

    msg = str(exc)
    if "the store part" in msg:  # a view over a broken part (gae.store_views.register_views) says which
        return RuntimeError(one_line(exc).split("Error: ", 1)[-1])
    broken = _broken_store_part(exc, data_dir, sql)
    if broken:
        return RuntimeError(broken)
    denied = _NO_ACCESS.search(msg)
    if denied:
        return RuntimeError(
            f"the query reads {denied.group(1)}, outside the data directory: gae sql reads files under the "
            "data directory only; pass --allow-external to read your own files"
        )
    if "Loading external extensions is disabled" in msg:
        return RuntimeError("gae sql loads no extensions: " + " ".join(msg.split()))
    if "read-only mode" in msg:
        return RuntimeError(
            "gae sql and gae query are read-only: the statement would change the database and was refused, "
            "nothing was changed (data gets in through `gae ingest` and the pipeline)"
        )
    return RuntimeError(one_line(exc))


def _broken_store_part(exc: Exception, data_dir, sql: str | None) -> str | None:
    """The store part a Parquet error is about, with what to do; None when it is not about the
    store. A message naming a file names the part or not (one footer is read for the reason);
    one naming no file (damage inside a page) has the parts of the store tables the query reads
    checked, footers then pages, which the query was reading anyway. A query that reads no
    store table, such as a typo in `read_parquet('missing.parquet')`, reads no part."""
    import duckdb

    from gae.paths import DataDir

    if isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
        return None
    msg = str(exc)
    named = [Path(p) for p in _QUOTED_PARQUET.findall(msg)]
    if not named and not _PARQUET_DAMAGE.search(msg):
        return None
    from gae.store import TABLES
    from gae.store_views import broken_parts, check_part, describe_broken

    dd = DataDir.resolve(data_dir)
    roots = {t: getattr(dd, t).resolve() for t in TABLES}
    for path in named:
        table = next((t for t, root in roots.items() if path.resolve().is_relative_to(root)), None)
        if table is None:
            continue
        reason = check_part(path) or (" ".join(msg.split()) if _PARQUET_DAMAGE.search(msg) else None)
        if reason:
            return describe_broken(table, [(path, reason)])
    if named:
        return None
    from gae.sqlsafe import tables_read

    for table in sorted((tables_read(sql) if sql else None) or set()):
        if table in TABLES:
            bad = broken_parts(dd, table) or broken_parts(dd, table, full=True)
            if bad:
                return describe_broken(table, bad)
    return None


def _print(rel, fmt: str, max_rows: int, data_dir=None, sql: str | None = None) -> None:
    if rel is None:  # a statement without a result (SET, CREATE TEMP ...)
        typer.echo("ok")
        return
    cols = list(rel.columns)
    rows = _guard(rel.fetchall, data_dir, sql)
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        typer.echo(
            json.dumps(
                [dict(zip(cols, r, strict=True)) for r in rows], ensure_ascii=False, indent=2, default=str
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text, not str: rich reads a str as markup, so a value such as '[/x]' would raise and
        # '[red]hi[/red]' would print as `hi`; a Text cell is shown as it is.
        table = Table(show_lines=False)
        for c in cols:
            table.add_column(Text(c))
        for r in rows[:max_rows]:
            table.add_row(*(Text(_cell(v)) for v in r))
        Console().print(table)
        more = f", {max_rows} shown (--max-rows)" if len(rows) > max_rows else ""
        typer.echo(f"{len(rows)} row{'s' if len(rows) != 1 else ''}{more}")
