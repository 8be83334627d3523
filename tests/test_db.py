"""gae.db: migrations, read-only connections, the held-lock message, named queries, prompt access.

Real DuckDB files in tmp_path; one subprocess holds the write lock. Runtime ~8 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import duckdb
import pytest

from gae import db
from gae.ingest import IngestConfig, ingest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    f = d / "c.jsonl"
    lines = [{"text": f"Document number {i} is here. It has a second sentence too."} for i in range(40)]
    lines.append({"prompt": "Name a colour.", "reference": "Blue."})
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ingest([f], data_dir=d, options=IngestConfig(eval_fraction=0.25))
    return d


def test_migrations_recorded_once(tmp_path):
    con = db.connect(tmp_path)
    try:
        versions = [
            v for (v,) in con.execute("select version from schema_migrations order by version").fetchall()
        ]
        assert versions == [v for v, _, _ in db.schema_files() if v != 0] or versions == [
            v for v, _, _ in db.schema_files()
        ]
        assert db.schema_version(con) == max(v for v, _, _ in db.schema_files())
        assert db.migrate(con) == []  # already applied
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        assert {"documents", "ingest_errors", "prompts", "schema_migrations"} <= tables
    finally:
        con.close()


def test_read_only_needs_a_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="gae ingest"):
        db.connect(tmp_path / "empty", read_only=True)


def test_read_only_refuses_writes_and_allows_temp_views(data_dir):
    con = db.connect(data_dir, read_only=True)
    try:
        before = con.execute("select count(*) from documents").fetchall()[0][0]
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("delete from documents")
        # temp objects are per connection and allowed read-only: gae.store's Parquet views rely on it
        con.execute("create temp view v as select count(*) as n from documents")
        assert con.execute("select n from v").fetchall()[0][0] == before
        assert con.execute("select count(*) from documents").fetchall()[0][0] == before
    finally:
        con.close()


def test_held_write_lock_is_a_clear_error(data_dir):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import duckdb, sys, time
                con = duckdb.connect({str(data_dir / "gae.duckdb")!r})
                print("ready", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RuntimeError, match=rf"locked by process {holder.pid}.*open for writing") as err:
            db.connect(data_dir, read_only=True)
        assert str(data_dir / "gae.duckdb") in str(err.value)
    finally:
        holder.communicate("", timeout=30)


def test_named_queries_listed_and_bound(data_dir):
    queries = db.list_queries()
    for name in ("corpus_summary", "ingest_errors_by_reason", "prompts_by_split", "ingests", "check_corpus"):
        assert queries[name]  # a one-line description
    con = db.connect(data_dir, read_only=True)
    try:
        # every corpus query runs with its defaults
        got = {q: db.run_query(con, q).fetchall() for q in ("corpus_summary", "ingests", "check_corpus")}
        assert sum(r[2] for r in got["corpus_summary"]) == 41 and len(got["ingests"]) == 1
        assert got["check_corpus"] == [] and db.run_query(con, "ingest_errors_by_reason").fetchall() == []
        rows = db.run_query(con, "prompts_by_split", {"split": "train", "limit": 3}).fetchall()
        assert 1 <= len(rows) <= 3
        assert db.run_query(con, "corpus_summary").fetchall()
        with pytest.raises(ValueError, match="unknown"):
            db.run_query(con, "prompts_by_split", {"nope": 1})
        with pytest.raises(ValueError, match="no named query"):
            db.run_query(con, "does_not_exist")
    finally:
        con.close()


def test_required_params_and_sql_names(tmp_path, monkeypatch):
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "need.sql").write_text("-- needs x\nselect $x::int + 1 as y\n")
    monkeypatch.setattr(db, "SQL_DIR", tmp_path)
    con = duckdb.connect()
    try:
        with pytest.raises(ValueError, match=r"needs --param for \['x'\]"):
            db.run_query(con, "need", {})
        assert db.run_query(con, "need", {"x": 41}).fetchall() == [(42,)]
    finally:
        con.close()
    with pytest.raises(ValueError, match="outside"):
        db.load_sql("../../etc/passwd")


def test_coerce_param():
    assert [db.coerce_param(v) for v in ("3", "2.5", "true", "null", "abc")] == [3, 2.5, True, None, "abc"]
    # Leading zeros mark an id (a run id "007"), not a number.
    assert [db.coerce_param(v) for v in ("007", "00", "0", "-4")] == ["007", "00", 0, -4]


def test_fetch_prompts_and_corpus_texts(data_dir):
    con = db.connect(data_dir, read_only=True)
    try:
        train = db.fetch_prompts(con, split="train")
        ev = db.fetch_prompts(con, split="eval")
        assert train and ev and not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in ev}
        assert [p["prompt_id"] for p in train] == sorted(p["prompt_id"] for p in train)
        assert set(train[0]) == {"prompt_id", "prompt", "reference"}
        assert db.fetch_prompts(con, split="train", limit=2) == train[:2]
        a = db.fetch_prompts(con, split="train", seed=1)
        assert a == db.fetch_prompts(con, split="train", seed=1)  # a seed is a fixed sample
        assert a != train and sorted(a, key=lambda p: p["prompt_id"]) == train  # a permutation
        n_train, n_eval = (
            con.execute("select count(*) from documents where split = $s", {"s": s}).fetchall()[0][0]
            for s in ("train", "eval")
        )
        assert (
            len(db.corpus_texts(con, split="train")) == n_train
            and len(db.corpus_texts(con, split="eval")) == n_eval
        )
        assert n_train + n_eval == 41
        with pytest.raises(ValueError, match="split"):
            db.corpus_texts(con, split="test")
    finally:
        con.close()


def test_store_views_on_read_only_connection(data_dir):
    pytest.importorskip("gae.store")
    con = db.connect(data_dir, read_only=True)
    try:
        temp_views = {
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where temporary and not internal"
            ).fetchall()
        }
        assert {"tokens", "rollouts"} <= temp_views
        assert con.execute("select count(*) from tokens").fetchall() == [(0,)]  # no run stored yet
    finally:
        con.close()
    con = db.connect(data_dir, read_only=True, views=False)
    try:
        assert not con.execute(
            "select view_name from duckdb_views() where temporary and not internal"
        ).fetchall()
    finally:
        con.close()


def test_read_only_upgrades_a_database_from_an_older_gaeflow(tmp_path, monkeypatch):
    """`gae query ingests` on a database made before the ingests table existed: the read-only
    connection applies the pending migration first (as every writer does) instead of failing
    with DuckDB's 'Table ingests does not exist'."""
    import shutil

    from typer.testing import CliRunner

    from gae.cli import _register_all, app

    older = tmp_path / "sql"
    shutil.copytree(db.SQL_DIR, older)
    ingests = [p for p in (older / "schema").glob("*.sql") if "ingests" in p.name]
    assert ingests, "the schema has a migration creating the ingests table"
    later = [p for p in (older / "schema").glob("*.sql") if p.name >= ingests[0].name]
    for p in later:
        p.unlink()
    with monkeypatch.context() as m:
        m.setattr(db, "SQL_DIR", older)
        db.connect(tmp_path / "data", views=False).close()
    con = duckdb.connect(str(tmp_path / "data" / "gae.duckdb"), read_only=True)
    assert not con.execute(
        "select count(*) from information_schema.tables where table_name = 'ingests'"
    ).fetchall()[0][0]
    con.close()
    _register_all()
    res = CliRunner().invoke(app, ["query", "ingests", "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    con = db.connect(tmp_path / "data", read_only=True, views=False, upgrade=False)
    try:
        assert db.schema_version(con) == max(v for v, _, _ in db.schema_files())
    finally:
        con.close()
