"""`gae models` (registry versions and aliases) and `gae generate` (text from a registered policy).

Only typer at import time: mlflow and torch load inside the command bodies.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

DATA_DIR_HELP = (
    "Data directory (default: GAE_DATA_DIR or ./gae-data); MLFLOW_TRACKING_URI overrides its store."
)


def _positive(value: float) -> float:
    # click's FloatRange(min_open=True) is not exposed by typer.Option; same as RolloutConfig.top_p (gt=0)
    if value <= 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        name: str | None = typer.Argument(None, help="Registered model name (default: every model)."),
        data_dir: Path | None = typer.Option(None, help=DATA_DIR_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Registered policy versions with their aliases (champion, candidate) and eval scores."""
        from rich.console import Console
        from rich.table import Table

        from gae.registry import list_versions
        from gae.tracking import tracking_uri

        rows = list_versions(name, data_dir=data_dir)
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        console = Console()
        if not rows:
            console.print(f"no registered models at {tracking_uri(data_dir)}: a pipeline run registers one")
            return
        table = Table(title=f"model registry ({tracking_uri(data_dir)})")
        for col in ("model", "version", "aliases", "eval score", "champion's then", "source (run:iteration)"):
            table.add_column(col, overflow="fold")
        for r in rows:
            score = f"{r['eval_score']:.4f}" if r["eval_score"] is not None else "-"
            then = r["champion_eval_score"]
            then = f"{float(then):.4f}" if then not in (None, "None", "") else "-"
            aliases = ", ".join(r["aliases"]) or "-"
            table.add_row(r["name"], str(r["version"]), aliases, score, then, r["source"] or "-")
        console.print(table)
        console.print("load one with: mlflow.pyfunc.load_model('models:/<model>@champion')")

    @app.command("generate")
    def generate(
        prompts: list[str] = typer.Argument(..., help="One or more prompts."),
        model: str = typer.Option(
            "gae-policy@champion",
            "--model",
            "-m",
            help="name@alias, name/version, or a models:/ or runs:/ URI.",
        ),
        max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
        temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature (0: greedy)."),
        top_p: float = typer.Option(
            1.0, max=1.0, callback=_positive, help="Nucleus sampling mass, in (0, 1] (1: off)."
        ),
        seed: int = typer.Option(-1, help="Sampling seed (-1: random)."),
        data_dir: Path | None = typer.Option(None, help=DATA_DIR_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {prompt, text}."),
    ) -> None:
        """Generate with a registered policy, loaded through MLflow exactly as other users load it."""
        from gae.device import configure_threads
        from gae.registry import load_policy

        configure_threads("auto")  # one torch thread on 2-core machines (faster there, see bench/RESULTS.md)

        try:
            policy = load_policy(model, data_dir=data_dir)
        except Exception as exc:  # MlflowException: unknown name, alias or version
            raise ValueError(f"cannot load model {model!r}: {exc}") from exc
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        texts = policy.predict(list(prompts), params=params)
        if as_json:
            typer.echo(json.dumps([{"prompt": p, "text": t} for p, t in zip(prompts, texts, strict=True)]))
            return
        for p, t in zip(prompts, texts, strict=True):
            typer.echo(f"{p}{t}" if len(prompts) == 1 else f"--- {p!r}\n{p}{t}")
