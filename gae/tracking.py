"""MLflow tracking for pipeline runs: one MLflow run per pipeline run, resumable.

Where: by default an embedded store in the data directory, tracking and registry on
sqlite (`<data-dir>/mlflow.db`) with artifacts in `<data-dir>/mlartifacts`; the
`MLFLOW_TRACKING_URI` environment variable points both at a team server instead.

What a run holds:
- params: the resolved config, flattened to dotted keys (`ppo.actor_lr`), values cut to
  MLflow's 6000 characters (the full config is also an artifact, `config.json`);
- metrics: every per-iteration metric with `step = iteration`, names made MLflow-safe
  (verl's MLflow logging broke on `(` and `@`: only letters, digits, `_ - . / ` survive);
- artifacts: `config.json`, `generations/iter-NNNNN.json` (a table of sample prompts,
  responses, scores and reward components per iteration, replaced when an iteration is
  logged again), `generations/baseline.json` (the pretrained policy's samples),
  `plots/training.png` (reward, KL and explained variance over iterations),
  `plots/<name>/iter-NNNNN.png` (per-iteration plots of the token store, `gae.plots`) and
  `reports/iter-NNNNN.html` (the iteration's token report, `gae.report`);
- tags: `gae.run_id`, `gae.data_dir` and the Parquet locations of the run's tokens and
  rollouts (lineage from a metric back to the rows that produced it).

A pipeline run is found again by its `gae.run_id` tag (or an explicit MLflow run id), so a
resumed pipeline keeps logging into the same MLflow run. `Tracker` is a context manager
that marks the run FAILED when the block raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from gae.paths import DataDir

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "gaeflow"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
RUN_ID_TAG = "gae.run_id"

# Metric keys plotted by `log_training_plot`: one panel each, every key present is a line.
PLOT_PANELS: dict[str, tuple[str, ...]] = {
    "reward": ("critic/score/mean", "eval/reward/mean"),
    "KL": ("actor/reward_kl_penalty", "actor/kl_loss", "actor/ppo_kl"),
    "explained variance": ("critic/vf_explained_var",),
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def tracking_uri(data_dir: DataDir | str | os.PathLike | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else sqlite in the data directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    return f"sqlite:///{dd.mlflow_db}"


def _artifact_location(data_dir: DataDir) -> str | None:
    """Artifacts beside the embedded store; a team server picks its own (None).

    Decided from the URI in use, not from the environment variable: `use_tracking_uri`
    sets that variable for a block, and an experiment created inside one must still get
    `<data-dir>/mlartifacts` (else MLflow falls back to ./mlruns in the working directory).
    """
    if tracking_uri(data_dir) != f"sqlite:///{data_dir.mlflow_db}":
        return None
    return data_dir.mlflow_artifacts.resolve().as_uri()


def get_client(data_dir: DataDir | str | os.PathLike | None = None):
    """An MlflowClient on the data directory's store (registry on the same URI).

    MLflow's process-wide fluent URI is left alone (see `use_tracking_uri`).
    """
    from mlflow import MlflowClient

    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    uri = tracking_uri(dd)
    if uri.startswith("sqlite:///"):
        dd.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        dd.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[str]:
    """Point MLflow's fluent API (`mlflow.pyfunc.log_model`, `load_model`) at `uri` for a
    block, then restore it. `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into
    the environment, which would make every later `tracking_uri()` call in this process
    ignore its data directory: the previous value (or its absence) is put back."""
    import mlflow

    prev = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(prev)  # None unsets the variable again


def ensure_experiment(client, name: str, data_dir: DataDir) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(data_dir))
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def safe_metric_name(name: str) -> str:
    """Replace characters MLflow (or its UI, or verl's users) choke on with `_`."""
    out = _UNSAFE.sub("_", name).strip().lstrip("/")
    while "//" in out or ".." in out:
        out = out.replace("//", "/").replace("..", ".")
    return _short_key(out or "_")


def _short_key(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{key[: MAX_KEY - 9]}~{digest}"


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/pydantic models -> {"a.b.c": "value"}; lists as JSON; values cut to
    MLflow's 6000-character limit (ending in "..." so a cut is visible)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) or hasattr(v, "model_dump"):
                out.update(flatten_params(v, key))
            else:
                out[_short_key(safe_metric_name(key))] = _param_value(v)
    else:
        out[_short_key(prefix or "value")] = _param_value(config)
    return out


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."


class Tracker:
    """One MLflow run of one pipeline run. Use `Tracker.start(...)`."""

    def __init__(self, client, mlflow_run_id: str, data_dir: DataDir):
        self.client = client
        self.run_id = mlflow_run_id
        self.data_dir = data_dir

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        data_dir: DataDir | str | os.PathLike | None = None,
        *,
        run_id: str,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        mlflow_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        """Start the MLflow run of pipeline run `run_id`, or resume it.

        Resumes `mlflow_run_id` when given, else the newest run of the experiment tagged
        `gae.run_id = run_id`; otherwise creates one. A resumed run is set back to RUNNING.
        """
        dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
        client = get_client(dd)
        exp_id = ensure_experiment(client, experiment, dd)
        found = None
        if mlflow_run_id:
            found = client.get_run(mlflow_run_id)
        else:
            runs = client.search_runs(
                [exp_id],
                filter_string=f"tags.`{RUN_ID_TAG}` = '{_quote(run_id)}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            found = runs[0] if runs else None
        lineage = {
            RUN_ID_TAG: run_id,
            "gae.data_dir": str(dd.root),
            "gae.parquet.tokens": str(dd.tokens / f"run_id={run_id}"),
            "gae.parquet.rollouts": str(dd.rollouts / f"run_id={run_id}"),
            "gae.checkpoints": str(dd.run_dir(run_id) / "checkpoints"),
            **(tags or {}),
        }
        if found is None:
            rid = client.create_run(exp_id, run_name=run_name or run_id, tags=lineage).info.run_id
            return cls(client, rid, dd)
        tracker = cls(client, found.info.run_id, dd)
        if found.info.status != "RUNNING":  # a real resume, not another task of the same live run
            client.update_run(tracker.run_id, status="RUNNING")
            tracker.set_tags(
                {**lineage, "gae.resumed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            )
        return tracker

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (and refresh the training plot)."""
        if status == "FINISHED":
            try:
                self.log_training_plot()
            except Exception as exc:  # a plot must never turn a good run into a failed one
                log.warning("training plot not logged: %s", exc)
        self.client.set_terminated(self.run_id, status=status)

    def fail(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.client.set_tag(self.run_id, "gae.error", f"{type(exc).__name__}: {exc}"[:5000])
        self.client.set_terminated(self.run_id, status="FAILED")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()

    # ------------------------------------------------------------------ logging

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_short_key(k), str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + PARAMS_PER_BATCH])

    def log_config(self, config: Any, *, artifact_file: str = "config.json") -> dict[str, str]:
        """Log the config as params (flattened) and as a JSON artifact. On a resumed run,
        params already logged are skipped (MLflow params are immutable); a changed value
        is logged as a tag `gae.param_changed.<key>` instead of failing the run."""
        from mlflow.entities import Param

        params = flatten_params(config)
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in params.items() if k not in existing}
        changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_BATCH])
        if changed:
            log.warning("config changed on resume for %s", sorted(changed))
            self.set_tags({f"gae.param_changed.{k}": v for k, v in changed.items()})
        raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
        self.client.log_dict(self.run_id, raw, artifact_file)
        return params

    def log_metrics(self, metrics: dict[str, float], *, step: int, only_new: bool = False) -> None:
        """Every metric at `step` (the iteration), names made MLflow-safe.

        only_new: skip metrics that already have a point at `step`. A run killed after logging
        an iteration and before completing it redoes that iteration on resume; MLflow cannot
        delete a point, so logging again would leave two at one step (issue 12). The first
        attempt's values stand: resume is exact (same checkpoint, seeds and batch), so they
        are the redone iteration's values, wall times aside. Costs one history query per
        metric already logged, so the pipeline asks for it on resumed runs only.
        """
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        logged = self._keys_at_step(int(step)) if only_new else set()
        items = []
        for k, v in metrics.items():
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"metric {k!r} is not a number: {v!r}") from None
            key = safe_metric_name(k)
            if key not in logged:
                items.append(Metric(key, x, ts, int(step)))
        with self._writing():
            for i in range(0, len(items), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=items[i : i + METRICS_PER_BATCH])

    def _writing(self):
        """A full disk under the embedded store is reported naming mlflow.db (gae.errors.writing)."""
        from gae.errors import writing

        embedded = tracking_uri(self.data_dir) == f"sqlite:///{self.data_dir.mlflow_db}"
        return writing(self.data_dir.mlflow_db) if embedded else contextlib.nullcontext()

    def _keys_at_step(self, step: int) -> set[str]:
        """Metric keys of the run that have a point at `step`."""
        present = self.client.get_run(self.run_id).data.metrics
        return {
            k for k in present if any(m.step == step for m in self.client.get_metric_history(self.run_id, k))
        }

    def log_generations(self, rows: list[dict] | Any, *, iteration: int, name: str | None = None) -> str:
        """A table of sample generations (prompt, response, score, components...) for one
        iteration, as `generations/iter-NNNNN.json`, or `generations/<name>.json` when `name`
        is given (the pretrained policy's samples: `name="baseline"`). Shown as a table in
        MLflow's UI and read back by `mlflow.load_table`.

        Logging the same table again replaces it: a resumed run that redoes an iteration
        must not show the crashed attempt's rows beside the redone ones. MLflow's
        `log_table` appends to an existing file, so the table is written here in the same
        format (pandas `orient="split"` JSON) and registered the way `log_table` registers
        it (the run's `mlflow.loggedArtifacts` tag, which the UI and `load_table` read)."""
        import pandas as pd
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if "iteration" not in df.columns:
            df.insert(0, "iteration", int(iteration))
        stem = f"iter-{iteration:05d}" if name is None else name
        if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
            raise ValueError(f"generations table name {name!r}: one path component expected")
        path = f"generations/{stem}.json"
        text = df.to_json(orient="split", index=False, date_format="iso")
        self.client.log_text(self.run_id, text, path)  # a whole new file: replaces, never appends
        logged = json.loads(self.client.get_run(self.run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": path, "type": "table"}
        if entry not in logged:
            self.client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged + [entry]))
        return path

    def log_figures(self, figures: dict[str, Any], *, iteration: int) -> list[str]:
        """Per-iteration figures (name -> matplotlib Figure) as `plots/<name>/iter-NNNNN.png`:
        one folder per plot, so its iterations sit side by side in the artifact browser."""
        paths = []
        for name, fig in figures.items():
            path = f"plots/{name}/iter-{int(iteration):05d}.png"
            self.client.log_figure(self.run_id, fig, path)
            paths.append(path)
        return paths

    def log_report(self, page: str, *, iteration: int) -> str:
        """The iteration's HTML token report as `reports/iter-NNNNN.html` (replaced when the
        iteration is logged again); MLflow's artifact view shows it with its script running."""
        path = f"reports/iter-{int(iteration):05d}.html"
        self.client.log_text(self.run_id, page, path)
        return path

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        hist = self.client.get_metric_history(self.run_id, safe_metric_name(key))
        last: dict[int, float] = {}
        for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
            last[m.step] = m.value  # a resumed iteration logged twice: the later value wins
        return sorted(last.items())

    def log_training_plot(self, artifact_file: str = "plots/training.png") -> str | None:
        """Reward, KL and explained variance over iterations (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        panels = []
        for title, keys in PLOT_PANELS.items():
            series = [(k, self.metric_history(k)) for k in keys]
            series = [(k, h) for k, h in series if h]
            panels.append((title, series))
        if not any(series for _, series in panels):
            return None
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
        for ax, (title, series) in zip(axes[0], panels, strict=True):
            for key, hist in series:
                xs = [s for s, v in hist if math.isfinite(v)]
                ys = [v for _, v in hist if math.isfinite(v)]
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=7)
        fig.tight_layout()
        try:
            self.client.log_figure(self.run_id, fig, artifact_file)
        finally:
            plt.close(fig)
        return artifact_file


def _quote(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("'", "\\'")


def generation_rows(batch, *, total, components: dict | None = None, limit: int = 16) -> list[dict]:
    """Rows of the sample-generation table from a RolloutBatch and its scores (first `limit`
    rows: rollouts of one prompt are adjacent, so this shows a few prompts' samples)."""
    comps = components or {}
    rows = []
    for i in range(min(limit, batch.batch_size)):
        row = {
            "rollout_id": batch.rollout_ids[i],
            "prompt_id": batch.prompt_ids[i],
            "prompt": batch.prompts[i],
            "response": batch.responses[i],
            "reference": batch.references[i],
            "finish_reason": batch.finish_reasons[i],
            "response_length": int(batch.action_mask[i].sum()),
            "score": float(total[i]),
        }
        for name, vals in comps.items():
            row[f"score.{name}"] = float(vals[i])
        rows.append(row)
    return rows


def find_run(data_dir: DataDir | str | None, run_id: str, experiment: str = DEFAULT_EXPERIMENT):
    """The MLflow run of a pipeline run id, or None."""
    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    client = get_client(dd)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{_quote(run_id)}'", max_results=1
    )
    return runs[0] if runs else None
