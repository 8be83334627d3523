"""Inputs and readers: paths to files, files to staged Arrow chunks (the columns classify.sql reads;
`staging`). CSV has a module of its own (`csv_reader`)."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gae.ingest.config import BOM, FORMATS, IngestConfig
from gae.ingest.csv_reader import _csv
from gae.ingest.staging import _open, _peek, _rows_as_json, _stage

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


# ---------------------------------------------------------------- inputs


def resolve_inputs(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Files to read (sorted, unique) and unsupported files skipped inside folders or globs.

    A path that exists is taken literally, even when its name holds `*`, `?` or `[` (a folder
    `data [2024]`); only a path that does not exist is tried as a glob. Inside a folder (or a
    folder a glob matched), files with a hidden part below it (`.venv/`, `.git/`, `.DS_Store`) are
    not corpus; a hidden file or folder named by the user is read.

    A path that does not exist, a glob matching nothing, or a named file of an unsupported
    type is an error; nothing readable at all is an error too.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        s = str(raw)
        p = Path(s).expanduser()
        if p.exists():
            if p.is_file():
                if file_format(p) is None:
                    raise ValueError(
                        f"{p}: unsupported file type (supported: {', '.join(sorted(FORMATS))}, and .gz of them)"
                    )
                files.append(p.resolve())
                continue
            candidates = _folder_files(p)
        elif any(c in s for c in "*?["):
            # glob's own default skips hidden names the pattern does not spell out
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(s), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"no file matches {s}")
            candidates = [m for m in matches if m.is_file()] + [
                f for m in matches if m.is_dir() for f in _folder_files(m)
            ]
        else:
            raise FileNotFoundError(f"no such file or directory: {s}")
        for f in candidates:
            (files if file_format(f) else skipped).append(f.resolve())
    files = list(dict.fromkeys(files))
    if not files:
        raise FileNotFoundError(
            f"nothing readable in {', '.join(map(str, paths))}: no {', '.join(sorted(FORMATS))} (or .gz) files"
        )
    return files, skipped


def _folder_files(folder: Path) -> list[Path]:
    """Files under a folder, sorted, leaving out any with a hidden part below the folder: a hidden
    file (.DS_Store, editor swap files) or one inside a hidden folder (.venv, .git, .pytest_cache)."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # not descended into at all
        out += [Path(root, n) for n in names if not n.startswith(".")]
    return sorted(f for f in out if f.is_file())


def file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


# ---------------------------------------------------------------- staging (readers)


def _line_chunk(buf: bytes, first_line: int, base_offset: int) -> pa.Table:
    """Cut a buffer of whole lines into an Arrow binary column without copying (offsets from numpy)."""
    import numpy as np
    import pyarrow as pa

    arr = np.frombuffer(buf, np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(arr == 10) + 1)).astype(np.int64)
    if starts[-1] == len(buf):  # the buffer ends with a newline: no line after it
        starts = starts[:-1]
    n = len(starts)
    offsets = np.concatenate((starts, [len(buf)])).astype(np.int64)
    raw = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf)]
    )

    # from_buffers, not pa.array(ndarray): that imports pandas (1.4 s) on first use
    def i64(a):
        return pa.Array.from_buffers(
            pa.int64(), n, [None, pa.py_buffer(np.ascontiguousarray(a, dtype=np.int64))]
        )

    ones = np.packbits(np.ones(n, bool), bitorder="little")
    return _stage(
        n,
        line=i64(np.arange(first_line, first_line + n)),
        byte_offset=i64(starts + base_offset),
        raw=raw,
        is_json=pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(ones)]),
    )


def _jsonl_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[pa.Table, int]]:
    """(staged chunk, bytes) per ~chunk_bytes of whole lines; line numbers and offsets run on across chunks."""
    line, offset, carry = 1, 0, b""
    with _open(path) as f:
        first = True
        while True:
            block = f.read(chunk_bytes)
            buf = carry + block
            if first and buf.startswith(BOM):
                buf, offset = buf[3:], 3
            first = False
            if not block:
                if buf:
                    yield _line_chunk(buf, line, offset), len(buf)
                return
            cut = buf.rfind(b"\n") + 1
            if cut == 0:  # one line longer than the chunk: keep reading
                carry = buf
                continue
            body, carry = buf[:cut], buf[cut:]
            chunk = _line_chunk(body, line, offset)
            yield chunk, len(body)
            line += chunk.num_rows
            offset += len(body)


