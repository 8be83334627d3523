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
   `read_blob`, `query`, ...) and tables other than the ones it may read;
2. connection: `lock_down` turns off file system access (`enable_external_access=false`;
   `allowed_directories` keeps the data directory readable where it must be) and extension
   loading, then locks the configuration so no later `SET` can undo it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# Settings given when the connection is made: never fetch or load an extension behind the
# user's back (no network at run time; a loaded extension could bring file or network access).
NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def lock_down(con: duckdb.DuckDBPyConnection, *, allowed_directories: Iterable[str] = ()) -> None:
    """Make `con` unable to read or write files outside `allowed_directories`, to install or
    load extensions, or to change any setting afterwards.

    DuckDB refuses `allowed_directories` once external access is off, so the order of the
    three statements matters. Each directory gets a trailing separator: `/data/x` would
    otherwise also admit `/data/xy`.
    """
    dirs = [d if d.endswith("/") else d + "/" for d in map(str, allowed_directories)]
    if con.execute("select current_setting('lock_configuration')").fetchall()[0][0]:
        # Settings belong to the database instance, which connections to one file share within
        # a process: an earlier lock-down of the same file is this one, if it allowed as little.
        external, allowed = con.execute(
            "select current_setting('enable_external_access'), current_setting('allowed_directories')"
        ).fetchall()[0]
        if external or not set(dirs) <= set(allowed or []):
            raise RuntimeError("this database's configuration was locked with other settings in this process")
        return
    if dirs:
        con.execute("set allowed_directories = $dirs", {"dirs": dirs})
    # Set on the connection, not in duckdb.connect's config: a process may hold other
    # connections to the same file, and DuckDB refuses a second one with a different config.
    con.execute("set autoload_known_extensions = false")
    con.execute("set autoinstall_known_extensions = false")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")


def sandbox() -> duckdb.DuckDBPyConnection:
    """A private in-memory connection with no file, extension or setting access (`lock_down`).
    Data gets in through `con.register` (Arrow tables), which needs no file access."""
    import duckdb

    con = duckdb.connect(config=dict(NO_EXTENSIONS))
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
    expressions), a table function anywhere inside (subqueries included), and a table not in
    `tables` (a subquery over `rollouts` is allowed when `tables` names it; a file path as a
    table name is not).
    """
    import duckdb

    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"{what} must be a non-empty SQL expression string, got {expression!r}")
    try:
        parsed = duckdb.SQLExpression(expression)
    except duckdb.Error as e:
        raise ValueError(f"{what} {expression!r} is not one SQL expression: {_first_line(e)}") from None
    allowed = {t.lower() for t in tables}
    for kind, name in _table_refs(_parse_tree(expression, what)):
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


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
