"""The `gae` command line: instant help (no heavy imports), one-line errors, status, run's lock check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from gae.cli import _register_all, app

HEAVY = ("torch", "prefect", "mlflow", "duckdb", "polars", "numba")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "sys.argv = ['gae', '--help']\n"
        "from gae.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="  # none of the heavy modules was imported
    for cmd in ("run", "config", "ingest", "sql", "query", "models", "generate", "serve", "status"):
        assert cmd in out.stdout, cmd


def test_status_lists_runs_from_state_files(tmp_path):
    from gae.runstate import RunState

    st = RunState(
        run_name="demo", run_id="demo-1", config_hash="x", last_completed_iteration=1, status="finished"
    )
    st.history = [{"iteration": 1, "eval/reward/mean": 0.5, "actor/ppo_kl": 0.01}]
    (tmp_path / "runs").mkdir()
    st.save(tmp_path / "runs")
    _register_all()
    res = CliRunner().invoke(app, ["status", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    runs = json.loads(res.output)
    assert runs[0]["run_id"] == "demo-1" and runs[0]["history"][0]["eval/reward/mean"] == 0.5
    res = CliRunner().invoke(app, ["status", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert "demo-1" in res.output and "finished" in res.output


def test_run_fails_fast_when_another_run_holds_the_data_dir(tmp_path):
    from gae.lock import writer_lock
    from gae.paths import DataDir

    dd = DataDir.resolve(tmp_path).ensure()
    env = {**os.environ, "GAE_DATA_DIR": str(dd.root)}
    with writer_lock(dd.lock, what="rl-pipeline run other"):
        out = subprocess.run(
            [sys.executable, "-m", "gae.cli", "run", "--preset", "smoke"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1, out.stderr  # one clear line, no trace
    assert f"in use by pid {os.getpid()}" in err[0] and "rl-pipeline run other" in err[0]


def test_bad_config_value_is_one_line(tmp_path):
    _register_all()
    res = CliRunner().invoke(app, ["run", "--data-dir", str(tmp_path), "--set", "iterations=0"])
    assert res.exit_code != 0
    assert "iterations" in str(res.exception)


def test_validation_errors_become_one_line():
    from gae.cli import one_line
    from gae.config import load_config

    try:
        load_config(overrides=["iterations=0", "rollout.top_p=2"])
    except ValueError as exc:
        line = one_line(exc)
    assert "\n" not in line
    assert "iterations: Input should be greater than or equal to 1" in line and "rollout.top_p" in line


def test_config_prints_commented_yaml_that_run_reads_back(tmp_path):
    """`gae config --preset smoke --set ...` > file; loading the file gives the same config, with
    every field's description above it; `--json` is the same values; a bad value is refused."""
    import yaml

    from gae.config import load_config, to_yaml

    _register_all()
    args = ["config", "--preset", "smoke", "--set", "ppo.epochs=3", "--set", 'corpus=["a b.txt"]']
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    path = tmp_path / "run.yaml"
    path.write_text(res.output)
    want = load_config(preset="smoke", overrides=["ppo.epochs=3", 'corpus=["a b.txt"]'])
    got = load_config(path=path)  # on top of the default preset: the file fixes every value
    assert got == want and got.ppo.epochs == 3 and got.corpus == ["a b.txt"]
    assert got.ingest.list_joiner == "\n"  # an escaped string survives the round trip
    # so do control characters YAML would fold (NEL), in a string and inside a list
    odd = load_config(values={"data_dir": "x\x85y", "corpus": ["a\x85b", "c"]})
    path.write_text(to_yaml(odd))
    assert load_config(path=path) == odd
    assert "# PPO iterations.\niterations: 2\n" in res.output
    assert "  # Passes over the iteration's rollouts (PPO epochs).\n  epochs: 3\n" in res.output
    js = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(js.output) == yaml.safe_load(res.output) == want.model_dump(mode="json")
    bad = CliRunner().invoke(app, ["config", "--set", "ppo.epochs=0"])
    assert bad.exit_code != 0 and "ppo.epochs" in str(bad.exception)


