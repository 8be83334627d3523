"""`gae ingest`: files, folders and globs (or the embedded default corpus) into the project's DuckDB."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_cmd(
        paths: list[str] = typer.Argument(
            None,
            help="Files, folders (recursive) or globs: .txt .md .jsonl .json .csv .parquet, each optionally .gz. "
            "None: the embedded default corpus (the Python standard library's docstrings and help topics).",
            show_default=False,
        ),
        data_dir: Path = typer.Option(
            None, "--data-dir", help="Data directory (default: $GAE_DATA_DIR or ./gae-data)."
        ),
        text_field: str = typer.Option(
            "text", help="JSON/CSV/Parquet field with the text; a list of strings is joined."
        ),
        prompt_field: str = typer.Option("prompt", help="Field with an explicit prompt (used as-is)."),
        reference_field: str = typer.Option(
            "reference", help="Field with the reference continuation or answer."
        ),
        split_paragraphs: bool = typer.Option(
            False,
            "--split-paragraphs",
            help="Plain text: one document per blank-line block instead of per file.",
        ),
        eval_fraction: float = typer.Option(0.05, help="Share of documents (by id hash) put in split eval."),
        prompt_chars: int = typer.Option(240, help="Longest cut prompt, in characters (ends at a sentence)."),
        reference_chars: int = typer.Option(
            240, help="Longest reference, in characters (ends at a sentence)."
        ),
        max_prompts: int = typer.Option(4, help="Prompts cut from one document at most (0: none)."),
        max_chars: int = typer.Option(1_000_000, help="Longer records are quarantined as too_large."),
        csv_header: bool = typer.Option(
            None,
            "--csv-header/--no-csv-header",
            help="CSV files have a header row / have none. Default: decided per file (DuckDB's sniffer, and "
            "whether the first row names the text field); where it cannot be told, the file's records are "
            "quarantined as csv_no_header.",
            show_default=False,
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Read a corpus into DuckDB: documents (deduplicated), prompts, and a quarantine of bad records.

        Re-running on the same files adds nothing. Exit code 0 when the input was read, even with
        quarantined records (listed by `gae query ingest_errors_by_reason`) or files that could not be
        read at all (quarantined whole; the summary names them). Exit code 1 when writing failed (a
        full disk): free space and rerun, files already stored add nothing.
        """
        from gae.ingest import IngestConfig, ingest
        from gae.lock import writer_lock
        from gae.paths import DataDir
        from gae.progress import Progress, ingest_progress

        cfg = IngestConfig(
            text_field=text_field,
            prompt_field=prompt_field,
            reference_field=reference_field,
            split_paragraphs=split_paragraphs,
            eval_fraction=eval_fraction,
            prompt_chars=prompt_chars,
            reference_chars=reference_chars,
            max_prompts_per_document=max_prompts,
            max_chars=max_chars,
            csv_header=csv_header,
        )
        dd = DataDir.resolve(data_dir)
        dd.root.mkdir(parents=True, exist_ok=True)
        # One writer per data directory: a running flow holds this lock, and DuckDB's own lock would
        # otherwise fail later with a less helpful message.
        # --json is for scripts: no bar and no progress lines
        emit = (lambda line: None) if as_json else _stderr
        with (
            writer_lock(dd.lock, what="gae ingest"),
            Progress("ingest", unit="files", emit=emit, tty=False if as_json else None) as bar,
        ):
            summary = ingest(paths or None, data_dir=dd, options=cfg, progress=ingest_progress(bar))
            bar.update(completed=summary.files, total=summary.files)  # the last file's chunks are in
        typer.echo(summary.model_dump_json(indent=2) if as_json else summary.render())


def _stderr(line: str) -> None:
    typer.echo(line, err=True)
