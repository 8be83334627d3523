"""The model registry on a real sqlite store: pyfunc loads in another process, aliases move
only on improvement, registration is idempotent per source, `gae models` lists versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gae.paths import DataDir

TEXTS = ["the cat sat on the mat.", "a dog ran in the park.", "the sun is warm today."] * 20


@pytest.fixture
def data_dir(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dd = DataDir.resolve(tmp_path / "data").ensure()
    shutil.copyfile(empty_store, dd.mlflow_db)
    return dd


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny GPT with its tokenizer in one directory."""
    from gae.models import ModelConfig, build_model, save_model
    from gae.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("policy")
    tok_path = train_tokenizer(TEXTS, vocab_size=300, out_dir=out)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), 300)
    save_model(model, out)
    assert tok_path == out / "tokenizer.json"
    return out


def test_register_then_load_champion_in_a_separate_process(data_dir, policy_dir):
    from gae.registry import log_and_register

    reg = log_and_register(policy_dir, "gae-policy", eval_score=0.25, data_dir=data_dir, source="run-a:3")
    assert reg.version == 1 and reg.promoted and reg.champion_version == 1 and reg.champion_score is None

    script = (
        "import json, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/gae-policy@champion')\n"
        "a = m.predict(['the cat', 'a dog'], params={'max_new_tokens': 8, 'temperature': 1.0, 'seed': 3})\n"
        "b = m.predict(pd.DataFrame({'prompt': ['the cat', 'a dog']}), params={'max_new_tokens': 8, 'seed': 3})\n"
        "print(json.dumps({'a': list(a), 'b': list(b), 'sig': m.metadata.get_params_schema().to_dict()}))\n"
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{data_dir.mlflow_db}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=data_dir.root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Add type hints" not in proc.stderr  # no MLflow UserWarning at every model load
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["a"]) == 2 and all(isinstance(t, str) for t in out["a"])
    assert any(len(t) > 0 for t in out["a"])
    assert out["a"] == out["b"]  # list input and DataFrame input, same seed: same texts
    assert {p["name"] for p in out["sig"]} == {"max_new_tokens", "temperature", "top_p", "seed"}


def test_champion_moves_only_on_improvement(data_dir, policy_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's fallback artifact root is ./mlruns: it must stay unused

    from gae.registry import list_versions, load_policy, log_and_register

    r1 = log_and_register(policy_dir, "p", eval_score=0.5, data_dir=data_dir, source="r:0")
    r2 = log_and_register(policy_dir, "p", eval_score=0.4, data_dir=data_dir, source="r:1")  # worse
    r3 = log_and_register(
        policy_dir, "p", eval_score=0.5, data_dir=data_dir, source="r:2"
    )  # a tie is no gain
    r4 = log_and_register(policy_dir, "p", eval_score=0.7, data_dir=data_dir, source="r:3")  # better
    assert (r1.promoted, r2.promoted, r3.promoted, r4.promoted) == (True, False, False, True)
    assert (r2.champion_version, r3.champion_version, r4.champion_version) == (1, 1, 4)
    assert r2.aliases == ["candidate"] and r4.aliases == ["candidate", "champion"]
    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir.mlflow_db}")
    assert int(client.get_model_version_by_alias("p", "champion").version) == 4
    assert int(client.get_model_version_by_alias("p", "candidate").version) == 4
    v2 = client.get_model_version("p", "2")
    assert float(v2.tags["eval_score"]) == 0.4 and float(v2.tags["champion_eval_score"]) == 0.5

    # A retried registration of the same source adds no version.
    again = log_and_register(policy_dir, "p", eval_score=0.7, data_dir=data_dir, source="r:3")
    assert again.version == 4
    # ...and reports, and keeps in its audit tag, the champion it beat (v1's 0.5), not itself.
    assert again.promoted and again.champion_score == 0.5
    assert float(client.get_model_version("p", "4").tags["champion_eval_score"]) == 0.5
    rows = list_versions("p", data_dir=data_dir)
    assert [r["version"] for r in rows] == [4, 3, 2, 1]
    assert rows[0]["aliases"] == ["candidate", "champion"] and rows[2]["aliases"] == []

    # In-process loading by alias also works, and leaves the process's MLflow URI alone.
    texts = load_policy("p@champion", data_dir=data_dir).predict(
        ["the sun"], params={"max_new_tokens": 4, "seed": 1}
    )
    assert len(texts) == 1
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not (tmp_path / "mlruns").exists()
    assert list((data_dir.mlflow_artifacts / "models").iterdir())  # the logged models live here


