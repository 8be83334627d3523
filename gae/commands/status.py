"""`gae status`: recent pipeline runs of a data directory with their key metrics."""

from __future__ import annotations

import json
from pathlib import Path

import typer

KEY_METRICS = {
    "eval/reward/mean": "eval reward",
    "critic/score/mean": "score",
    "actor/ppo_kl": "ppo kl",
    "critic/vf_explained_var": "expl. var",
}


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        data_dir: Path | None = typer.Option(
            None, help="Data directory (default: GAE_DATA_DIR or ./gae-data)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Recent runs: state, iterations done, and the key metrics of the last iteration."""
        from rich.console import Console
        from rich.table import Table

        from gae.lock import describe_holder, read_holder
        from gae.paths import DataDir
        from gae.runstate import RunState

        dd = DataDir.resolve(data_dir)
        states = []
        if dd.runs.exists():
            for p in sorted(dd.runs.glob("*.state.json"), key=lambda q: q.stat().st_mtime, reverse=True):
                states.append(RunState(**json.loads(p.read_text())))
        if as_json:
            typer.echo(json.dumps([s.__dict__ for s in states], indent=2))
            return
        console = Console()
        holder = read_holder(dd.lock)
        if holder:
            console.print(f"[yellow]a run holds {dd.root}: {describe_holder(holder)}[/yellow]")
        if not states:
            console.print(f"no runs in {dd.root} yet: start one with [bold]gae run[/bold]")
            return
        table = Table(title=f"runs in {dd.root}")
        table.add_column("run", no_wrap=True)
        for col in ("status", "iters", *KEY_METRICS.values(), "updated"):
            table.add_column(col)
        for s in states:
            last = s.history[-1] if s.history else {}
            table.add_row(
                s.run_id,
                s.status,
                str(s.last_completed_iteration + 1),
                *(f"{last[k]:.4g}" if isinstance(last.get(k), int | float) else "-" for k in KEY_METRICS),
                s.updated_at,
            )
        console.print(table)
