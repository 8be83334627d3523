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


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        preset: str = typer.Option(
            "default", help="smoke (under a minute, CPU) or default (the embedded demo)."
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
    ) -> None:
        """Run rl-pipeline: ingest -> pretrain -> PPO iterations -> MLflow registry. Rerunning resumes."""
        prefect_env()
        from gae.config import load_config

        overrides = list(set_)
        for key, val in (
            ("data_dir", data_dir),
            ("iterations", iterations),
            ("device", device),
            ("run_name", run_name),
        ):
            if val is not None:
                overrides.append(f"{key}={val}")
        if corpus:
            overrides.append(f"corpus={list(corpus)!r}".replace("'", '"'))
        if no_resume:
            overrides.append("resume=false")
        cfg = load_config(preset=preset, path=config, overrides=overrides)

        # Fail fast, before Prefect starts, when another run holds the data directory.
        from gae.lock import writer_lock
        from gae.paths import DataDir

        dd = DataDir.resolve(cfg.data_dir)
        dd.root.mkdir(parents=True, exist_ok=True)
        with writer_lock(dd.lock, what="gae run (checking)"):
            pass

        from flows.pipeline import rl_pipeline
        from gae.summary import print_run_summary

        result = rl_pipeline(cfg)
        print_run_summary(result, cfg)
