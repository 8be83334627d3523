"""Corpus ingest: files (or the embedded default corpus) into DuckDB's `documents`,
`ingest_errors` and `prompt_spans` (read through the view `prompts`).

Nothing lost, nothing twice. Every record read ends in exactly one of three places: a new
row of `documents`, a duplicate of one (same md5 over NFC text with whitespace runs
folded, within or across runs), or a row of `ingest_errors` naming the reason and where it
was. Each file is one transaction, so a failure halfway leaves none of its rows.

The bulk work runs in DuckDB: JSON lines are cut into lines with numpy (zero-copy into an
Arrow binary column), then decoded, parsed, normalised and hashed by `sql/ingest/classify.sql`
in one vectorised pass. `read_json(format=newline_delimited, ignore_errors=true)` would be
faster still but cannot say which lines it skipped, and a quarantine must. JSON arrays, CSV
and Parquet go through DuckDB's own readers and `to_json(row)`, so one SQL path picks the
text field for every format. Only plain text is decoded in Python (per file or per block,
not per line). Prompts are cut by `sql/ingest/cut_prompts.sql`, one set-based pass per passage
number; `cut_passages` is the same rule in Python, the reference the tests compare against. A cut
prompt is stored as character spans of its document's text, not a copy (sql/schema/005_prompt_spans.sql).

Layout: `config` (options and summaries), `readers` (inputs, file formats, staging chunks),
`writer` (the SQL pipeline over staged chunks), `text` (passage cutting and normalisation, the Python
references of the SQL), `corpus` (the embedded default corpus); `ingest` here runs them file by file.
"""

from __future__ import annotations

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
from gae.ingest.readers import _chunks, _text_batch, file_format, resolve_inputs
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
from gae.ingest.writer import _Writer
from gae.paths import DataDir

__all__ = [
    "BOM",
    "BOUNDARY",
    "DEFAULT_CORPUS_URI",
    "FORMATS",
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
        n = p.stat().st_size
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

    Raises FileNotFoundError/ValueError before writing anything when a path does not
    exist or nothing readable is found; RuntimeError (naming the file) when a file fails
    halfway, after rolling that file back. `progress`, when given, is called after every
    chunk with files_done, files_total (None for the embedded corpus) and bytes_read.
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
    con = connect(dd, views=False)
    con.execute("set preserve_insertion_order = false")
    try:
        writer = _Writer(con, cfg, summary.ingest_id)
        by_reason: dict[str, int] = {}
        units = _units(con, files, cfg) if paths is not None else iter([_default_unit()])
        for srcs, make_chunks in units:
            per_file = {uri: FileSummary(source=uri, format=fmt) for uri, fmt, _ in srcs}
            unit_reasons: dict[str, int] = {}
            prompts = 0
            con.execute("begin transaction")
            try:
                writer.begin()
                for chunk, nbytes in make_chunks():
                    summary.bytes_read += nbytes
                    if len(per_file) == 1:
                        next(iter(per_file.values())).bytes += nbytes
                    prompts += writer.add(chunk, srcs[0][0], per_file, unit_reasons)
                    if progress is not None:
                        progress(
                            files_done=len(summary.sources),
                            files_total=len(files) or None,
                            bytes_read=summary.bytes_read,
                        )
                writer.finish()
                con.execute("commit")
            except BaseException as exc:
                con.execute("rollback")
                if isinstance(exc, Exception):
                    names = (
                        srcs[0][0]
                        if len(srcs) == 1
                        else f"{srcs[0][0]} (or one of {len(srcs)} files read with it)"
                    )
                    raise RuntimeError(
                        f"{names}: ingest failed and none of its rows were kept: {exc}"
                    ) from exc
                raise
            if len(per_file) > 1:
                for uri, _, nbytes in srcs:
                    per_file[uri].bytes = nbytes
            summary.sources += per_file.values()
            summary.prompts += prompts
            for k, v in unit_reasons.items():
                by_reason[k] = by_reason.get(k, 0) + v
        summary.files = len(summary.sources)
        for fs in summary.sources:
            summary.records += fs.records
            summary.inserted += fs.inserted
            summary.duplicates += fs.duplicates
            summary.quarantined += fs.quarantined
        summary.quarantined_by_reason = dict(sorted(by_reason.items()))
    finally:
        con.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary
