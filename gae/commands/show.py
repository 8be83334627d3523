"""`gae show`: stored rollouts in the terminal, each token coloured by one of its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("show")
    def show(
        run: str | None = typer.Option(
            None, "--run", "-r", help="Run id, run name or id prefix (default: the run written last)."
        ),
        iteration: int | None = typer.Option(
            None, "--iteration", "-i", help="Iteration (default: the run's last stored one)."
        ),
        rollout: list[str] = typer.Option(
            [], "--rollout", help="A rollout id of the iteration (repeatable); replaces --best/--worst."
        ),
        by: str = typer.Option(
            "advantage",
            "--by",
            help="Colour by: advantage, reward, kl, value, return, logprob, ref_logprob, "
            "log_ratio (logprob - ref_logprob), train_logprob.",
        ),
        best: int | None = typer.Option(None, "--best", help="The K highest-scoring rollouts."),
        worst: int | None = typer.Option(None, "--worst", help="The K lowest-scoring rollouts."),
        sample: int = typer.Option(0, "--sample", help="K more rollouts in a seeded order."),
        scale: float | None = typer.Option(
            None, help="Half-width of the colour scale (default: max |value| of the tokens shown)."
        ),
        table: bool = typer.Option(True, "--table/--no-table", help="The numbers table under each rollout."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (numbers and colours) for scripts."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
    ) -> None:
        """Show rollouts token by token, coloured on a scale centred at 0 (default: the best and
        the worst rollout of the last iteration). Reads the stored Parquet only: no model needed."""
        from gae import tokenview as tv
        from gae.paths import DataDir

        col = tv.column_name(by)
        if scale is not None and not scale > 0:
            raise ValueError(f"--scale must be > 0, got {scale}")
        dd = DataDir.resolve(data_dir)
        con = tv.open_store(dd)
        try:
            stored = tv.resolve_run(con, run, dd.runs)
            it = tv.resolve_iteration(stored, iteration)
            if rollout:
                picks = [(rid, "selected") for rid in rollout]
            else:
                k_best, k_worst = (1, 1) if best is None and worst is None and not sample else (best, worst)
                picks = tv.pick(
                    con, stored["run_id"], it, best=k_best or 0, worst=k_worst or 0, sample=sample
                )
            views = tv.load(con, stored["run_id"], it, picks)
        finally:
            con.close()
        s = scale if scale is not None else tv.view_scale(views, col)
        if as_json:
            typer.echo(json.dumps(tv.to_json(views, run_id=stored["run_id"], iteration=it, by=col, scale=s)))
            return
        from rich.console import Console
        from rich.rule import Rule

        console = Console()
        console.print(f"run [bold]{stored['run_id']}[/bold]  iteration {it}")
        console.print(tv.legend(col, s))
        for v in views:
            console.print(Rule(style="grey50"))
            console.print(tv.header(v, it))
            console.print(tv.styled_text(v, col, s))
            if table:
                console.print()
                console.print(tv.numbers_table(v, col, s))
