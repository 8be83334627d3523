"""`gae run`: the whole pipeline (ingest, pretraining, PPO iterations, registration)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

# Quiet, hermetic defaults for Prefect's embedded API (stack-notes.md); users' settings win.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def prefect_env() -> None:
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def option_values(
    data_dir, iterations, device, run_name, corpus, no_resume, executor=None, workers=None
) -> dict:
    """`gae run`'s typed options as config values. They go in as they are, not through YAML
    like `--set`: a run name "007" or "on" stays a string, a path with a quote stays that path."""
    cluster = {k: v for k, v in (("executor", executor), ("workers", workers)) if v is not None}
    return {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "iterations": iterations,
        "device": device,
        "run_name": run_name,
        "corpus": list(corpus) or None,
        "resume": False if no_resume else None,
        "cluster": cluster or None,
    }


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        preset: str = typer.Option(
            "default", help=(
                "smoke (under a minute on a CPU), default (the embedded demo), vc_ppo or vapo "
                "(the papers' settings at this scale); `gae config --preset NAME` prints one."
            ),
        ),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="YAML file with config values (see README)."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override one value: --set ppo.epochs=2 (repeatable)."
        ),
        data_dir: Path | None = typer.Option(
            None, help="Data directory (default: GAE_DATA_DIR or ./gae-data)."
        ),
        corpus: list[str] = typer.Option(
            [], help="Files, folders or globs to ingest (default: the embedded corpus)."
        ),
        iterations: int | None = typer.Option(None, help="PPO iterations."),
        device: str | None = typer.Option(None, help="auto, cpu or cuda."),
        run_name: str | None = typer.Option(None, help="Runs of one name resume each other."),
        no_resume: bool = typer.Option(
            False, "--no-resume", help="Start a new run even if one is unfinished."
        ),
        executor: str | None = typer.Option(
            None,
            help="local (one process) or ray (sharded over Ray workers; see README, 'Running on a cluster').",
        ),
        workers: int | None = typer.Option(None, help="Ray workers with --executor ray (cluster.workers)."),
    ) -> None:
        """Run rl-pipeline: ingest -> pretrain -> PPO iterations -> MLflow registry. Rerunning resumes."""
        prefect_env()
        from gae.config import load_config

        values = option_values(data_dir, iterations, device, run_name, corpus, no_resume, executor, workers)
        cfg = load_config(preset=preset, path=config, overrides=list(set_), values=values)
        if cfg.cluster.executor == "ray":  # one line now, not after Prefect has started
            from gae.distributed.cluster import check_address, import_ray, target_address

            address = target_address(cfg.cluster)
            import_ray(local_start=address is None)
            if address is not None:
                check_address(address)

        # Fail fast, before Prefect starts, when another run holds the data directory.
        from gae.lock import writer_lock
        from gae.paths import DataDir

        dd = DataDir.resolve(cfg.data_dir)
        dd.root.mkdir(parents=True, exist_ok=True)
        with writer_lock(dd.lock, what="gae run (checking)"):
            from gae.doctor import preflight

            preflight(dd, cfg.run_name)  # a broken database or run state: one line now, not minutes in

        from flows.pipeline import rl_pipeline
        from gae.summary import print_run_summary

        if os.environ.get("GAE_DEBUG") != "1":
            from gae.errors import brief_console_tracebacks

            brief_console_tracebacks()
        result = rl_pipeline(cfg)
        print_run_summary(result, cfg)
