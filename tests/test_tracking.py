"""MLflow tracking on a real sqlite store in tmp_path: params, metrics, artifacts, resume, failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gae.paths import DataDir
from gae.tracking import Tracker, find_run, flatten_params, get_client, safe_metric_name, tracking_uri


@pytest.fixture
def data_dir(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dd = DataDir.resolve(tmp_path / "data").ensure()
    shutil.copyfile(empty_store, dd.mlflow_db)
    return dd


def test_uri_default_and_override(data_dir, monkeypatch):
    assert tracking_uri(data_dir) == f"sqlite:///{data_dir.root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(data_dir) == "http://mlflow.example:5000"


def test_names_and_params_are_mlflow_safe():
    assert safe_metric_name("critic/score/mean") == "critic/score/mean"
    assert safe_metric_name("reward(bleu)@k") == "reward_bleu__k"
    flat = flatten_params({"ppo": {"lr": 1e-4, "betas": [0.9, 0.99]}, "name": "x", "long": "y" * 7000})
    assert flat["ppo.lr"] == "0.0001" and flat["ppo.betas"] == "[0.9, 0.99]" and flat["name"] == "x"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")
    key = flatten_params({"k" * 300: 1})
    assert all(len(k) <= 250 for k in key)


def test_run_logs_everything_and_resumes_by_run_id(data_dir):
    config = {"ppo": {"epochs": 2, "actor_lr": 1e-4}, "rollout": {"n_samples": 4}}
    with Tracker.start(data_dir, run_id="run-1") as tr:
        tr.log_config(config)
        for it in range(3):
            tr.log_metrics(
                {
                    "critic/score/mean": 0.1 * it,
                    "actor/reward_kl_penalty": 0.01 * it,
                    "critic/vf_explained_var": 0.5,
                },
                step=it,
            )
        tr.log_generations([{"prompt": "a", "response": "b", "score": 0.5, "score.bleu": 0.5}], iteration=2)
        first_id = tr.run_id

    client = get_client(data_dir)
    run = client.get_run(first_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["ppo.epochs"] == "2"
    assert run.data.tags["gae.run_id"] == "run-1"
    assert run.data.tags["gae.parquet.tokens"].endswith("tokens/run_id=run-1")
    hist = client.get_metric_history(first_id, "critic/score/mean")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    arts = {a.path for a in client.list_artifacts(first_id)}
    assert {"config.json", "generations", "plots"} <= arts
    assert {a.path for a in client.list_artifacts(first_id, "plots")} == {"plots/training.png"}
    local = client.download_artifacts(first_id, "generations/iter-00002.json", str(data_dir.root / "dl"))
    table = json.loads(Path(local).read_text())
    assert "prompt" in table["columns"] and table["data"][0][table["columns"].index("response")] == "b"
    # artifacts live beside the embedded store
    assert run.info.artifact_uri.startswith((data_dir.root / "mlartifacts").as_uri())

    # Resume: the same MLflow run, RUNNING again; existing params are not re-logged.
    tr2 = Tracker.start(data_dir, run_id="run-1")
    assert tr2.run_id == first_id
    assert client.get_run(first_id).info.status == "RUNNING"
    tr2.log_config({**config, "ppo": {"epochs": 3, "actor_lr": 1e-4}})  # a change is a tag, not a crash
    assert client.get_run(first_id).data.tags["gae.param_changed.ppo.epochs"] == "3"
    tr2.log_metrics({"critic/score/mean": 0.3}, step=3)
    tr2.finish()
    assert find_run(data_dir, "run-1").info.run_id == first_id
    assert find_run(data_dir, "run-2") is None


def test_run_marked_failed_on_error(data_dir):
    with pytest.raises(RuntimeError, match="boom"), Tracker.start(data_dir, run_id="bad") as tr:
        raise RuntimeError("boom")
    run = get_client(data_dir).get_run(tr.run_id)
    assert run.info.status == "FAILED"
    assert "boom" in run.data.tags["gae.error"]


def test_generation_tables_replace_and_baseline_has_its_own(data_dir):
    """Each table is one artifact holding one logging's rows: the pretrained policy's samples
    go to `generations/baseline.json`, and logging an iteration again (a resumed run redoing
    it) replaces its table. MLflow's `log_table` would append to an existing file."""
    from gae.tracking import use_tracking_uri

    tr = Tracker.start(data_dir, run_id="gen")
    base = tr.log_generations(
        [{"prompt": "p", "response": "base", "score": 0.1}], iteration=0, name="baseline"
    )
    first = tr.log_generations([{"prompt": "p", "response": "crashed", "score": 0.2}], iteration=0)
    redo = tr.log_generations(
        [
            {"prompt": "p", "response": "redone", "score": 0.3},
            {"prompt": "q", "response": "r2", "score": 0.4},
        ],
        iteration=0,
    )
    assert (base, first, redo) == ("generations/baseline.json", "generations/iter-00000.json", first)

    client = get_client(data_dir)
    exp_id = client.get_run(tr.run_id).info.experiment_id
    # Read back the way MLflow's UI and users do (load_table finds tables by the run's
    # `mlflow.loggedArtifacts` tag; its run search goes through the fluent tracking URI).
    with use_tracking_uri(tracking_uri(data_dir)):
        it0 = client.load_table(exp_id, "generations/iter-00000.json", run_ids=[tr.run_id])
        bl = client.load_table(exp_id, "generations/baseline.json", run_ids=[tr.run_id])
    assert list(it0["response"]) == ["redone", "r2"]  # no copy of the first attempt's row
    assert list(it0["iteration"]) == [0, 0]
    assert list(bl["response"]) == ["base"] and list(bl["score"]) == [0.1]
    tags = json.loads(client.get_run(tr.run_id).data.tags["mlflow.loggedArtifacts"])
    assert sorted(t["path"] for t in tags if t["type"] == "table") == [base, first]
    tr.finish()