def _first_line(path: Path, limit: int) -> bytes:
    """The file's first non-blank line, whole (read on until its newline, not a fixed peek: a JSON line
    may be far longer than any block), or its first `limit` bytes where no newline comes by then."""
    buf = bytearray()
    start = -1  # where the first non-whitespace byte is, once seen
    with _open(path) as f:
        while len(buf) < limit:
            block = f.read(1 << 16)
            if not block:
                break
            from_ = len(buf)
            buf += block
            if from_ == 0 and buf.startswith(BOM):
                del buf[:3]
                from_ = 0
            if start < 0:
                rest = bytes(buf[from_:])
                lead = len(rest) - len(rest.lstrip())
                if lead == len(rest):
                    continue
                start = from_ + lead
            end = buf.find(b"\n", max(start, from_))
            if end >= 0:
                return bytes(buf[start:end])
    return bytes(buf[max(start, 0) : max(start, 0) + limit])


def _json_kind(path: Path, limit: int = 8 << 20) -> str:
    """'array' for a top-level JSON array, 'object' for one (pretty-printed) object, else 'lines'.

    Decided on the first complete line: JSON lines whose first record is longer than a fixed peek
    would otherwise look like the start of one object, and the whole file be quarantined as
    malformed. A first line with no newline within `limit` bytes is one long line: JSON lines.
    """
    first = _first_line(path, limit)
    if first.startswith(b"["):
        return "array"
    if first.startswith(b"{"):
        if len(first) >= limit:
            return "lines"
        try:
            json.loads(first)
            return "lines"
        except (ValueError, UnicodeDecodeError):
            return "object"
    return "lines"


def _whole_file_error(path: Path, cfg: IngestConfig) -> pa.Table:
    """Where a whole-file reader failed, find the first fault in Python for a precise location."""
    with _open(path) as f:
        data = f.read()
    if data.startswith(BOM):
        data = data[3:]
    raw = data[: cfg.raw_max_chars]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _stage(
            1, byte_offset=[exc.start], raw=[raw], is_json=[False], reason=["invalid_utf8"], detail=[str(exc)]
        )
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return _stage(
            1, line=[exc.lineno], byte_offset=[len(text[: exc.pos].encode())], body=[text[: cfg.raw_max_chars]],
            is_json=[True], reason=["malformed_json"], detail=[f"{exc.msg} at line {exc.lineno} column {exc.colno}"],
        )  # fmt: skip
    return _stage(1, body=[text], line=[1], record=[1], is_json=[True])


