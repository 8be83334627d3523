"""The project's DuckDB database: connections, schema migrations, named SQL.

One file per data directory (`<data-dir>/gae.duckdb`). DuckDB 2.0 lets one process hold
a read-write connection and then no other process can open the file at all, so a held
lock is turned into a clear RuntimeError naming the file and the holder (the data
directory's writer lock, `gae.lock`, says which run it is).

SQL lives in `sql/`: `sql/schema/NNN_name.sql` are applied in order by `migrate` and
recorded in `schema_migrations`; `sql/queries/<name>.sql` are named queries whose first
line is `-- one-line description`, an optional second line `-- params: k=v, ...` gives
defaults, and values are bound as `$name`, never formatted in.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gae.paths import DataDir

if TYPE_CHECKING:
    import duckdb

# The repository's sql/ folder (an editable install, the way the project is run); GAE_SQL_DIR overrides.
SQL_DIR = Path(os.environ.get("GAE_SQL_DIR") or Path(__file__).resolve().parent.parent / "sql")

_PARAM_RE = re.compile(r"(?<![\w$])\$([A-Za-z_]\w*)")
_LOCK_RE = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def _as_data_dir(data_dir: DataDir | str | os.PathLike | None) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)


def connect(
    data_dir: DataDir | str | os.PathLike | None = None,
    *,
    read_only: bool = False,
    views: bool = True,
    confine: bool = False,
    upgrade: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open `<data-dir>/gae.duckdb`.

    Read-write connections create the file and apply pending migrations. Read-only ones
    need an existing database (FileNotFoundError otherwise) and refuse every write. Both
    get the TEMP views over Parquet from `gae.store_views.register_views`
    (views=False skips them: ingest never reads Parquet, and gae.store imports torch).
    confine=True (what `gae sql` and `gae query` use) leaves the connection able to read
    files under the data directory only, with no extensions and no setting changes
    (`gae.sqlsafe.lock_down`); the store views read Parquet there, so they keep working. The
    confined connection is a private in-memory instance with the file attached, so other
    connections to the same file in the process keep their settings.

    A read-only connection to a database written by an older gaeflow (pending migrations)
    applies them first through a short read-write connection, as every writer does, so that
    `gae query` after an upgrade finds the new tables; upgrade=False (what `gae doctor` uses to
    report the state) opens it as it is.
    """
    import duckdb

    dd = _as_data_dir(data_dir)
    path = dd.db
    if read_only and not path.exists():
        raise FileNotFoundError(f"no database at {path}: run `gae ingest` first (or pass --data-dir)")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    # No network at run time: never fetch an extension behind the user's back.
    config = {"autoinstall_known_extensions": False}
    try:
        if confine:
            con = _attach_private(path, read_only=read_only)
        else:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.Error as exc:
        msg = str(exc)
        if "Could not set lock" in msg or "Conflicting lock" in msg:
            raise RuntimeError(_lock_message(dd, msg)) from None
        if "Permission denied" in msg:
            raise PermissionError(
                errno.EACCES, f"permission denied opening the database {path}", str(path)
            ) from None
        if path.is_file() and isinstance(exc, duckdb.IOException | duckdb.SerializationException):
            raise UnreadableDatabase(path, msg) from None
        raise
    try:
        if not read_only:
            migrate(con)
        elif upgrade and _behind(con):
            con.close()
            _upgrade(dd)
            return connect(dd, read_only=True, views=views, confine=confine, upgrade=False)
        if views:
            _register_store_views(con, dd)
        if confine:
            from gae.sqlsafe import lock_down

            lock_down(con, allowed_directories=[str(dd.root)])
    except BaseException:
        con.close()
        raise
    return con


