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

        from gae.paths import DataDir

        dd = DataDir.resolve(data_dir)
        states, broken = read_states(dd)
        live = live_holder(dd)
        shown = [{**s.__dict__, "status": shown_status(s, live)} for s in states]
        if as_json:  # `status` one word for scripts; what the state file says stays beside it
            rows = [
                {
                    **row,
                    "status": row["status"].split(" ")[0],
                    "recorded_status": s.status,
                    "detail": row["status"],
                }
                for s, row in zip(states, shown, strict=True)
            ]
            typer.echo(json.dumps(rows, indent=2))
            for _path, reason in broken:
                typer.secho(f"warning: {reason}", err=True, fg=typer.colors.YELLOW)
            return
        console = Console()
        if live.get("alive"):
            console.print(f"[yellow]a run holds {dd.root}: {live['describe']}[/yellow]")
        for _path, reason in broken:
            typer.secho(f"warning: {reason}", err=True, fg=typer.colors.YELLOW)
        problem = database_problem(dd)
        if problem:
            typer.secho(f"warning: {problem}", err=True, fg=typer.colors.YELLOW)
        if not states:
            if not broken:
                console.print(f"no runs in {dd.root} yet: start one with [bold]gae run[/bold]")
            return
        table = Table(title=f"runs in {dd.root}")
        table.add_column("run", no_wrap=True)
        for col in ("status", "iters", *KEY_METRICS.values(), "updated"):
            table.add_column(col)
        for s, row in zip(states, shown, strict=True):
            last = s.history[-1] if s.history else {}
            table.add_row(
                s.run_id,
                row["status"],
                str(s.last_completed_iteration + 1),
                *(f"{last[k]:.4g}" if isinstance(last.get(k), int | float) else "-" for k in KEY_METRICS),
                s.updated_at,
            )
        console.print(table)


def read_states(dd) -> tuple[list, list[tuple[Path, str]]]:
    """Run states of a data directory, newest first, and (path, reason) of those that do not parse."""
    from gae.runstate import RunState

    states, broken = [], []
    if dd.runs.exists():
        for p in sorted(dd.runs.glob("*.state.json"), key=lambda q: q.stat().st_mtime, reverse=True):
            try:
                states.append(RunState.read(p))
            except ValueError as exc:
                broken.append((p, str(exc)))
    return states, broken


def live_holder(dd) -> dict:
    """The writer lock's holder record, whether it is alive (the kernel's flock, not the pid) and
    the run name it is working on."""
    from gae.lock import describe_holder, is_held, read_holder

    holder = read_holder(dd.lock)
    alive = is_held(dd.lock)
    what = str(holder.get("what") or "")
    return {
        **holder,
        "alive": alive,
        "run_name": what.removeprefix("rl-pipeline run ") if what.startswith("rl-pipeline run ") else None,
        "describe": describe_holder(holder),
    }


def shown_status(state, live: dict) -> str:
    """A state file says "running" until its run marks it otherwise; a run killed with SIGKILL
    (or one whose disk filled up before it could write "failed") never does. Only the lock's
    live holder can be running, so any other "running" run was interrupted (issue 12)."""
    if state.status != "running":
        return state.status
    if live.get("alive") and live.get("run_name") in (None, state.run_name):
        return "running"
    pid = live.get("pid")
    if pid is not None and not live.get("alive"):
        return f"interrupted (pid {pid} not running)"
    return "interrupted (rerun the same command to resume)"


def database_problem(dd) -> str | None:
    """Why gae.duckdb does not open read-only, when it exists and does not; None otherwise."""
    if not dd.db.exists():
        return None
    from gae.db import connect

    try:
        connect(dd, read_only=True, views=False).close()
    except RuntimeError as exc:
        if "is locked by" in str(exc):  # a live writer has it open: not a problem
            return None
        return str(exc)
    except OSError as exc:
        return str(exc)
    return None
