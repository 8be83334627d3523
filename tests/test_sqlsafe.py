"""The `sql` reward runs one expression and nothing else (issue 12, item 1): the injection
forms that once wrote files or dropped views are refused with a line naming the component
and the expression, and nothing is written; the sandbox connection itself cannot touch
files, extensions or settings even when handed a whole statement."""

from __future__ import annotations

import duckdb
import pytest

from gae.rewards import REWARDS, RewardConfig, RewardInputs, score_inputs
from gae.sqlsafe import lock_down, parse_expression, sandbox


def inputs() -> RewardInputs:
    return RewardInputs.from_texts(["The end.", "no", "Yes."], ["The end.", None, "x"])


INJECTIONS = [
    # closes the reward's query and appends statements (the form that wrote a file on main)
    "1) from rollouts; copy (select content from read_text('/etc/passwd')) to '{out}'; select (1",
    "1; copy (select content from read_text('/etc/passwd')) to '{out}'",
    "1; drop view rollouts",
    "0 from rollouts; drop view rollouts; select 0",
    # file and table functions inside the expression
    "(select count(*) from read_text('/etc/passwd'))",
    "(select content from read_text('/etc/passwd') limit 1) is not null",
    "(select count(*) from read_csv('/etc/passwd'))",
    "(select count(*) from glob('/etc/*'))",
    "(select count(*) from read_blob('/etc/passwd'))",
    "(select count(*) from '/etc/passwd')",
    "(select count(*) from query('select 1'))",
    "length(response) + (select count(*) from range(3))",
    # statements that are not expressions at all
    "install httpfs",
    "load json",
    "attach '{out}' as o",
    "set enable_external_access = true",
    "copy (select 1) to '{out}'",
    # two expressions, clauses
    "1, 2",
    "1 from read_text('/etc/passwd')",
    "1 where true",
]


@pytest.mark.parametrize("expr", INJECTIONS)
def test_injections_are_refused_and_write_nothing(tmp_path, expr):
    out = tmp_path / "out.csv"
    expression = expr.format(out=out)
    with pytest.raises(ValueError) as info:
        REWARDS["sql"](inputs(), expression=expression)
    msg = str(info.value)
    assert msg.startswith("sql reward: expression") and repr(expression) in msg, msg
    assert "\n" not in msg.strip(), msg  # one line
    assert "Traceback" not in msg, msg
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # The same expression in a run's config is refused when the config is built, naming the component.
    with pytest.raises(ValueError, match=r"components\[0\] sql reward: expression"):
        RewardConfig(components=[{"name": "sql", "options": {"expression": expression}}])
    assert not out.exists()


def test_expressions_over_rollouts_still_work():
    ins = inputs()
    assert REWARDS["sql"](ins, expression="response like '%.'") == [1.0, 0.0, 1.0]
    # a window over the batch and a subquery over rollouts itself stay allowed
    assert REWARDS["sql"](ins, expression="response_length - avg(response_length) over ()") == pytest.approx(
        [2 - 4 / 3, 1 - 4 / 3, 1 - 4 / 3]
    )
    assert REWARDS["sql"](
        ins, expression="response_length = (select max(response_length) from rollouts)"
    ) == [
        1.0,
        0.0,
        0.0,
    ]
    # a comment and a trailing newline do not change the expression
    assert REWARDS["sql"](ins, expression="reference is null -- rows without a reference\n") == [
        0.0,
        1.0,
        0.0,
    ]
    cfg = RewardConfig(
        components=[{"name": "sql", "column": "dot", "options": {"expression": "response like '%.'"}}]
    )
    assert score_inputs(ins, cfg).components["dot"].tolist() == [1.0, 0.0, 1.0]


def test_a_failing_expression_names_the_component_and_expression():
    # an unknown column is refused when the config is built, before a run starts
    with pytest.raises(ValueError, match=r"components\[0\] sql reward: expression 'no_such_column \+ 1'"):
        RewardConfig(components=[{"name": "sql", "options": {"expression": "no_such_column + 1"}}])
    # a value that fails only on real rows fails at scoring, naming the component and the expression
    cfg = RewardConfig(components=[{"name": "sql", "options": {"expression": "cast(response as integer)"}}])
    with pytest.raises(ValueError, match=r"reward components\[0\] 'sql'.*'cast\(response as integer\)'"):
        score_inputs(inputs(), cfg)
    with pytest.raises(ValueError, match="non-empty SQL expression"):
        RewardConfig(components=[{"name": "sql", "options": {}}])


def test_parse_expression_reports_the_table_it_reads():
    with pytest.raises(ValueError, match=r"reads the table 'documents': it may read only rollouts"):
        parse_expression("(select count(*) from documents)", tables=("rollouts",))
    with pytest.raises(ValueError, match=r"table function read_text\(\)"):
        parse_expression("(select 1 from rollouts, read_text('x'))", tables=("rollouts",))
    assert str(parse_expression("a + 1")).strip("()\n ") == "a + 1"