def test_estimator_settings_are_checked_before_a_run():
    """Estimator settings a run would fail on after its rollouts are refused by the config."""
    import pytest

    from gae.config import load_config

    with pytest.raises(ValueError, match="needs advantages.horizon"):
        load_config(overrides=["advantages.estimator=uniform"])
    with pytest.raises(ValueError, match="needs advantages.p"):
        load_config(overrides=["advantages.estimator=power", "advantages.horizon=8"])
    with pytest.raises(ValueError, match="rollout.n_samples >= 2"):
        load_config(overrides=["advantages.estimator=grpo", "rollout.n_samples=1"])
    with pytest.raises(ValueError, match="zero expected gradient"):
        load_config(overrides=["shaping.kl.placement=loss"])
    cfg = load_config(overrides=["advantages.estimator=power", "advantages.horizon=8", "advantages.p=1.5"])
    assert cfg.advantages.p == 1.5


def test_run_options_are_taken_as_typed_and_bad_yaml_is_one_line(tmp_path):
    """`gae run --run-name 007 --corpus "Bob's notes/"`: the options are values, not YAML (a run
    name 007 or on stays a string, a quote in a path is kept); a --set that is not YAML is a
    clear error naming it."""
    import pytest

    from gae.commands.run import option_values
    from gae.config import load_config

    for name in ("007", "on"):
        vals = option_values(tmp_path / "2024", None, None, name, ["Bob's notes/", "a [1]"], True)
        cfg = load_config(preset="smoke", values=vals)
        assert cfg.run_name == name and cfg.corpus == ["Bob's notes/", "a [1]"]
        assert cfg.data_dir == str(tmp_path / "2024") and cfg.resume is False
    assert load_config(values=option_values(None, 3, "cpu", None, [], False)).iterations == 3
    with pytest.raises(ValueError, match=r"--set 'corpus=\[a': the value is not valid YAML"):
        load_config(overrides=["corpus=[a"])
    res = CliRunner().invoke(app, ["config", "--set", "corpus=[a"])
    assert res.exit_code != 0 and "not valid YAML" in str(res.exception)


def test_run_summary_of_a_resumed_run_lists_every_iteration(tmp_path, capsys):
    """A run resumed at iteration 2 returns only iterations 2 and 3; the printed table still
    numbers them 2 and 3 and shows 0 and 1 from the run state."""
    from gae.config import load_config
    from gae.runstate import RunState
    from gae.summary import print_run_summary

    cfg = load_config(preset="smoke", values={"data_dir": str(tmp_path), "run_name": "demo"})
    st = RunState(run_name="demo", run_id="demo-1", config_hash="x", last_completed_iteration=3)
    st.history = [
        {"iteration": i, "eval/reward/mean": 0.1 * (i + 1), "timing_s/iteration": 1.0} for i in range(4)
    ]
    (tmp_path / "runs").mkdir()
    st.save(tmp_path / "runs")
    resumed = [{"iteration": i, "eval/reward/mean": 0.1 * (i + 1)} for i in (2, 3)]
    print_run_summary({"run_id": "demo-1", "iterations": resumed, "base": {"eval_reward": 0.05}}, cfg)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["0", "1", "2", "3"]
    assert "0.0500 before PPO -> 0.4000 after" in out


def test_preset_help_names_every_preset():
    # The help is static text (importing gae.config would pull torch into `--help`), so a preset
    # added to PRESETS without a word in the help fails here.
    from gae.config import PRESETS

    _register_all()
    runner = CliRunner()
    for cmd in ("run", "config"):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        assert res.exit_code == 0, res.output
        missing = [name for name in PRESETS if name not in res.output]
        assert not missing, f"gae {cmd} --help does not name presets {missing}"
