"""Corpus ingest: files (or the embedded default corpus) into DuckDB's `documents`,
`ingest_errors` and `prompt_spans` (read through the view `prompts`).

Nothing lost, nothing twice. Every record read ends in exactly one of three places: a new
row of `documents`, a duplicate of one (same md5 over NFC text with whitespace runs
folded, within or across runs), or a row of `ingest_errors` naming the reason and where it
was. Each file is one transaction, so a failure halfway leaves none of its rows. A file that
cannot be read at all is one `unreadable` row and the other files are still read; a failure
to write (a full disk) aborts with one line and the ingest is recorded as failed in `ingests`
(`failures`).

The bulk work runs in DuckDB: JSON lines are cut into lines with numpy (zero-copy into an
Arrow binary column), then decoded, parsed, normalised and hashed by `sql/ingest/classify.sql`
in one vectorised pass. `read_json(format=newline_delimited, ignore_errors=true)` would be
faster still but cannot say which lines it skipped, and a quarantine must. JSON arrays, CSV
and Parquet go through DuckDB's own readers and `to_json(row)`, so one SQL path picks the
text field for every format. Only plain text is decoded in Python (per file or per block,
not per line). Prompts are cut by `sql/ingest/cut_prompts.sql`, one set-based pass per passage
number; `cut_passages` is the same rule in Python, the reference the tests compare against. A cut
prompt is stored as character spans of its document's text, not a copy (sql/schema/005_prompt_spans.sql).

Layout: `config` (options and summaries), `readers` (inputs, file formats, staging chunks; `csv_reader`
for CSV, `staging` for the chunk format), `writer` (the SQL pipeline over staged chunks), `text` (passage
cutting and normalisation, the Python references of the SQL), `corpus` (the embedded default corpus),
`failures` (what stops a file, what stops an ingest); `ingest` here runs them file by file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from gae.ingest.config import (
    BOM,
    DEFAULT_CORPUS_URI,
    FORMATS,
    REASONS,
    FileSummary,
    IngestConfig,
    IngestSummary,
)
from gae.ingest.corpus import MIN_DOC_CHARS, default_corpus, stdlib_doc_records
from gae.ingest.failures import (
    DiskFull,
    IngestAborted,
    ReadFailed,
    abort_error,
    describe,
    is_disk_full,
    is_read_failure,
)
from gae.ingest.readers import _chunks, _text_batch, file_format, resolve_inputs
from gae.ingest.staging import _stage
from gae.ingest.text import (
    BOUNDARY,
    LEAD,
    TRAIL,
    WS,
    content_hash,
    cut_passages,
    nfc_suspects,
    normalise,
    split_of,
)
from gae.ingest.writer import _exec, _Writer
from gae.paths import DataDir

__all__ = [
    "BOM",
    "BOUNDARY",
    "DEFAULT_CORPUS_URI",
    "FORMATS",
    "DiskFull",
    "IngestAborted",
    "LEAD",
    "MIN_DOC_CHARS",
    "REASONS",
    "TRAIL",
    "WS",
    "FileSummary",
    "IngestConfig",
    "IngestSummary",
    "content_hash",
    "cut_passages",
    "default_corpus",
    "file_format",
    "ingest",
    "new_ingest_id",
    "nfc_suspects",
    "normalise",
    "resolve_inputs",
    "split_of",
    "stdlib_doc_records",
]


def _units(con, files: list[Path], cfg: IngestConfig) -> Iterator[tuple[list[tuple[str, str, int]], object]]:
    """Transactions: ([(uri, format, bytes)], chunk factory). Each file is all-or-nothing; consecutive
    small text files share one transaction (still all-or-nothing each), because the fixed cost of the
    pipeline's statements (~0.1 s) would dominate a folder of thousands of small files. The size goes
    with the uri: a uri is percent-encoded (`my%20docs`) and is not parsed back into a path."""
    batch: list[tuple[Path, int]] = []
    size = 0

    def flush():
        srcs = [(p.as_uri(), "text", n) for p, n in batch]
        return srcs, (lambda ps=[p for p, _ in batch]: _text_batch(ps, cfg))

    for p in files:
        fmt = file_format(p)
        try:
            n = p.stat().st_size
        except OSError:  # gone since it was listed: its reader fails and quarantines it
            n = 0
        small = fmt == "text" and n < cfg.chunk_bytes // 16
        if small:
            batch.append((p, n))
            size += n
            if size >= cfg.chunk_bytes // 4 or len(batch) >= 2000:
                yield flush()
                batch, size = [], 0
            continue
        if batch:
            yield flush()
            batch, size = [], 0
        yield [(p.as_uri(), fmt, n)], (lambda p=p: _chunks(con, p, cfg))
    if batch:
        yield flush()


def _default_unit() -> tuple[list[tuple[str, str, int]], object]:
    tbl = default_corpus()
    if tbl.num_rows == 0:  # an interpreter installed without its .py sources and pydoc_data
        raise FileNotFoundError(
            "this Python ships no standard-library sources or help topics: pass corpus paths"
        )
    srcs = [(u, "text", 0) for u in dict.fromkeys(tbl["source"].to_pylist())]
    return srcs, (lambda: iter([(tbl, sum(len(x.encode()) for x in tbl["body"].to_pylist()))]))


def new_ingest_id() -> str:
    return time.strftime("ingest-%Y%m%dT%H%M%SZ-", time.gmtime()) + uuid.uuid4().hex[:6]


def ingest(
    paths: list[str | os.PathLike] | None,
    *,
    data_dir: DataDir | str | os.PathLike | None = None,
    options: IngestConfig | None = None,
    progress: Callable[..., None] | None = None,
) -> IngestSummary:
    """Ingest files, folders and globs (or, with paths=None, the embedded default corpus).

    Raises FileNotFoundError/ValueError before writing anything when a path does not exist or nothing
    readable is found. A file that cannot be read (truncated gzip, permission denied) is quarantined
    whole and the other files are still read (`IngestSummary.files_failed`). A failure to write aborts:
    IngestAborted (DiskFull, also an OSError, for a full disk) naming the database and the file, after
    rolling that file back; files committed before it stay, the ingest is recorded as failed in
    `ingests`, and rerunning the same command completes it. `progress`, when given, is called
    after each file (or group of small files) with files_done, files_total and bytes_read.
    """
    from gae.db import connect

    cfg = options or IngestConfig()
    t0 = time.perf_counter()
    files, skipped = resolve_inputs(list(paths)) if paths is not None else ([], [])
    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    # `gae ingest .` must not read the project's own data directory (Parquet, MLflow, checkpoints);
    # a file named explicitly is read wherever it is
    named = {Path(p).expanduser().resolve() for p in paths or []}
    ours = [f for f in files if dd.root.resolve() in f.parents and f not in named]
    if ours:
        files = [f for f in files if f not in ours]
        skipped += ours
        if not files:
            raise FileNotFoundError(f"nothing readable outside the data directory {dd.root}")
    summary = IngestSummary(
        ingest_id=new_ingest_id(), database=str(dd.db), skipped_files=[str(p) for p in skipped]
    )
    total = len(files) if paths is not None else 1
    # the default corpus is read before anything is written: an interpreter without it is an error of input
    default = _default_unit() if paths is None else None
    try:
        con = connect(dd, views=False)
    except Exception as exc:
        if is_disk_full(exc):  # the migrations could not be written
            raise abort_error(exc, database=str(dd.db), source=None, stored=0, total=total) from exc
        raise
    run = _Run(con, cfg, summary)
    failure: BaseException | None = None
    try:
        con.execute("set preserve_insertion_order = false")
        inputs = json.dumps([str(p) for p in paths]) if paths is not None else None
        _exec(con, "start_ingest", {"ingest_id": summary.ingest_id, "inputs": inputs})
        units = _units(con, files, cfg) if default is None else iter([default])
        for srcs, make_chunks in units:
            run.unit(srcs, make_chunks)
            if progress is not None:
                progress(files_done=len(summary.sources), files_total=total, bytes_read=summary.bytes_read)
        run.totals()
        _exec(con, "finish_ingest", run.record())
    except BaseException as exc:
        failure = exc
        _rollback(con)
        # best effort: a full disk may refuse this too, and then the row stays 'running' (interrupted)
        with contextlib.suppress(Exception):
            _exec(con, "fail_ingest", {**run.record(), "error": describe(exc)})
        if isinstance(exc, Exception):
            raise abort_error(
                exc, database=str(dd.db), source=run.current, stored=len(summary.sources), total=total
            ) from exc
        raise
    finally:
        try:
            con.close()  # checkpoints the write-ahead log into the file: a full disk can fail it too
        except Exception as exc:
            if failure is None:
                raise abort_error(
                    exc, database=str(dd.db), source=None, stored=len(summary.sources), total=total
                ) from exc
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _rollback(con) -> None:
    """Roll back whatever transaction is open. DuckDB ends a transaction itself when its commit fails
    (a full disk) and then refuses a rollback: that refusal must never replace the error that caused it."""
    with contextlib.suppress(Exception):
        con.execute("rollback")


def _reading(make_chunks) -> Iterator:
    """The chunks of a unit, with a reader's failure to read its file raised as ReadFailed (the file is
    quarantined whole) and every other error (writing, a full disk) passed on as it is (the ingest aborts)."""
    it = iter(make_chunks())
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            if is_read_failure(exc):
                raise ReadFailed(exc) from exc
            raise
        yield item


class _Run:
    """One ingest's units (a file, or small text files read together), each in a transaction of its own,
    and the summary they add up to."""

    def __init__(self, con, cfg: IngestConfig, summary: IngestSummary):
        self.con, self.summary = con, summary
        self.writer = _Writer(con, cfg, summary.ingest_id)
        self.by_reason: dict[str, int] = {}
        self.current: str | None = None  # the unit being written, for the abort message

    def unit(self, srcs: list[tuple[str, str, int]], make_chunks) -> None:
        self.current = (
            srcs[0][0] if len(srcs) == 1 else f"{srcs[0][0]} (or one of {len(srcs)} files read with it)"
        )
        try:
            self._write(srcs, make_chunks)
        except ReadFailed as exc:
            # Only a single file's reader raises: small text files read together stage their own failures.
            _rollback(self.con)
            uri, fmt, _ = srcs[0]
            whole = _stage(1, is_json=[False], reason=["unreadable"], detail=[describe(exc.cause)])
            self._write([(uri, fmt, 0)], lambda: iter([(whole, 0)]))
        self.current = None

    def _write(self, srcs: list[tuple[str, str, int]], make_chunks) -> None:
        per_file = {uri: FileSummary(source=uri, format=fmt) for uri, fmt, _ in srcs}
        reasons: dict[str, int] = {}
        prompts = nbytes = 0
        self.con.execute("begin transaction")
        self.writer.begin()
        for chunk, n in _reading(make_chunks):
            nbytes += n
            prompts += self.writer.add(chunk, srcs[0][0], per_file, reasons)
        self.writer.finish()
        self.con.execute("commit")
        if len(per_file) == 1:
            next(iter(per_file.values())).bytes = nbytes
        else:
            for uri, _, n in srcs:
                per_file[uri].bytes = n
        s = self.summary
        s.sources += per_file.values()
        s.bytes_read += nbytes
        s.prompts += prompts
        for k, v in reasons.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v

    def totals(self) -> None:
        s = self.summary
        s.files = len(s.sources)
        s.files_failed = sum(fs.error is not None for fs in s.sources)
        s.records = sum(fs.records for fs in s.sources)
        s.inserted = sum(fs.inserted for fs in s.sources)
        s.duplicates = sum(fs.duplicates for fs in s.sources)
        s.quarantined = sum(fs.quarantined for fs in s.sources)
        s.quarantined_by_reason = dict(sorted(self.by_reason.items()))

    def record(self) -> dict:
        """The `ingests` row's values: the totals of the files committed so far."""
        self.totals()
        s = self.summary
        keys = ("ingest_id", "files", "files_failed", "records", "inserted", "duplicates", "quarantined")
        return {**{k: getattr(s, k) for k in keys}, "prompts": s.prompts, "bytes_read": s.bytes_read}