def _json_array(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> pa.Table:
    import duckdb

    try:
        # read_json_objects keeps each element as JSON text, so malformed fields are judged per element
        return con.sql(
            """select null::bigint as line, row_number() over () as record, null::bigint as byte_offset,
                      null::blob as raw, json::varchar as body, true as is_json, null::varchar as meta,
                      null::varchar as reason, null::varchar as detail, null::varchar as source
               from read_json_objects($path, format = 'array', maximum_object_size = $max_obj)""",
            params={"path": str(path), "max_obj": max(16 << 20, 8 * cfg.max_chars)},
        ).to_arrow_table()
    except duckdb.Error:
        return _whole_file_error(path, cfg)


def _parquet(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> pa.Table:
    import duckdb

    try:
        if path.suffix.lower() == ".gz":  # DuckDB reads Parquet files, not gzip around them
            import tempfile

            with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp, _open(path) as f:
                tmp.write(f.read())
                tmp.flush()
                return _rows_as_json(con, "read_parquet($path)", {"path": tmp.name})
        return _rows_as_json(con, "read_parquet($path)", {"path": str(path)})
    except duckdb.Error as exc:
        return _stage(
            1, raw=[_peek(path, cfg.raw_max_chars)], is_json=[False], reason=["unreadable"], detail=[str(exc)]
        )


_BLANK_RUN = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")


def _text(path: Path, cfg: IngestConfig) -> pa.Table:
    return _stage_records(_text_records(path, cfg))


def _text_records(path: Path, cfg: IngestConfig) -> list[dict]:
    """A plain-text file's records (one, or one per blank-line block), as staging columns' values."""
    with _open(path) as f:
        data = f.read()
    if data.startswith(BOM):
        data = data[3:]
    if not cfg.split_paragraphs:
        return [_text_record(data, 1, 1, 0, cfg)]
    recs = []
    start, line = 0, 1
    for m in [*_BLANK_RUN.finditer(data), None]:
        end = m.start() if m else len(data)
        block = data[start:end]
        if block.strip():
            lead = len(block) - len(block.lstrip())
            recs.append(
                _text_record(
                    block.strip(), line + block.count(b"\n", 0, lead), len(recs) + 1, start + lead, cfg
                )
            )
        if m is None:
            break
        line += data.count(b"\n", start, m.end())
        start = m.end()
    # an empty or whitespace-only file is one empty record, so the quarantine shows it
    return recs or [_text_record(data, 1, 1, 0, cfg)]


def _stage_records(recs: list[dict]) -> pa.Table:
    """Records (dicts of staging column values) as one staged table: building Arrow arrays per record
    cost ~1 ms a file, most of the Python time of a folder of small text files."""
    keys = {k for r in recs for k in r}
    return _stage(len(recs), **{k: [r.get(k) for r in recs] for k in keys})


def _text_record(data: bytes, line: int, record: int, offset: int, cfg: IngestConfig) -> dict:
    try:
        return {
            "line": line,
            "record": record,
            "byte_offset": offset,
            "body": data.decode("utf-8"),
            "is_json": False,
        }
    except UnicodeDecodeError as exc:
        return {
            "line": line + data.count(b"\n", 0, exc.start),
            "record": record,
            "byte_offset": offset + exc.start,
            "raw": data[: cfg.raw_max_chars],
            "is_json": False,
            "reason": "invalid_utf8",
            "detail": f"invalid UTF-8 byte at offset {offset + exc.start}",
        }


def _chunks(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> Iterator[tuple[pa.Table, int]]:
    fmt = file_format(path)
    size = path.stat().st_size
    # the longest line a record within max_chars can be: 6 bytes a character (\uXXXX escapes)
    kind = _json_kind(path, 6 * cfg.max_chars + (1 << 16)) if fmt == "json" else None
    if fmt == "jsonl" or kind == "lines":
        yield from _jsonl_chunks(path, cfg.chunk_bytes)
    elif fmt in ("json", "csv", "parquet"):
        # DuckDB's readers run on a cursor of their own: a reader error (a malformed file) must not
        # abort the file's transaction on the main connection, it becomes a quarantined record
        cur = con.cursor()
        try:
            if fmt == "json":
                yield (_json_array(cur, path, cfg) if kind == "array" else _whole_file_error(path, cfg)), size
            elif fmt == "csv":
                yield _csv(cur, path, cfg), size
            else:
                yield _parquet(cur, path, cfg), size
        finally:
            cur.close()
    else:
        yield _text(path, cfg), size


def _text_batch(paths: list[Path], cfg: IngestConfig) -> Iterator[tuple[pa.Table, int]]:
    """Small text files staged together: one pipeline pass instead of ~20 statements per file. A file that
    cannot be read is staged as one `unreadable` record of its own; the others are read as usual."""
    from gae.ingest.failures import describe, is_read_failure

    recs, nbytes = [], 0
    for p in paths:
        try:
            file_recs = _text_records(p, cfg)
            nbytes += p.stat().st_size
        except Exception as exc:
            if not is_read_failure(exc):
                raise
            file_recs = [{"is_json": False, "reason": "unreadable", "detail": describe(exc)}]
        uri = p.as_uri()
        recs += [{**r, "source": uri} for r in file_recs]
    yield _stage_records(recs), nbytes