@pytest.mark.parametrize(
    "statement",
    [
        "select * from read_text('/etc/passwd')",
        "select * from glob('/etc/*')",
        "copy (select 42 as x) to '{out}'",
        "attach '{out}' as o",
        "install httpfs",
        "load httpfs",
        "set enable_external_access = true",
        "set lock_configuration = false",
        "set autoload_known_extensions = true",
    ],
)
def test_the_sandbox_connection_blocks_files_extensions_and_settings(tmp_path, statement):
    """Even a statement that got past the parser does nothing on the reward's connection."""
    out = tmp_path / "out.csv"
    con = sandbox()
    try:
        with pytest.raises(duckdb.Error, match="disabled|locked|Permission"):
            con.execute(statement.format(out=out))
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []


def test_lock_down_keeps_the_allowed_directory_readable(tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    (inside / "a.txt").write_text("inside")
    (tmp_path / "data-sibling.txt").write_text("outside")  # shares the prefix, not the folder
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        lock_down(con, allowed_directories=[str(inside)])
        assert con.sql(f"select content from read_text('{inside}/a.txt')").fetchall() == [("inside",)]
        for path in (tmp_path / "data-sibling.txt", inside / ".." / "data-sibling.txt"):
            with pytest.raises(duckdb.PermissionException):
                con.sql(f"select content from read_text('{path}')").fetchall()
    finally:
        con.close()


LIST_25 = "[" + ", ".join(["'a'"] * 25) + "]"


@pytest.mark.parametrize(
    "expr",
    [
        "len(range(0, 3e9))",
        "len([x for x in range(3000000000)])",
        "len(generate_series(1, 3000000000)) > 0",
        "length(repeat(response, 3000000000))",
        "length(lpad(response, 3000000000, 'x'))",
        "length(printf('%3000000000d', 1))",
        "len(list_resize([1], 3000000000))",
        f"length(list_reduce({LIST_25}, lambda acc, x: acc || acc))",
        "(select max(length(RePeAt(response, 3000000000))) from rollouts)",
    ],
)
def test_expressions_whose_size_an_argument_sets_are_refused(expr):
    """DuckDB's memory_limit does not bound the vector a scalar function returns: these would
    take gigabytes of the process (range(0, 3e9) is a 24 GB list) whatever the limit."""
    with pytest.raises(ValueError, match=r"^sql reward: expression .* calls \w+\(\), whose result size"):
        REWARDS["sql"](inputs(), expression=expr)
    with pytest.raises(ValueError, match=r"components\[0\] sql reward: expression .* calls"):
        RewardConfig(components=[{"name": "sql", "options": {"expression": expr}}])


def test_the_sandbox_has_a_memory_limit_and_threads_it_cannot_change(monkeypatch):
    con = sandbox(memory_limit="20MB")
    try:
        settings = con.sql("select current_setting('memory_limit'), current_setting('threads')").fetchall()
        assert settings == [("19.0 MiB", 1)]
        with pytest.raises(duckdb.OutOfMemoryException):
            con.sql("select list(x) from range(10000000) t(x)").fetchall()
        for setting in ("memory_limit = '10GB'", "threads = 8"):
            with pytest.raises(duckdb.Error, match="locked"):
                con.execute(f"set {setting}")
    finally:
        con.close()
    monkeypatch.setenv("GAE_SQL_MEMORY_LIMIT", "30MB")
    con = sandbox()
    try:
        assert con.sql("select current_setting('memory_limit')").fetchall() == [("28.6 MiB",)]
    finally:
        con.close()
    monkeypatch.delenv("GAE_SQL_MEMORY_LIMIT")
    con = sandbox()
    try:
        assert con.sql("select current_setting('memory_limit')").fetchall() == [("953.6 MiB",)]  # 1GB
    finally:
        con.close()
    with pytest.raises(ValueError, match="memory_limit 'lots'"):
        sandbox(memory_limit="lots")


def test_a_reward_expression_past_the_memory_limit_fails_cleanly(monkeypatch):
    """A join the limit bounds fails with DuckDB's out-of-memory error, naming the expression."""
    monkeypatch.setenv("GAE_SQL_MEMORY_LIMIT", "20MB")
    many = RewardInputs.from_texts([f"response number {i}." for i in range(200)])
    expr = "(select len(list(a.response || b.response)) from rollouts a, rollouts b, rollouts c)"
    with pytest.raises(ValueError, match=r"sql reward: expression .* failed: Out of Memory"):
        REWARDS["sql"](many, expression=expr)
