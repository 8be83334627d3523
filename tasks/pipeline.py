"""Prefect tasks of the pipeline's own bookkeeping: run state, evaluation, publishing an
iteration, logging, and closing the run. Paths and ids in and out.

An iteration becomes visible only when it is complete: its store files are written to a
staging directory, its checkpoint is saved, then `publish_iteration` moves the Parquet
files into the store (one rename per file) and `complete_iteration` records it in the run
state. A crash anywhere before that leaves the previous iteration as the resume point and
nothing of the interrupted one in the store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from prefect import get_run_logger, task

from tasks.retry import unless_disk_full


@task(name="start-run")
def start_run(data_dir: str, config: dict, *, resume: bool = True) -> dict:
    """Start or resume the run of `config['run_name']`; returns its ids and where to continue.

    Resuming drops stored iterations past the last completed one (an interrupted iteration
    is redone) and continues the same MLflow run.
    """
    from gae.checkpoint import checkpoint_dir
    from gae.paths import DataDir
    from gae.runstate import config_hash, start_or_resume
    from gae.store import delete_iterations_after
    from gae.tracking import Tracker

    dd = DataDir.resolve(data_dir).ensure()
    state, resumed = start_or_resume(
        dd.runs, config["run_name"], config_hash(resume_key(config)), resume=resume
    )
    if resumed:
        removed = delete_iterations_after(dd.root, state.run_id, state.last_completed_iteration)
        if removed:
            get_run_logger().info("resume: removed partial iterations %s of %s", removed, state.run_id)
    tracker = Tracker.start(
        dd,
        run_id=state.run_id,
        experiment=config["registry"]["experiment"],
        run_name=state.run_id,
        mlflow_run_id=state.mlflow_run_id,
    )
    if not resumed:
        tracker.log_config(config)
    state.mlflow_run_id = tracker.run_id
    state.save(dd.runs)
    last = state.last_completed_iteration
    ckpt = checkpoint_dir(dd.run_dir(state.run_id), last) if last >= 0 else None
    kl_coef = None
    if ckpt is not None:
        saved = json.loads((ckpt / "state.json").read_text()).get("kl_controller") or {}
        kl_coef = saved.get("value")
    return {
        "run_id": state.run_id,
        "run_name": state.run_name,
        "mlflow_run_id": tracker.run_id,
        "start_iteration": last + 1,
        "resumed": resumed,
        "checkpoint": str(ckpt) if ckpt else None,
        "model_dir": str(ckpt / "policy") if ckpt else None,
        "kl_coef": kl_coef,
    }


@task(name="evaluate-policy")
def evaluate_policy_task(
    data_dir: str,
    policy_dir: str,
    tokenizer_path: str,
    reward_cfg: dict,
    eval_cfg: dict,
    device: str = "auto",
    corpus: str | None = None,
) -> dict:
    """Mean reward of the policy at `policy_dir` on the held-out eval prompts (same prompts
    and seed every iteration; of the run's corpus when `corpus` is given). Returns the
    EvalResult as a dict."""
    from gae import db
    from gae.device import resolve_device
    from gae.evaluate import evaluate_policy
    from gae.models import load_model
    from gae.rewards import RewardConfig
    from gae.tokenizer import load_tokenizer

    con = db.connect(data_dir, read_only=True)
    try:
        prompts = db.fetch_prompts(
            con, split="eval", limit=eval_cfg["n_prompts"], seed=eval_cfg["seed"], corpus=corpus
        )
        if not prompts:
            # A corpus of a handful of documents can leave the eval split empty (it is drawn by
            # document id hash); evaluating on a fixed sample of train prompts still compares
            # iterations with each other, which is what this number is for. Say so.
            get_run_logger().warning(
                "no eval prompts in the corpus; evaluating on a fixed sample of train prompts"
            )
            prompts = db.fetch_prompts(
                con, split="train", limit=eval_cfg["n_prompts"], seed=eval_cfg["seed"], corpus=corpus
            )
    finally:
        con.close()
    dev = resolve_device(device)
    model = load_model(policy_dir, device=dev)
    tok = load_tokenizer(tokenizer_path)
    res = evaluate_policy(
        model,
        tok,
        prompts,
        RewardConfig.model_validate(reward_cfg),
        max_new_tokens=eval_cfg["max_new_tokens"],
        temperature=eval_cfg["temperature"],
        seed=eval_cfg["seed"],
    )
    return res.to_dict()


def _partition_files(root: Path, table: str, run_id: str, iteration: int) -> Path:
    return root / table / f"run_id={run_id}" / f"iteration={iteration}"


def resume_key(config: dict) -> dict:
    """The settings that make a run what it is: a rerun with the same ones resumes it. Where the
    data lives, the device, where the stages run (`cluster`: a run started locally resumes on
    Ray and back), the rollout chunk size and decode loop (samples do not depend on them:
    per-row seeds) and whether or under which name the policy is registered do not change the run."""
    from gae.rollout import EXECUTION_FIELDS

    key = {k: v for k, v in config.items() if k not in ("data_dir", "resume", "device", "cluster")}
    key["rollout"] = {k: v for k, v in config.get("rollout", {}).items() if k not in EXECUTION_FIELDS}
    key["registry"] = {"experiment": config.get("registry", {}).get("experiment")}
    return key


@task(name="publish-iteration", retries=2, retry_delay_seconds=1, retry_condition_fn=unless_disk_full)
def publish_iteration(data_dir: str, staging_dir: str, run_id: str, iteration: int) -> dict:
    """Move the staged Parquet files of an iteration into the store: each file by one atomic
    rename, so a reader sees the old file or the new one; files of an earlier attempt at the
    iteration that the new ones do not replace are removed.

    Idempotent and safe to retry: the names being published are written to a manifest in the
    staging partition before the first rename, so a retry after a partial move, or a second
    call after success, knows which files in the store are this iteration's (moved already)
    and which are stale, instead of treating whatever is still staged as the whole set."""
    from gae.fsutil import atomic_write_json
    from gae.paths import DataDir

    dd = DataDir.resolve(data_dir)
    moved = {}
    for table in ("tokens", "rollouts"):
        src = _partition_files(Path(staging_dir), table, run_id, iteration)
        dst = _partition_files(dd.root, table, run_id, iteration)
        manifest = src / PUBLISH_MANIFEST
        if manifest.exists():
            names = json.loads(manifest.read_text())["files"]
        else:
            names = sorted(p.name for p in src.glob("*.parquet")) if src.exists() else []
            if not names:
                continue  # nothing staged for this table
            atomic_write_json(manifest, {"files": names})
        dst.mkdir(parents=True, exist_ok=True)
        for name in names:
            if (src / name).exists():
                os.replace(src / name, dst / name)
            elif not (dst / name).exists():
                raise FileNotFoundError(
                    f"publish: {name} of {table} iteration {iteration} is neither staged in {src} nor in {dst}"
                )
        for stale in dst.glob("*.parquet"):
            if stale.name not in names:
                stale.unlink()
        moved[table] = str(dst)
    return moved


PUBLISH_MANIFEST = "_publish.json"


@task(name="complete-iteration", retries=2, retry_delay_seconds=1, retry_condition_fn=unless_disk_full)
def complete_iteration(
    data_dir: str, run_name: str, iteration: int, summary: dict, keep_staging: bool = False
) -> None:
    """Record iteration `iteration` as done in the run state (the resume point), last."""
    from gae.paths import DataDir
    from gae.runstate import RunState

    dd = DataDir.resolve(data_dir)
    state = RunState.load(dd.runs, run_name)
    state.last_completed_iteration = iteration
    state.history = [h for h in state.history if h.get("iteration") != iteration] + [
        {"iteration": iteration, **summary}
    ]
    state.save(dd.runs)
    if not keep_staging:
        shutil.rmtree(dd.iteration_dir(state.run_id, iteration) / "stage", ignore_errors=True)


@task(name="log-iteration")
def log_iteration(
    data_dir: str,
    run: dict,
    iteration: int,
    metrics: dict,
    samples: list[dict],
    experiment: str,
    *,
    timings: dict | None = None,
    n_tokens: int = 0,
    batch_dir: str | None = None,
    label: str | None = None,
) -> str:
    """Metrics and sample generations to MLflow (step = iteration), and Prefect artifacts:
    a markdown summary linking the MLflow run, and a table of sample generations.

    label: "baseline" for the pretrained policy's evaluation before iteration 0: its samples
    get their own MLflow table (`generations/baseline.json`) and Prefect artifact keys, apart
    from iteration 0's after its update.

    timings: wall seconds per stage (`rollout`, `reward`, `adv`, `store`, `update`, `eval`,
    `step`); they become `timing_s/*` and `perf/throughput` (stored tokens per second). The
    rollout's own split (`gen` sampling, `values` policy+critic pass, `ref` reference pass)
    comes from the batch's metadata in `batch_dir`."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from gae.tracking import Tracker, tracking_uri
    from gae.train import timing_metrics

    metrics = dict(metrics)
    if batch_dir is not None:
        meta = read_json(Path(batch_dir) / "batch.json").get("meta", {})
        metrics.update({f"timing_s/{k}": float(v) for k, v in (meta.get("timing_s") or {}).items()})
    if timings:
        # The trainer measured its own phases (update_actor or update_critic); keep those.
        metrics.update(
            {k: v for k, v in timing_metrics(timings, n_tokens=n_tokens).items() if k not in metrics}
        )

    tracker = Tracker.start(
        data_dir, run_id=run["run_id"], experiment=experiment, mlflow_run_id=run["mlflow_run_id"]
    )
    # A resumed run redoes the iteration it was killed in, which may have been logged already.
    tracker.log_metrics(metrics, step=iteration, only_new=bool(run.get("resumed")))
    if samples:
        tracker.log_generations(samples, iteration=iteration, name=label)
    uri = tracking_uri(data_dir)
    link = f"MLflow run `{run['mlflow_run_id']}` (tracking URI `{uri}`; open with `mlflow ui --backend-store-uri {uri}`)"
    keys = [
        "eval/reward/mean",
        "critic/score/mean",
        "critic/rewards/mean",
        "critic/advantages/mean",
        "critic/vf_explained_var",
        "actor/ppo_kl",
        "actor/pg_clipfrac",
        "actor/kl_coef",
        "response_length/mean",
        "timing_s/step",
    ]
    rows = "\n".join(f"| `{k}` | {metrics[k]:.4g} |" for k in keys if isinstance(metrics.get(k), int | float))
    key = f"{run['run_id']}-{label or f'it{iteration}'}".lower().replace("_", "-")[:100]
    create_markdown_artifact(
        key=f"summary-{key}"[:100],
        markdown=f"## {run['run_id']} {label or f'iteration {iteration}'}\n\n| metric | value |\n|---|---|\n"
        f"{rows}\n\n{link}\n",
        description=f"{label or f'iteration {iteration}'} of {run['run_id']}",
    )
    if samples:
        create_table_artifact(
            key=f"generations-{key}"[:100],
            table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in samples],
            description=f"sample generations, {label or f'iteration {iteration}'}",
        )
    if batch_dir is not None:
        log_token_views(data_dir, run, iteration, tracker, key=f"tokens-{key}"[:100])
    return run["mlflow_run_id"]