def _behind(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the schema lacks migrations this code has (an empty or pre-migration file too)."""
    import duckdb

    try:
        have = {v for (v,) in con.execute("select version from schema_migrations").fetchall()}
    except duckdb.CatalogException:
        return True
    return not {v for v, _, _ in schema_files()} <= have


def _upgrade(dd: DataDir) -> None:
    """Apply the pending migrations of a database found behind by a read-only connection."""
    import duckdb

    want = max(v for v, _, _ in schema_files())
    try:
        con = duckdb.connect(str(dd.db), config={"autoinstall_known_extensions": False})
    except duckdb.Error as exc:
        msg = str(exc)
        if "Could not set lock" in msg or "Conflicting lock" in msg:
            why = _lock_message(dd, msg)
        elif "Permission denied" in msg or "read-only" in msg.lower():
            why = "the file cannot be written here (permission denied)"
        else:
            why = " ".join(msg.split())
        raise RuntimeError(
            f"the database {dd.db} was written by an older gaeflow and needs its schema upgraded to "
            f"version {want}, which cannot be done now: {why}; then run `gae doctor --fix`"
        ) from None
    try:
        migrate(con)
    finally:
        con.close()


def _attach_private(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection of its own in-memory DuckDB instance with the database file attached as
    `gae` (the name `duckdb.connect` gives it) and made the default.

    Settings belong to a database instance, and connections to one file within a process share
    theirs: locking down such a connection would also lock every other connection to the file
    in the process (a flow's tasks, a test). A private instance is locked alone."""
    import duckdb

    from gae.sqlsafe import NO_EXTENSIONS

    con = duckdb.connect(":memory:", config=dict(NO_EXTENSIONS))
    try:
        con.execute("attach $path as gae" + (" (read_only)" if read_only else ""), {"path": str(path)})
        con.execute("use gae")
    except BaseException:
        con.close()
        raise
    return con


class UnreadableDatabase(RuntimeError):
    """gae.duckdb exists but DuckDB cannot open it (truncated, emptied, overwritten)."""

    def __init__(self, path: Path, detail: str):
        self.path, self.detail = path, " ".join(detail.split())
        super().__init__(
            f"the database {path} cannot be opened ({self.detail}); `gae doctor --fix` moves it to "
            "quarantine/, then `gae ingest` or `gae run` rebuilds it from your corpus (the Parquet store, "
            "models, runs and MLflow are separate files and stay)"
        )


def _lock_message(dd: DataDir, duckdb_msg: str) -> str:
    m = _LOCK_RE.search(duckdb_msg)
    who = f"process {m.group(2)} ({m.group(1)})" if m else "another process"
    held = ""
    try:
        from gae.lock import describe_holder, read_holder

        holder = read_holder(dd.lock)
        if holder:
            held = f"; the data directory's writer lock is held by {describe_holder(holder)}"
    except ModuleNotFoundError:
        pass
    return (
        f"the database {dd.db} is locked by {who}, which has it open for writing (a running flow or "
        f"`gae ingest`){held}. DuckDB lets no other process open it meanwhile: wait for it to finish, "
        "then retry"
    )


def register_store_views(
    con: duckdb.DuckDBPyConnection, data_dir: DataDir | str | os.PathLike | None
) -> None:
    """The TEMP views over Parquet (`gae.store_views.register_views`)."""
    _register_store_views(con, _as_data_dir(data_dir))


def _register_store_views(con: duckdb.DuckDBPyConnection, dd: DataDir) -> None:
    from gae.store_views import register_views

    # TEMP views: DuckDB allows creating them on read-only connections (persistent views would be refused).
    register_views(con, dd)


# ---------------------------------------------------------------- migrations


def schema_files() -> list[tuple[int, str, Path]]:
    """(version, name, path) of sql/schema/NNN_name.sql, in version order."""
    out = []
    for p in sorted((SQL_DIR / "schema").glob("*.sql")):
        head, _, rest = p.stem.partition("_")
        if not head.isdigit():
            raise ValueError(f"{p}: schema files are named NNN_purpose.sql")
        out.append((int(head), rest, p))
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate schema versions in {SQL_DIR / 'schema'}: {versions}")
    return out


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the schema files not yet recorded in `schema_migrations`; return the versions applied.

    Each file runs in its own transaction together with its bookkeeping row, so a failed
    migration leaves the database at the previous version.
    """
    files = schema_files()
    bootstrap = [f for f in files if f[0] == 0]
    for _, _, p in bootstrap:  # creates schema_migrations itself; idempotent by construction
        con.execute(p.read_text())
    done = {v for (v,) in con.execute("select version from schema_migrations").fetchall()}
    applied = []
    for version, name, p in files:
        if version in done:
            continue
        con.execute("begin transaction")
        try:
            con.execute(p.read_text())
            con.execute(
                "insert into schema_migrations (version, name) values ($v, $n)", {"v": version, "n": name}
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        applied.append(version)
    return applied


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("select coalesce(max(version), -1) from schema_migrations").fetchall()[0][0]


# ---------------------------------------------------------------- named SQL


def load_sql(name: str) -> str:
    """The text of `sql/<name>.sql`, e.g. load_sql("queries/corpus_summary")."""
    path = (SQL_DIR / f"{name}.sql").resolve()
    if SQL_DIR.resolve() not in path.parents:
        raise ValueError(f"SQL name {name!r} points outside {SQL_DIR}")
    if not path.exists():
        raise FileNotFoundError(f"no SQL file {path}")
    return path.read_text(encoding="utf-8")


def _header(sql: str) -> tuple[str, dict[str, str]]:
    lines = sql.splitlines()
    desc = lines[0][2:].strip() if lines and lines[0].startswith("--") else ""
    defaults: dict[str, str] = {}
    if len(lines) > 1 and lines[1].lstrip("- ").startswith("params:"):
        for item in lines[1].split("params:", 1)[1].split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                defaults[k.strip()] = v.strip()
    return desc, defaults


def list_queries() -> dict[str, str]:
    """Named queries in sql/queries/: name -> one-line description."""
    return {
        p.stem: _header(p.read_text(encoding="utf-8"))[0] for p in sorted((SQL_DIR / "queries").glob("*.sql"))
    }


def query_params(name: str) -> tuple[list[str], dict[str, str]]:
    """The `$name` parameters a named query binds, and the defaults its header gives."""
    sql = load_sql(f"queries/{name}")
    return sql_param_names(sql), _header(sql)[1]


def sql_param_names(sql: str) -> list[str]:
    """The `$name` parameters of a SQL text, in first-use order (comments ignored)."""
    return list(dict.fromkeys(_PARAM_RE.findall(_strip_comments(sql))))


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def coerce_param(value: str) -> object:
    """A `--param k=v` value from the command line: int, float, true/false/null, or the string itself."""
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    digits = value.strip().lstrip("+-")
    if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
        return value  # "007" is an id, not the number 7
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def run_query(
    con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None
) -> duckdb.DuckDBPyRelation:
    """Run sql/queries/<name>.sql with `$name` parameters bound from `params` (header defaults fill gaps)."""
    if name not in list_queries():
        raise ValueError(f"no named query {name!r}; available: {', '.join(list_queries()) or '(none)'}")
    sql = load_sql(f"queries/{name}")
    needed, defaults = query_params(name)
    given = dict(params or {})
    unknown = sorted(set(given) - set(needed))
    if unknown:
        raise ValueError(f"query {name!r} takes parameters {needed or '(none)'}; unknown: {unknown}")
    bound = {
        k: given[k] if k in given else coerce_param(defaults[k])
        for k in needed
        if k in given or k in defaults
    }
    missing = [k for k in needed if k not in bound]
    if missing:
        raise ValueError(f"query {name!r} needs --param for {missing}")
    return con.sql(sql, params=bound or None)


# ---------------------------------------------------------------- corpus access


# Documents of one corpus: those its ingest read, new or already stored (`ingest_documents`);
# a corpus id is that ingest's id (the pipeline's ingest task returns it as `corpus_id`).
_IN_CORPUS = "document_id in (select document_id from ingest_documents where ingest_id = $corpus)"


def fetch_prompts(
    con: duckdb.DuckDBPyConnection,
    *,
    split: str,
    limit: int | None = None,
    seed: int | None = None,
    corpus: str | None = None,
) -> list[dict]:
    """Prompts of a split as dicts (prompt_id, prompt, reference), ordered by id, or a seeded
    sample; with `corpus` (an ingest id, the ingest task's `corpus_id`) only that corpus's prompts."""
    _check_split(split)
    # md5 rather than DuckDB's hash(): stable across DuckDB versions, so a seed means the same sample.
    order = "prompt_id" if seed is None else "md5(prompt_id || ':' || $seed), prompt_id"
    # The ids are picked from prompt_spans before the view resolves any text: the view joins
    # documents and cuts substrings, which for a whole split costs seconds on a large corpus.
    scope = f" and {_IN_CORPUS}" if corpus is not None else ""
    pick = f"select prompt_id from prompt_spans where split = $split{scope} order by {order}"
    params: dict = {"split": split}
    if corpus is not None:
        params["corpus"] = corpus
    if seed is not None:
        params["seed"] = str(int(seed))
    if limit is not None:
        pick += " limit $limit"
        params["limit"] = int(limit)
    sql = f"select prompt_id, prompt, reference from prompts where prompt_id in ({pick}) order by {order}"
    rows = con.execute(sql, params).fetchall()
    return [{"prompt_id": r[0], "prompt": r[1], "reference": r[2]} for r in rows]


def corpus_texts(con: duckdb.DuckDBPyConnection, *, split: str, corpus: str | None = None) -> list[str]:
    """Document texts of a split, in document id order (a hash, so sources are interleaved);
    with `corpus` only that corpus's documents."""
    _check_split(split)
    scope = f" and {_IN_CORPUS}" if corpus is not None else ""
    params = {"split": split, **({"corpus": corpus} if corpus is not None else {})}
    rows = con.execute(f"select text from documents where split = $split{scope} order by document_id", params)
    return [r[0] for r in rows.fetchall()]


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
