"""`gae doctor`: check a data directory; `--fix` moves what is broken to quarantine/."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
        fix: bool = typer.Option(
            False,
            "--fix",
            help="Move broken files to <data-dir>/quarantine/<time>/ with a note (never deletes), apply "
            "pending migrations, clear a dead writer's lock record.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON (for scripts)."),
    ) -> None:
        """Check the database, every store Parquet part, leftovers of killed writers, run states and
        the writer lock. Exit code 1 while an error remains (after --fix: one it could not fix)."""
        from gae import doctor as doc

        report = doc.fix(data_dir) if fix else doc.check(data_dir)
        if as_json:
            typer.echo(doc.as_json(report))
        else:
            for line in doc.summary_lines(report):
                color = {"ok": typer.colors.GREEN, "warning": typer.colors.YELLOW}.get(line.split()[0])
                typer.secho(line, fg=color or typer.colors.RED)
            note = doc.note_path(report)
            if note is not None:
                typer.echo(f"moved to {report.quarantine}; what and why: {note}")
            if not report.unresolved:
                typer.echo("healthy" if not report.problems or fix else "healthy (warnings above)")
            elif not fix:
                typer.echo("`gae doctor --fix` moves what is broken to quarantine/ (never deletes)")
        if report.unresolved:
            raise typer.Exit(1)
