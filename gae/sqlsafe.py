"""DuckDB connections that cannot reach past what they are for, and SQL expressions that
stay expressions.

Two places run SQL a user wrote: the `sql` reward component (an expression from a run's
config, which any YAML file, `--set` or deployment parameter can set) and `gae sql` /
`gae query`. Neither may touch the rest of the machine (issue 12: an expression that
closed the reward's query and appended `COPY (SELECT content FROM read_text('/etc/passwd'))
TO '...'` wrote that file). Two layers, each enough on its own for the forms known today:

1. text: `parse_expression` accepts exactly one expression (DuckDB's own expression parser,
   which refuses `;`, FROM, WHERE, set operations and modifiers) and walks its parse tree
   (`json_serialize_sql`) to refuse table functions (`read_text`, `read_csv`, `glob`,
   `read_blob`, `query`, ...), tables other than the ones it may read, and the scalar
   functions whose result size an argument sets (`UNBOUNDED_FUNCTIONS`: `range(0, 3e9)`);
2. connection: `lock_down` turns off file system access (`enable_external_access=false`;
   `allowed_directories` keeps the data directory readable where it must be) and extension
   loading, then locks the configuration so no later `SET` can undo it. Settings belong to
   a DuckDB instance, shared by the connections to one file in a process, so what is locked
   down is always a private instance: `sandbox` (with a memory limit and thread count) and
   `gae.db.connect(confine=True)` (the database file attached to its own in-memory instance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# Settings given when the connection is made: never fetch or load an extension behind the
# user's back (no network at run time; a loaded extension could bring file or network access).
NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}

MEMORY_LIMIT_ENV = "GAE_SQL_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "1GB"

# Scalar functions whose result size is set by the value of an argument rather than by the
# size of their inputs (`range(0, 3e9)` is a 24 GB list, `repeat(x, n)`, `lpad(x, n)`,
# `printf('%<n>d', ...)`, a `list_reduce` doubling its accumulator). DuckDB's memory_limit
# bounds its buffer manager (joins, sorts, aggregates, `list()`), not the vectors a scalar
# function returns: on DuckDB 2.0 `len(range(0, 3e7))` under memory_limit='50MB' took 1.9 GB,
# and `len(range(0, 3e9))` would take the process down. An expression may not call them.
UNBOUNDED_FUNCTIONS = frozenset(
    {
        "range", "generate_series", "repeat", "lpad", "rpad", "printf", "format",
        "list_resize", "array_resize", "list_reduce", "array_reduce", "reduce",
    }
)  # fmt: skip


def lock_down(con: duckdb.DuckDBPyConnection, *, allowed_directories: Iterable[str] = ()) -> None:
    """Make `con` unable to read or write files outside `allowed_directories`, to install or
    load extensions, or to change any setting afterwards.

    DuckDB refuses `allowed_directories` once external access is off, so the order of the
    three statements matters. Each directory gets a trailing separator: `/data/x` would
    otherwise also admit `/data/xy`.
    """
    dirs = [d if d.endswith("/") else d + "/" for d in map(str, allowed_directories)]
    if dirs:
        con.execute("set allowed_directories = $dirs", {"dirs": dirs})
    con.execute("set autoload_known_extensions = false")
    con.execute("set autoinstall_known_extensions = false")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")


def sandbox(*, memory_limit: str | None = None, threads: int = 1) -> duckdb.DuckDBPyConnection:
    """A private in-memory connection with no file, extension or setting access (`lock_down`).
    Data gets in through `con.register` (Arrow tables), which needs no file access.

    `memory_limit` (DuckDB's form, e.g. "1GB"; default `$GAE_SQL_MEMORY_LIMIT` or 1GB) and
    `threads` bound what a query may take from the process that runs it: a join, sort or
    aggregate past the limit fails with DuckDB's out-of-memory error instead of growing
    without end. They are given when the instance is made, so `lock_down` fixes them too.
    The limit covers DuckDB's buffer manager, not the vectors a scalar function returns
    (`UNBOUNDED_FUNCTIONS` are refused for that reason by `parse_expression`).
    """
    import duckdb

    limit = memory_limit or os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT
    config = {**NO_EXTENSIONS, "memory_limit": str(limit), "threads": int(threads)}
    try:
        con = duckdb.connect(config=config)
    except duckdb.Error as e:
        raise ValueError(f"sandbox: memory_limit {limit!r} / threads {threads!r}: {_first_line(e)}") from None
    try:
        lock_down(con)
    except BaseException:
        con.close()
        raise
    return con


def parse_expression(expression: object, *, tables: Iterable[str] = (), what: str = "expression"):
    """Parse one SQL expression and return it as a `duckdb.Expression` (for the relational API,
    so the text is never pasted into a statement).

    Refused with a ValueError that starts with `what` and quotes the expression: anything but
    one expression (a `;`, a second statement, a FROM or WHERE clause, two comma-separated
    expressions), a table function anywhere inside (subqueries included), a call of one of
    `UNBOUNDED_FUNCTIONS`, and a table not in `tables` (a subquery over `rollouts` is allowed
    when `tables` names it; a file path as a table name is not).
    """
    import duckdb

    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"{what} must be a non-empty SQL expression string, got {expression!r}")
    try:
        parsed = duckdb.SQLExpression(expression)
    except duckdb.Error as e:
        raise ValueError(f"{what} {expression!r} is not one SQL expression: {_first_line(e)}") from None
    allowed = {t.lower() for t in tables}
    tree = _parse_tree(expression, what)
    for name in _function_names(tree):
        if name in UNBOUNDED_FUNCTIONS:
            raise ValueError(
                f"{what} {expression!r} calls {name}(), whose result size is set by an argument's value: "
                "an expression may not call range, generate_series, repeat, lpad, rpad, printf, format, "
                "list_resize or list_reduce (no memory limit bounds them)"
            )
    for kind, name in _table_refs(tree):
        if kind == "TABLE_FUNCTION":
            raise ValueError(
                f"{what} {expression!r} calls the table function {name}(): an expression may not read files "
                "or call table functions"
            )
        if name.lower() not in allowed:
            may = f"only {', '.join(sorted(allowed))}" if allowed else "no table"
            raise ValueError(f"{what} {expression!r} reads the table {name!r}: it may read {may}")
    return parsed


def _parse_tree(expression: str, what: str) -> dict:
    """DuckDB's parse tree of `select <expression>` (parsed, never run)."""
    import duckdb

    con = duckdb.connect(config=dict(NO_EXTENSIONS))
    try:
        lock_down(con)
        (text,) = con.execute("select json_serialize_sql($q)", {"q": "select " + expression}).fetchone()
    finally:
        con.close()
    tree = json.loads(text)
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    if tree.get("error") or node.get("type") != "SELECT_NODE" or len(node.get("select_list", [])) != 1:
        # SQLExpression accepted it, so this is a form the serializer sees differently: refuse it.
        raise ValueError(f"{what} {expression!r} is not one SQL expression")
    return tree


def tables_read(sql: str) -> set[str] | None:
    """The lower-case names of the tables and views the statements of `sql` read (the last part
    of a qualified name; CTE names included), from DuckDB's parse tree; None when DuckDB cannot
    serialize it (a statement that is not a query)."""
    import duckdb

    con = duckdb.connect(config=dict(NO_EXTENSIONS))
    try:
        lock_down(con)
        (text,) = con.execute("select json_serialize_sql($q)", {"q": sql}).fetchall()[0]
    except duckdb.Error:
        return None
    finally:
        con.close()
    tree = json.loads(text)
    if tree.get("error"):
        return None
    return {name.rsplit(".", 1)[-1].lower() for kind, name in _table_refs(tree) if kind == "BASE_TABLE"}


def _table_refs(node: object) -> Iterator[tuple[str, str]]:
    """(kind, name) of every table reference in a serialized parse tree, however deep.

    Table references are the dicts with a `type` and no `class` (expressions have a class);
    kinds that name something: BASE_TABLE (a table, view, CTE or replacement-scanned file
    path) and TABLE_FUNCTION (read_text, glob, range, query, ...).
    """
    if isinstance(node, dict):
        kind = node.get("type")
        if "class" not in node and kind == "BASE_TABLE":
            parts = [
                node.get("catalog_name") or "",
                node.get("schema_name") or "",
                node.get("table_name") or "",
            ]
            yield kind, ".".join(p for p in parts if p)
        elif "class" not in node and kind == "TABLE_FUNCTION":
            yield kind, (node.get("function") or {}).get("function_name", "?")
        for v in node.values():
            yield from _table_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _table_refs(v)


def _function_names(node: object) -> Iterator[str]:
    """The lower-case name of every function call in a serialized parse tree, however deep."""
    if isinstance(node, dict):
        if node.get("class") == "FUNCTION" and isinstance(node.get("function_name"), str):
            yield node["function_name"].lower()
        for v in node.values():
            yield from _function_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from _function_names(v)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