def log_token_views(data_dir: str, run: dict, iteration: int, tracker, *, key: str) -> float | None:
    """The iteration's token report and plots (issue 17): the HTML page to MLflow
    (`reports/iter-NNNNN.html`) and to `<data-dir>/reports/<run_id>/`, the plots to MLflow
    (`plots/<name>/iter-NNNNN.png`), and a Prefect markdown artifact that links the page and
    shows the best and worst rollouts. Read from the iteration's staging folder, since this
    runs before the iteration is published. Returns the seconds it took (`timing_s/report`),
    or None when it failed: a report must never fail an iteration."""
    import time

    from prefect.artifacts import create_markdown_artifact

    from gae import plots, report
    from gae.paths import DataDir
    from gae.tracking import tracking_uri

    t0 = time.perf_counter()
    dd = DataDir.resolve(data_dir)
    try:
        stage = dd.iteration_dir(run["run_id"], iteration) / "stage"
        root = stage if any((stage / "tokens").glob("*/*/*.parquet")) else dd.root
        built = report.build_iteration(root, run["run_id"], iteration)
        file = report.write(dd.root / "reports" / run["run_id"] / f"iter-{iteration:05d}.html", built.page)
        mlflow_path = tracker.log_report(built.page, iteration=iteration)
        tracker.log_figures(built.figures, iteration=iteration)
        thumb = {"advantage_by_position": plots.png_bytes(built.figures["advantage_by_position"], dpi=60)}
        uri = tracking_uri(dd)
        ui = None
        if uri.startswith(("http://", "https://")):  # a tracking server: its UI opens the artifact
            exp = tracker.client.get_run(tracker.run_id).info.experiment_id
            ui = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{tracker.run_id}/artifacts/{mlflow_path}"
        create_markdown_artifact(
            key=key,
            markdown=report.markdown(
                built.views,
                run_id=run["run_id"],
                iteration=iteration,
                report_file=str(file),
                mlflow_path=mlflow_path,
                mlflow_run_id=run["mlflow_run_id"],
                mlflow_url=ui,
                images=thumb,
            ),
            description=f"token report, iteration {iteration} of {run['run_id']}",
        )
    except Exception as exc:
        get_run_logger().warning("token report of iteration %d not logged: %s", iteration, exc)
        return None
    seconds = time.perf_counter() - t0
    tracker.log_metrics({"timing_s/report": seconds}, step=iteration)
    return seconds


@task(name="finish-run")
def finish_run(data_dir: str, run: dict, experiment: str, status: str = "finished") -> None:
    """Close the MLflow run (FINISHED or FAILED, with the training plot) and the run state."""
    from gae.paths import DataDir
    from gae.runstate import RunState
    from gae.tracking import Tracker

    dd = DataDir.resolve(data_dir)
    tracker = Tracker.start(
        dd, run_id=run["run_id"], experiment=experiment, mlflow_run_id=run["mlflow_run_id"]
    )
    tracker.finish("FINISHED" if status == "finished" else "FAILED")
    state = RunState.load(dd.runs, run["run_name"])
    if state is not None:
        state.status = status
        state.save(dd.runs)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