def test_retried_alias_update_keeps_the_previous_champion_score(data_dir):
    """A retry of `update_aliases` for the version that is already champion (the first
    attempt promoted it, then the task failed later) must leave `champion_eval_score` at the
    score it beat: rewriting it with its own score would read as a promotion on a tie, which
    the strict `>` rule forbids. Versions are made directly (no model logging: fast)."""
    from mlflow import MlflowClient

    from gae.registry import update_aliases

    uri = f"sqlite:///{data_dir.mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=(data_dir.root / "no-model").as_uri())
    assert update_aliases(client, "m", 1, 0.3) == (True, 1, None)  # the first is champion
    assert update_aliases(client, "m", 1, 0.3) == (True, 1, None)  # its retry: there was still none
    assert "champion_eval_score" not in client.get_model_version("m", "1").tags  # there was none
    assert update_aliases(client, "m", 2, 0.5) == (True, 2, 0.3)  # 0.5 > 0.3: promoted
    assert update_aliases(client, "m", 2, 0.5) == (True, 2, 0.3)  # its retry: same answer
    tags = client.get_model_version("m", "2").tags
    assert (float(tags["eval_score"]), float(tags["champion_eval_score"]), tags["promoted"]) == (
        0.5,
        0.3,
        "true",
    )
    assert int(client.get_model_version_by_alias("m", "champion").version) == 2


def test_a_version_below_the_pretrained_baseline_is_not_champion(data_dir):
    """Issue 17: the smoke run's first version (eval 0.311 after PPO, 0.375 before) became
    champion. Below its run's baseline a version stays a candidate, with the reason tagged."""
    from mlflow import MlflowClient

    from gae.registry import list_versions, update_aliases

    uri = f"sqlite:///{data_dir.mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("g")
    for _ in range(4):
        client.create_model_version("g", source=(data_dir.root / "no-model").as_uri())
    assert update_aliases(client, "g", 1, 0.311, baseline_score=0.375) == (False, None, None)
    tags = client.get_model_version("g", "1").tags
    assert tags["promoted"] == "false" and float(tags["baseline_eval_score"]) == 0.375
    assert "below the pretrained policy's 0.375" in tags["not_promoted_reason"]
    assert "champion_eval_score" not in tags  # no champion to compare with: no tag, not "None"
    assert int(client.get_model_version_by_alias("g", "candidate").version) == 1
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("g", "champion")
    # at the baseline is not below it; the first such version becomes champion
    assert update_aliases(client, "g", 2, 0.375, baseline_score=0.375) == (True, 2, None)
    # beats the champion but is below its own run's baseline: not promoted
    assert update_aliases(client, "g", 3, 0.5, baseline_score=0.6) == (False, 2, 0.375)
    # beats both
    assert update_aliases(client, "g", 4, 0.5, baseline_score=0.45) == (True, 4, 0.375)
    rows = {r["version"]: r for r in list_versions("g", data_dir=data_dir)}
    assert rows[4]["champion_eval_score"] == 0.375 and rows[1]["champion_eval_score"] is None
    assert rows[3]["baseline_eval_score"] == 0.6 and rows[4]["aliases"] == ["candidate", "champion"]


def test_register_under_the_pipeline_run_keeps_it_running(data_dir, policy_dir):
    from gae.registry import log_and_register
    from gae.tracking import Tracker

    tr = Tracker.start(data_dir, run_id="run-x")
    reg = log_and_register(
        policy_dir, eval_score=0.1, data_dir=data_dir, mlflow_run_id=tr.run_id, source="run-x:0"
    )
    mv = tr.client.get_model_version("gae-policy", str(reg.version))
    assert mv.run_id == tr.run_id
    assert tr.client.get_run(tr.run_id).info.status == "RUNNING"
    tr.finish()


def test_missing_inputs_raise(data_dir, tmp_path):
    from gae.registry import log_and_register

    with pytest.raises(FileNotFoundError, match="config.json"):
        log_and_register(tmp_path, eval_score=0.0, data_dir=data_dir)


def test_cli_models_and_generate(data_dir, policy_dir):
    import typer
    from typer.testing import CliRunner

    from gae.commands import models as models_cmd
    from gae.registry import log_and_register

    log_and_register(policy_dir, eval_score=0.3, data_dir=data_dir, source="cli:0")
    app = typer.Typer()
    models_cmd.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["models", "--data-dir", str(data_dir.root)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["models", "--data-dir", str(data_dir.root), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert rows[0]["name"] == "gae-policy" and rows[0]["aliases"] == ["candidate", "champion"]
    res = runner.invoke(
        app,
        [
            "generate",
            "--data-dir",
            str(data_dir.root),
            "--model",
            "gae-policy@champion",
            "--max-new-tokens",
            "4",
            "--seed",
            "0",
            "the cat",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("the cat")


def test_register_task_is_idempotent(data_dir, policy_dir):
    from tasks.register import register_policy

    run = {"run_id": "run-t", "run_name": "t", "mlflow_run_id": None}
    cfg = {"registry": {"model_name": "task-policy", "experiment": "gaeflow"}}
    a = register_policy.fn(
        str(data_dir.root),
        run,
        str(policy_dir),
        str(policy_dir / "tokenizer.json"),
        cfg,
        eval_score=0.2,
        iteration=3,
    )
    b = register_policy.fn(
        str(data_dir.root),
        run,
        str(policy_dir),
        str(policy_dir / "tokenizer.json"),
        cfg,
        eval_score=0.2,
        iteration=3,
    )
    assert a["version"] == b["version"] == 1 and a["promoted"]
    with pytest.raises(ValueError, match="no completed iteration"):
        register_policy.fn(
            str(data_dir.root), {**run, "run_name": "none"}, str(policy_dir), str(policy_dir), cfg
        )
