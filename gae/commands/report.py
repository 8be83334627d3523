"""`gae report`: the HTML token report of a stored run's iteration, written to a file."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run: str | None = typer.Option(
            None, "--run", "-r", help="Run id, run name or id prefix (default: the run written last)."
        ),
        iteration: list[int] = typer.Option(
            [], "--iteration", "-i", help="Iteration (repeatable; default: the run's last stored one)."
        ),
        all_iterations: bool = typer.Option(False, "--all", help="One report per stored iteration."),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            help="File (one iteration) or folder (default: <data-dir>/reports/<run>/iter-NNNNN.html).",
        ),
        best: int = typer.Option(3, help="Highest-scoring rollouts shown."),
        worst: int = typer.Option(3, help="Lowest-scoring rollouts shown."),
        sample: int = typer.Option(4, help="Further rollouts shown, in a seeded order."),
        seed: int = typer.Option(0, help="Seed of the sample."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
    ) -> None:
        """Write the self-contained HTML token report (best, worst and sampled rollouts, tokens
        coloured by advantage, every stored number on hover) of a stored run; prints the paths."""
        from gae import report as rp
        from gae import tokenview as tv
        from gae.paths import DataDir

        dd = DataDir.resolve(data_dir)
        con = tv.open_store(dd)
        try:
            stored = tv.resolve_run(con, run, dd.runs)
        finally:
            con.close()
        its = (
            list(stored["iterations"])
            if all_iterations
            else [tv.resolve_iteration(stored, i) for i in iteration]
        )
        its = its or [tv.resolve_iteration(stored, None)]
        run_id = stored["run_id"]
        for it in its:
            if out is not None and out.suffix.lower() in (".html", ".htm"):
                if len(its) > 1:
                    raise ValueError(f"--out {out} is one file; give a folder for {len(its)} iterations")
                path = out
            else:
                path = (out or dd.root / "reports" / run_id) / f"iter-{it:05d}.html"
            page = rp.build(dd, run_id, it, best=best, worst=worst, sample=sample, seed=seed)
            typer.echo(str(rp.write(path, page)))
