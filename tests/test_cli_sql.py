"""`gae ingest`, `gae sql`, `gae query` as a user runs them. Runtime ~10 s (two subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gae.cli import _register_all, app

_register_all()
runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.jsonl").write_text(
        json.dumps({"text": "First document. It is English."}) + "\n{broken\n"
        + json.dumps({"text": "第二个文档。这是中文。"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    d = tmp_path_factory.mktemp("data")
    res = runner.invoke(app, ["ingest", str(root), "--data-dir", str(d)])
    assert res.exit_code == 0, res.output
    assert "3 records" in res.output and "inserted     2 documents" in res.output
    assert re.search(r"malformed_json +1\b", res.output), res.output
    return d


def gae(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gae.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_sql_formats(data_dir):
    q = "select split, count(*) as n from documents group by all order by split"
    out = runner.invoke(app, ["sql", q, "--data-dir", str(data_dir), "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert sum(r["n"] for r in rows) == 2
    out = runner.invoke(
        app, ["sql", "select text from documents order by text", "--data-dir", str(data_dir), "-f", "csv"]
    )
    assert list(csv.reader(io.StringIO(out.output))) == [
        ["text"],
        ["First document. It is English."],
        ["第二个文档。这是中文。"],
    ]
    out = runner.invoke(app, ["sql", "select count(*) as n from ingest_errors", "--data-dir", str(data_dir)])
    assert out.exit_code == 0 and "1 row" in out.output


def test_query_list_and_params(data_dir):
    out = runner.invoke(app, ["query", "--list"])
    assert out.exit_code == 0 and "corpus_summary" in out.output and "ingest_errors_by_reason" in out.output
    out = runner.invoke(app, ["query", "ingest_errors_by_reason", "--data-dir", str(data_dir), "-f", "json"])
    (row,) = json.loads(out.output)
    assert (row["reason"], row["records"], row["first_line_or_record"]) == ("malformed_json", 1, 2)
    out = runner.invoke(
        app,
        [
            "query",
            "prompts_by_split",
            "--param",
            "split=train",
            "--param",
            "limit=1",
            "--data-dir",
            str(data_dir),
            "-f",
            "json",
        ],
    )
    assert out.exit_code == 0 and len(json.loads(out.output)) <= 1


def test_sql_write_refused_and_nothing_changed(data_dir):
    res = gae("sql", "delete from documents", "--data-dir", str(data_dir))
    assert res.returncode == 1
    assert "read-only" in res.stderr and "nothing was changed" in res.stderr and "Traceback" not in res.stderr
    out = runner.invoke(
        app, ["sql", "select count(*) as n from documents", "--data-dir", str(data_dir), "-f", "json"]
    )
    assert json.loads(out.output) == [{"n": 2}]


@pytest.mark.parametrize(
    "statement",
    [
        "copy (select 1 as x) to '{db}' (format csv)",  # would overwrite the database file
        "explain analyze copy (select 1 as x) to '{db}' (format csv)",  # EXPLAIN ANALYZE runs it
        "select 1; copy (select 1 as x) to '{db}' (format csv)",
        "export database '{dir}/exported'",
        "attach '{dir}/other.duckdb' as o",
        "install httpfs",
        "load json",
        "pragma enable_profiling",
        "set threads = 1",
        "call pragma_version()",
        "create temp table t as select 1",
    ],
)
def test_sql_refuses_statements_that_write_files_or_change_the_session(data_dir, tmp_path, statement):
    db = data_dir / "gae.duckdb"
    before = db.read_bytes()
    q = statement.format(db=db, dir=tmp_path)
    res = runner.invoke(app, ["sql", q, "--data-dir", str(data_dir)])
    assert res.exit_code != 0 and "runs queries only" in str(res.exception), (q, res.output)
    assert db.read_bytes() == before and not list(tmp_path.iterdir())


def test_sql_allows_every_kind_of_query(data_dir):
    for q in (
        "select count(*) from documents",
        "with d as (select * from documents) select count(*) from d",
        "from documents select count(*)",
        "describe documents",
        "show tables",
        "summarize documents",
        "explain select count(*) from documents",
        "explain analyze select count(*) from documents",
        "values (1), (2)",
    ):
        res = runner.invoke(app, ["sql", q, "--data-dir", str(data_dir), "-f", "csv"])
        assert res.exit_code == 0, (q, res.output, res.exception)


def test_ingest_missing_path_exits_nonzero(tmp_path):
    res = gae("ingest", str(tmp_path / "nope.jsonl"), "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 1 and "no such file or directory" in res.stderr and "Traceback" not in res.stderr


def test_query_unknown_name(data_dir):
    res = runner.invoke(app, ["query", "nope", "--data-dir", str(data_dir)])
    assert res.exit_code != 0 and "gae query --list" in str(res.exception)


def test_parquet_views_registered_on_demand(data_dir):
    pytest.importorskip("gae.store")
    out = runner.invoke(
        app, ["sql", "select count(*) as n from tokens", "--data-dir", str(data_dir), "-f", "json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [{"n": 0}]
    out = runner.invoke(app, ["sql", "select * from no_such_table", "--data-dir", str(data_dir)])
    assert "no_such_table does not exist" in str(out.exception)


def test_ingest_default_corpus(tmp_path):
    res = runner.invoke(app, ["ingest", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["inserted"] > 1000 and s["prompts"] > 1000 and s["quarantined"] == 0
    assert s["records"] == s["inserted"] + s["duplicates"]
    assert all(f["source"].startswith("python-stdlib:") for f in s["sources"])


def test_confining_gae_sql_leaves_other_connections_to_the_file_alone(data_dir, tmp_path):
    """DuckDB settings belong to a database instance, which connections to one file share in a
    process: `gae sql` (and `gae query`) must lock down a private instance, not the one another
    connection in the process (a flow's task, a test) reads through."""
    from gae.db import connect

    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n2\n")
    read_outside = f"select sum(a) from read_csv('{outside}')"
    other = connect(data_dir, read_only=True, views=False)
    try:
        confined = connect(data_dir, read_only=True, views=False, confine=True)
        try:
            with pytest.raises(Exception, match="file system operations are disabled"):
                confined.sql(read_outside).fetchall()
            assert confined.sql("select count(*) from documents").fetchall() == [(2,)]
            assert confined.sql("select count(*) from gae.main.prompts").fetchall()[0][0] >= 0
        finally:
            confined.close()
        out = runner.invoke(app, ["query", "corpus_summary", "--data-dir", str(data_dir), "-f", "json"])
        assert out.exit_code == 0, out.output
        out = runner.invoke(app, ["sql", read_outside, "--data-dir", str(data_dir)])
        assert "outside the data directory" in str(out.exception)
        # the connection opened before still reads files anywhere and changes its settings
        assert other.sql(read_outside).fetchall() == [(3,)]
        other.execute("set threads = 1")
        assert other.sql("select current_setting('lock_configuration')").fetchall() == [(False,)]
    finally:
        other.close()
    later = connect(data_dir, read_only=True, views=False)
    try:
        assert later.sql(read_outside).fetchall() == [(3,)]
    finally:
        later.close()


def test_table_cells_and_headers_are_shown_as_they_are_not_as_markup(data_dir):
    q = """select '[/x]' as a, '[red]hi[/red]' as "[b]h[/b]", 'a [bold]b' as c"""
    out = runner.invoke(app, ["sql", q, "--data-dir", str(data_dir)])
    assert out.exit_code == 0, (out.output, out.exception)
    for shown in ("[/x]", "[red]hi[/red]", "[b]h[/b]", "a [bold]b"):
        assert shown in out.output, out.output


def test_a_parquet_error_blames_a_store_part_only_when_it_is_about_one(data_dir, tmp_path):
    """A typo in a file name is DuckDB's own line and reads no store part (the store here has a
    broken tokens part that a scan would find); damage is named when the query reads it."""
    import shutil

    from gae.store import write_iteration
    from tests.test_store import make_batch, outputs

    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    for it in (0, 1):
        batch = make_batch(seed=it)
        write_iteration(d, run_id="r", iteration=it, batch=batch, **outputs(batch, seed=it))
    tokens = d / "tokens" / "run_id=r" / "iteration=1" / "part-0.parquet"
    tokens.write_bytes(tokens.read_bytes()[:100])  # the footer is gone
    rollouts = d / "rollouts" / "run_id=r" / "iteration=0" / "part-0.parquet"
    raw = bytearray(rollouts.read_bytes())
    raw[100:1500] = bytes((b * 7 + 3) % 256 for b in raw[100:1500])  # pages, not the footer
    rollouts.write_bytes(bytes(raw))

    def error(query: str) -> str:
        out = runner.invoke(app, ["sql", query, "--data-dir", str(d)])
        assert out.exit_code != 0 and isinstance(out.exception, RuntimeError), out.output
        return str(out.exception)

    msg = error("select * from read_parquet('missing.parquet')")
    assert "missing.parquet" in msg and "store part" not in msg, msg
    msg = error("select * from read_parquet('missing.parquet'")  # a parse error
    assert "store part" not in msg, msg
    # a store part read by its path, a footer DuckDB cannot read
    msg = error(f"select count(*) from read_parquet('{tokens}')")
    assert msg.startswith(f"tokens: the store part {tokens} is unreadable"), msg
    # damage inside a page names no file: the parts of the table the query reads are checked
    msg = error("select * from rollouts")
    assert (
        msg.startswith(f"rollouts: the store part {rollouts} is unreadable") and "gae doctor --fix" in msg
    ), msg
