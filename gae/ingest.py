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
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gae.paths import DataDir

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
FORMATS[".parquet"] = "parquet"
REASONS = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "malformed_csv",
    "missing_field",
    "bad_field_type",
    "empty_text",
    "too_large",
    "unreadable",
)
BOM = b"\xef\xbb\xbf"
DEFAULT_CORPUS_URI = "python-stdlib:"


class IngestConfig(BaseModel):
    """How files become documents and prompts. Defaults live here and only here."""

    model_config = ConfigDict(extra="forbid")

    text_field: str = Field(
        "text", description="JSON/CSV/Parquet field holding the text; a list of strings is joined."
    )
    prompt_field: str = Field("prompt", description="Field with an explicit prompt, used as-is when present.")
    reference_field: str = Field("reference", description="Field with the reference continuation or answer.")
    list_joiner: str = Field(
        "\n", description="Joins the items of a list-valued field (a poem's `paragraphs`)."
    )
    split_paragraphs: bool = Field(
        False, description="Plain text: a document per blank-line block, not per file."
    )
    max_chars: int = Field(
        1_000_000, gt=0, description="Records with a longer text are quarantined as too_large."
    )
    raw_max_chars: int = Field(
        1000, gt=0, description="Characters of a rejected record kept in ingest_errors.raw."
    )
    eval_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Share of documents (by id hash) in split eval."
    )
    make_prompts: bool = Field(True, description="Cut prompts from documents that do not give one.")
    prompt_chars: int = Field(
        240, gt=0, description="A cut prompt ends at the last sentence boundary within this."
    )
    reference_chars: int = Field(
        240, gt=0, description="A reference ends at the last sentence boundary within this."
    )
    min_prompt_chars: int = Field(
        8, ge=1, description="Shortest cut prompt (8 suits CJK, where a clause is 7-8 characters)."
    )
    min_reference_chars: int = Field(
        8, ge=1, description="Shortest reference; shorter documents give no prompt."
    )
    max_prompts_per_document: int = Field(4, ge=0, description="Passages cut from one document at most.")
    csv_header: bool = Field(True, description="CSV files start with a header row.")
    chunk_bytes: int = Field(
        64 << 20, gt=0, description="JSON lines are staged in chunks of about this many bytes."
    )

    @field_validator("text_field", "prompt_field", "reference_field")
    @classmethod
    def _plain_key(cls, v: str) -> str:
        if not v or '"' in v or "\\" in v:
            raise ValueError(f"field name {v!r} must be non-empty and contain no quote or backslash")
        return v


class FileSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    format: str
    bytes: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0


class IngestSummary(BaseModel):
    """What one ingest did. records = inserted + duplicates + quarantined (nothing else happens to a record)."""

    model_config = ConfigDict(extra="forbid")

    ingest_id: str
    database: str
    files: int = 0
    skipped_files: list[str] = Field(
        default_factory=list, description="Unsupported files met inside folders."
    )
    bytes_read: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = Field(default_factory=dict)
    prompts: int = 0
    seconds: float = 0.0
    sources: list[FileSummary] = Field(default_factory=list)

    def render(self) -> str:
        mb = self.bytes_read / 1e6
        lines = [
            f"ingest {self.ingest_id} into {self.database}",
            f"  files        {self.files}"
            + (f" ({len(self.skipped_files)} unsupported skipped)" if self.skipped_files else ""),
            f"  read         {self.records} records, {mb:.1f} MB in {self.seconds:.2f} s",
            f"  inserted     {self.inserted} documents, {self.prompts} prompts",
            f"  duplicates   {self.duplicates}",
            f"  quarantined  {self.quarantined}",
        ]
        lines += [f"    {reason:<16}{n}" for reason, n in sorted(self.quarantined_by_reason.items())]
        if self.quarantined:
            lines.append("  see them with: gae query ingest_errors_by_reason")
        return "\n".join(lines)


# ---------------------------------------------------------------- inputs


def resolve_inputs(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Files to read (sorted, unique) and unsupported files skipped inside folders or globs.

    A path that does not exist, a glob matching nothing, or a named file of an unsupported
    type is an error; nothing readable at all is an error too.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        s = str(raw)
        if any(c in s for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(s), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"no file matches {s}")
            candidates = [m for m in matches if m.is_file()] + [
                f for m in matches if m.is_dir() for f in sorted(m.rglob("*")) if f.is_file()
            ]
        else:
            p = Path(s).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"no such file or directory: {s}")
            if p.is_file():
                if file_format(p) is None:
                    raise ValueError(
                        f"{p}: unsupported file type (supported: {', '.join(sorted(FORMATS))}, and .gz of them)"
                    )
                files.append(p.resolve())
                continue
            candidates = sorted(f for f in p.rglob("*") if f.is_file())
        for f in candidates:
            if any(part.startswith(".") for part in f.parts[-1:]):
                continue  # hidden files (.DS_Store, editor swap files) are not corpus
            (files if file_format(f) else skipped).append(f.resolve())
    files = list(dict.fromkeys(files))
    if not files:
        raise FileNotFoundError(
            f"nothing readable in {', '.join(map(str, paths))}: no {', '.join(sorted(FORMATS))} (or .gz) files"
        )
    return files, skipped


def file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _open(path: Path):
    import pyarrow as pa

    # pyarrow decompresses .gz in C, far faster than Python's gzip module
    return pa.input_stream(str(path), compression="gzip" if path.suffix.lower() == ".gz" else None)


# ---------------------------------------------------------------- staging (readers)

_STAGE_COLS = (
    "line",
    "record",
    "byte_offset",
    "raw",
    "body",
    "is_json",
    "meta",
    "reason",
    "detail",
    "source",
)


def _stage(n: int, **cols) -> pa.Table:
    """An Arrow table with the staging columns classify.sql reads; missing columns are null."""
    import pyarrow as pa

    types = {
        "line": pa.int64(),
        "record": pa.int64(),
        "byte_offset": pa.int64(),
        "raw": pa.large_binary(),
        "body": pa.large_string(),
        "is_json": pa.bool_(),
        "meta": pa.string(),
        "reason": pa.string(),
        "detail": pa.string(),
        "source": pa.string(),  # null: the unit's default source uri
    }
    arrays = []
    for name in _STAGE_COLS:
        v = cols.get(name)
        if v is None:
            arrays.append(pa.nulls(n, types[name]))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        else:
            arrays.append(pa.array(v, types[name]))
    return pa.Table.from_arrays(arrays, names=list(_STAGE_COLS))


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


def _peek(path: Path, n: int = 1 << 16) -> bytes:
    with _open(path) as f:
        head = f.read(n)
    return head[3:] if head.startswith(BOM) else head


def _json_kind(path: Path) -> str:
    """'array' for a top-level JSON array, 'object' for one (pretty-printed) object, else 'lines'."""
    head = _peek(path).lstrip()
    if head.startswith(b"["):
        return "array"
    if head.startswith(b"{"):
        first = head.split(b"\n", 1)[0]
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


def _rows_as_json(con: duckdb.DuckDBPyConnection, source_sql: str, params: dict) -> pa.Table:
    return con.sql(
        f"""select null::bigint as line, row_number() over () as record, null::bigint as byte_offset,
                   null::blob as raw, to_json(t)::varchar as body, true as is_json, null::varchar as meta,
                   null::varchar as reason, null::varchar as detail, null::varchar as source
            from {source_sql} as t""",
        params=params,
    ).to_arrow_table()


def _csv(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> pa.Table:
    import duckdb
    import pyarrow as pa

    con.execute("drop table if exists _csv_rejects")
    con.execute("drop table if exists _csv_scans")
    try:
        good = _rows_as_json(
            con,
            "read_csv($path, header = $header, all_varchar = true, store_rejects = true, "
            "rejects_table = '_csv_rejects', rejects_scan = '_csv_scans')",
            {"path": str(path), "header": cfg.csv_header},
        )
    except duckdb.Error as exc:
        if _is_empty(path):
            return _stage(0)
        return _stage(
            1, raw=[_peek(path, cfg.raw_max_chars)], is_json=[False], reason=["unreadable"], detail=[str(exc)]
        )
    bad = con.sql(
        # DuckDB may report several errors for one line: one quarantined record per line
        """select line::bigint as line, null::bigint as record, min(byte_position)::bigint as byte_offset,
                  null::blob as raw, any_value(csv_line)::varchar as body, false as is_json, null::varchar as meta,
                  case when bool_or(error_type::varchar ilike '%unicode%' or error_type::varchar ilike '%encoding%')
                       then 'invalid_utf8' else 'malformed_csv' end as reason,
                  string_agg(distinct error_message, '; ')::varchar as detail, null::varchar as source
           from _csv_rejects
           group by line
           order by line"""
    ).to_arrow_table()
    good, bad = _csv_physical_lines(path, good, bad, header=cfg.csv_header)
    return pa.concat_tables([good, bad.cast(good.schema)])


def _csv_record_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(1-based line where each CSV record starts, whether it is blank), for every record of the file in
    order, blank ones included: records end at a newline outside double quotes (a quoted field may hold
    newlines; a doubled quote inside one toggles twice, so the parity of the quotes before a newline
    says whether it is inside a field)."""
    import numpy as np

    with _open(path) as f:
        data = f.read()
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == 10)
    quotes = np.flatnonzero(a == 34)
    ends = nl[np.searchsorted(quotes, nl) % 2 == 0]  # newlines outside quotes end records
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(a)]))
    if stops[-1] == starts[-1]:  # the file ends with a newline: no record after it
        starts, stops = starts[:-1], stops[:-1]
    lines = np.searchsorted(nl, starts) + 1  # newlines before a record's start, plus one
    if len(data) and data.startswith(BOM):
        starts[0] += 3
    n = stops - starts
    blank = (n == 0) | ((n == 1) & (a[np.minimum(starts, max(len(a) - 1, 0))] == 13))
    return lines, blank


def _csv_physical_lines(
    path: Path, good: pa.Table, bad: pa.Table, *, header: bool
) -> tuple[pa.Table, pa.Table]:
    """Good CSV rows get the line where they start; quarantined ones the line instead of DuckDB's row count.

    DuckDB's reader numbers rows (header and blank rows included) and reports that number as the
    `line` of a rejected row; a quoted field spanning lines makes it differ from the line in the file.
    The records found by `_csv_record_lines` map both: DuckDB row r is record r, and the good rows are
    the records that are neither the header, blank nor rejected, in order. Where the counts disagree
    (a dialect the quote scan does not model: another quote character, a backslash escape before a
    newline, lone \r line ends), the lines are left as DuckDB gave them: null rather than wrong.
    """
    import numpy as np
    import pyarrow as pa

    lines, blank = _csv_record_lines(path)
    given = bad.column("line").to_pylist()
    if None in given:
        return good, bad
    rejected = np.asarray(given, dtype=np.int64) - 1
    if len(rejected) and (rejected.min() < 0 or rejected.max() >= len(lines)):
        return good, bad
    keep = ~blank
    keep[rejected] = False
    if header:
        first = np.flatnonzero(~blank)
        if len(first):
            keep[first[0]] = False
    good_lines = lines[keep]
    if len(good_lines) != good.num_rows:
        return good, bad
    good = good.set_column(good.schema.get_field_index("line"), "line", pa.array(good_lines, pa.int64()))
    bad = bad.set_column(bad.schema.get_field_index("line"), "line", pa.array(lines[rejected], pa.int64()))
    return good, bad


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


def _is_empty(path: Path) -> bool:
    return not _peek(path, 1 << 12).strip()


_BLANK_RUN = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")


def _text(path: Path, cfg: IngestConfig) -> pa.Table:
    with _open(path) as f:
        data = f.read()
    if data.startswith(BOM):
        data = data[3:]
    if not cfg.split_paragraphs:
        return _stage(1, **_text_record(data, 1, 1, 0, cfg))
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
    if not recs:  # an empty or whitespace-only file is one empty record, so the quarantine shows it
        return _stage(1, **_text_record(data, 1, 1, 0, cfg))
    keys = {k for r in recs for k in r}
    return _stage(len(recs), **{k: [r[k][0] if k in r else None for r in recs] for k in keys})


def _text_record(data: bytes, line: int, record: int, offset: int, cfg: IngestConfig) -> dict:
    try:
        return {
            "line": [line],
            "record": [record],
            "byte_offset": [offset],
            "body": [data.decode("utf-8")],
            "is_json": [False],
        }
    except UnicodeDecodeError as exc:
        return {
            "line": [line + data.count(b"\n", 0, exc.start)],
            "record": [record],
            "byte_offset": [offset + exc.start],
            "raw": [data[: cfg.raw_max_chars]],
            "is_json": [False],
            "reason": ["invalid_utf8"],
            "detail": [f"invalid UTF-8 byte at offset {offset + exc.start}"],
        }


# ---------------------------------------------------------------- prompts from plain text

# A prompt or reference ends at a sentence end (. ! ? with closing quotes/brackets, then whitespace),
# right after a CJK full stop, exclamation or question mark (CJK puts no space after them), or at a
# blank line. Greedy `.*` makes a match end at the LAST boundary of a window. No capture group:
# RE2 then finds the match with its DFA, 4x faster than with a submatch. Whitespace is spelled out
# because Python's \s is Unicode-wide and RE2's is ASCII.
BOUNDARY = r"""(?s).*(?:[.!?]["'”’)\]]*[ \t\n\r\f\v]|[。！？][”’」』）]*|\n[ \t\n\r\f\v]*\n)"""
WS = " \t\n\r\f\v\u00a0\u3000"
_WS_RE2 = "[ \\t\\n\\r\\f\\v\\x{00A0}\\x{3000}]"  # WS in RE2
LEAD, TRAIL = f"^{_WS_RE2}*", f"{_WS_RE2}*$"  # the WS a passage's span leaves out at either end


def cut_passages(
    text: str,
    *,
    prompt_chars: int,
    reference_chars: int,
    min_prompt_chars: int = 8,
    min_reference_chars: int = 8,
    max_passages: int = 4,
) -> list[tuple[str, str]]:
    """(prompt, reference) pairs: consecutive passages cut at sentence boundaries.

    The readable reference for sql/ingest/cut_prompts.sql, which ingest runs (set-based,
    one statement per passage number). A prompt ends at the last boundary within
    `prompt_chars` of its start, leaving at least `min_reference_chars` after it; its
    reference runs to the last boundary within `reference_chars`, or to the end of the text
    when that is nearer. A passage without such boundaries ends the cutting.
    """
    boundary = re.compile(BOUNDARY)
    n, out = len(text), []
    pos = n - len(text.lstrip(WS))
    while len(out) < max_passages and n - pos >= min_prompt_chars + min_reference_chars:
        m = boundary.match(text, pos, pos + min(prompt_chars, n - pos - min_reference_chars))
        p_raw = m.group(0) if m else ""
        if len(p_raw.strip(WS)) < min_prompt_chars:
            break
        pe = pos + len(p_raw)
        if n - pe <= reference_chars:
            r_raw = text[pe:]
        else:
            m = boundary.match(text, pe, pe + reference_chars)
            r_raw = m.group(0) if m else ""
        if len(r_raw.strip(WS)) < min_reference_chars:
            break
        out.append((p_raw.strip(WS), r_raw.strip(WS)))
        pos = pe + len(r_raw)
    return out


# ---------------------------------------------------------------- the embedded default corpus


# Folders and modules of the standard library whose docstrings are not prose worth training on.
_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "tkinter", "turtledemo",
               "ensurepip", "pydoc_data", "encodings", "__pycache__", "__phello__"}  # fmt: skip
_SKIP_FILES = {"this.py", "antigravity.py"}
_MODULE_DOC = re.compile(r"""\A(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*[rRuU]?(\"\"\"|''')""")
_DEF_DOC = re.compile(
    r"^[ \t]*(?:async[ \t]+)?(def|class)[ \t]+([A-Za-z]\w*)[ \t]*"  # public names only
    r"(?:\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\))?"  # parameters or bases, two levels of nesting
    r"[ \t]*(?:->[^:\n]*)?:[ \t]*(?:#[^\n]*)?\n"  # return annotation, colon, comment
    r"\s*[rRuU]?(\"\"\"|''')",  # the docstring opens
    re.M,
)
MIN_DOC_CHARS = 80


def _clean_doc(doc: str) -> str:
    """cleandoc, minus doctest blocks (a `>>>` line and what follows up to a blank line)."""
    import inspect

    out, in_doctest = [], False
    for line in inspect.cleandoc(doc).splitlines():
        if line.lstrip().startswith(">>>"):
            in_doctest = True
        elif not line.strip():
            in_doctest = False
        if not in_doctest:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _docstring_at(src: str, quote_end: int, quote: str) -> str | None:
    import ast

    close = src.find(quote, quote_end)
    if close < 0:
        return None
    start = quote_end - len(quote)
    if start > 0 and src[start - 1] in "rRuU":
        start -= 1
    try:
        value = ast.literal_eval(src[start : close + len(quote)])
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def stdlib_doc_records() -> Iterator[tuple[str, list[dict]]]:
    """(source uri, records) of the standard library's prose, in a fixed order.

    Docstrings are found by a regex over each module's source rather than `ast.parse`
    (7 s for the whole library on a 2-core machine) or importing (side effects).
    """
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune in place: site-packages alone holds thousands of files that are not the library
        dirnames[:] = [
            d for d in dirnames if d not in _SKIP_PARTS and not d.startswith(("test", "config-", "."))
        ]
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py") and f not in _SKIP_FILES]
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if path.name.startswith("test"):
            continue
        try:
            src = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found = []
        m = _MODULE_DOC.match(src)
        if m:
            found.append((m.end(1), m.group(1), "module", module))
        found += [(d.end(3), d.group(3), d.group(1), d.group(2)) for d in _DEF_DOC.finditer(src)]
        recs, line, pos = [], 1, 0
        for end, quote, kind, name in found:
            line += src.count("\n", pos, end)
            pos = end
            doc = _docstring_at(src, end, quote)
            text = _clean_doc(doc) if doc else ""
            if len(text) >= MIN_DOC_CHARS:
                meta = {"module": module, "kind": kind, "name": name}
                recs.append({"line": line, "record": len(recs) + 1, "text": text, "meta": meta})
        if recs:
            yield DEFAULT_CORPUS_URI + rel.as_posix(), recs
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out; the docstrings are enough
        return
    recs = [
        {"line": None, "record": i + 1, "text": topics[k].strip(), "meta": {"topic": k}}
        for i, k in enumerate(sorted(topics))
        if len(topics[k].strip()) >= MIN_DOC_CHARS
    ]
    yield DEFAULT_CORPUS_URI + "pydoc_data/topics.py", recs


def default_corpus() -> pa.Table:
    """The corpus every CPython has without a download, staged: docstrings of the standard
    library (read from its .py sources, never imported) and the Language Reference topics
    that `help()` shows (`pydoc_data.topics`). Deterministic for a given interpreter."""
    recs = [(uri, r) for uri, rs in stdlib_doc_records() for r in rs]
    return _stage(
        len(recs),
        source=[u for u, _ in recs],
        line=[r["line"] for _, r in recs],
        record=[r["record"] for _, r in recs],
        body=[r["text"] for _, r in recs],
        is_json=[False] * len(recs),
        meta=[json.dumps(r["meta"], ensure_ascii=False) for _, r in recs],
    )


# ---------------------------------------------------------------- normalisation


@functools.lru_cache(maxsize=1)
def nfc_suspects() -> str:
    """An RE2 character class of every character NFC might change or compose with its neighbour.

    A text with none of them is already NFC (Unicode UAX #15 quick check: all characters
    NFC_QC=Yes and combining class 0), so DuckDB's slow nfc_normalize is skipped for it. The
    class holds combining marks, characters whose NFC differs from themselves (singletons,
    composition exclusions), second halves of canonical pairs (NFC_QC=Maybe) and the Hangul
    vowel and trailing jamo (composed algorithmically). Built from this Python's unicodedata.
    """
    import unicodedata

    cps = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for cp in range(0x80, sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.combining(c) or unicodedata.normalize("NFC", c) != c:
            cps.add(cp)
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<") and len(d.split()) == 2:
            cps.add(int(d.split()[1], 16))
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


def normalise(text: str) -> str:
    """The text a content hash covers, in Python (the reference for classify.sql): NFC, runs of
    whitespace (ASCII and Unicode spaces) folded into one space, trimmed."""
    import unicodedata

    return re.sub(r"[ \t\n\v\f\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+", " ",
                  unicodedata.normalize("NFC", text)).strip(" ")  # fmt: skip


def content_hash(text: str) -> str:
    import hashlib

    return hashlib.md5(normalise(text).encode()).hexdigest()


def split_of(document_id: str, eval_fraction: float) -> str:
    """The split rule of select_new.sql: the id's first 8 hex digits mod 10000 against the fraction."""
    return "eval" if int(document_id[:8], 16) % 10000 < round(eval_fraction * 10000) else "train"


# ---------------------------------------------------------------- the pipeline


def _sql(name: str) -> str:
    from gae.db import load_sql

    if name not in _SQL_CACHE:
        _SQL_CACHE[name] = load_sql(f"ingest/{name}")
    return _SQL_CACHE[name]


_SQL_CACHE: dict[str, str] = {}


def _exec(con: duckdb.DuckDBPyConnection, name: str, params: dict):
    from gae.db import sql_param_names

    sql = _sql(name)
    return con.execute(sql, {k: params[k] for k in sql_param_names(sql)})


class _Writer:
    """Runs the SQL pipeline on staged chunks of one source inside the caller's transaction."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: IngestConfig, ingest_id: str):
        self.con, self.cfg, self.ingest_id = con, cfg, ingest_id
        meta_remove = json.dumps({cfg.text_field: None, cfg.prompt_field: None, cfg.reference_field: None})
        self.params = {
            "text_path": f'$."{cfg.text_field}"',
            "prompt_path": f'$."{cfg.prompt_field}"',
            "reference_path": f'$."{cfg.reference_field}"',
            "text_field_name": repr(cfg.text_field),
            "prompt_field_name": repr(cfg.prompt_field),
            "joiner": cfg.list_joiner,
            "max_chars": cfg.max_chars,
            "raw_max": cfg.raw_max_chars,
            "meta_remove": meta_remove,
            "eval_bp": round(cfg.eval_fraction * 10000),
            "nfc_suspects": nfc_suspects(),
            "ingest_id": ingest_id,
        }

    def begin(self) -> None:
        """Empty staging tables for one transaction's documents and prompts (see flush_documents.sql)."""
        self.con.execute(
            "create or replace temp table _pending_documents as select document_id, source_uri, line, record, "
            "content_hash, text, n_chars, metadata, split from documents limit 0"
        )
        self.con.execute(
            "create or replace temp table _pending_prompts as select prompt_id, document_id, prompt_start, "
            "prompt_len, reference_start, reference_len, prompt, reference, split, origin from prompt_spans limit 0"
        )

    def finish(self) -> None:
        """Write the staged documents and prompts; the caller commits."""
        _exec(self.con, "flush_documents", self.params)
        _exec(self.con, "flush_prompts", self.params)
        self.con.execute("drop table _pending_documents")
        self.con.execute("drop table _pending_prompts")

    def add(
        self, chunk: pa.Table, source_uri: str, files: dict[str, FileSummary], by_reason: dict[str, int]
    ) -> int:
        """Classify and insert one chunk (records of `source_uri`, or of each row's `source`);
        add its counts to the per-source summaries; return the number of prompts inserted."""
        import pyarrow as pa

        con = self.con
        params = dict(self.params, source_uri=source_uri)
        # record batches of 8k rows (zero-copy slices): DuckDB scans an Arrow table batch-parallel,
        # so one big batch would run the whole pipeline on one core
        con.register(
            "_chunk_src", pa.Table.from_batches(chunk.to_batches(max_chunksize=8192), schema=chunk.schema)
        )
        try:
            # blank lines of JSON-lines files are not records (short-circuit: only short lines are decoded)
            con.execute(
                "create or replace temp view _chunk as select * from _chunk_src where raw is null "
                "or octet_length(raw) > 16 or trim(coalesce(try(decode(raw)), 'x'), e' \\t\\r\\n') <> ''"
            )
            _exec(con, "classify", params)
        finally:
            con.execute("drop view if exists _chunk")
            con.unregister("_chunk_src")
        _exec(con, "insert_errors", params)
        _exec(con, "select_new", params)
        counts = con.execute(
            """select c.source, c.reason, count(*), count(n.document_id)
               from _classified c left join _new n on c.reason is null and n.source = c.source
                    and n.line is not distinct from c.line and n.record is not distinct from c.record
                    and n.byte_offset is not distinct from c.byte_offset
               group by all"""
        ).fetchall()
        for source, reason, n, new in counts:
            fs = files[source]
            fs.records += n
            if reason is None:
                fs.inserted += new
                fs.duplicates += n - new
            else:
                by_reason[reason] = by_reason.get(reason, 0) + n
                fs.quarantined += n
        _exec(con, "insert_documents", params)
        ((prompts,),) = _exec(con, "insert_field_prompts", params).fetchall()
        if self.cfg.make_prompts and self.cfg.max_prompts_per_document > 0:
            prompts += self._cut_prompts()
        return prompts

    def _cut_prompts(self) -> int:
        """Cut passages from the new documents without a prompt field, one SQL pass per passage number."""
        import pyarrow as pa

        cfg, con = self.cfg, self.con
        params = {
            "boundary": "^" + BOUNDARY,
            "lead": LEAD,
            "trail": TRAIL,
            "prompt_chars": cfg.prompt_chars,
            "reference_chars": cfg.reference_chars,
            "min_prompt_chars": cfg.min_prompt_chars,
            "min_reference_chars": cfg.min_reference_chars,
        }
        # The first pass reads the new texts as 8k-row Arrow batches: a scan of the temp table _new runs
        # on one thread per 122,880-row group (so on one core), and the regexps of a pass are CPU-bound.
        src = con.sql("select document_id, split, text from _new where prompt is null").to_arrow_table()
        con.register("_cut_src", pa.Table.from_batches(src.to_batches(max_chunksize=8192), schema=src.schema))
        # the leading whitespace measured by a regexp: ltrim would copy every text
        con.execute(
            "create or replace temp view _cut_state as select document_id, split, text, length(text) as n, "
            f"length(regexp_extract(text, '{LEAD}')) as pos from _cut_src"  # a view takes no parameters
        )
        total, state = 0, "view"
        for k in range(cfg.max_prompts_per_document):
            _exec(con, "cut_prompts", params)
            ok = "prompt_len >= $min_p and reference_len >= $min_r"
            lims = {"min_p": cfg.min_prompt_chars, "min_r": cfg.min_reference_chars}
            ((n,),) = con.execute(
                "insert into _pending_prompts (prompt_id, document_id, prompt_start, prompt_len, reference_start, "
                "reference_len, split, origin) select document_id || '-' || $k, document_id, prompt_start, "
                f"prompt_len, reference_start, reference_len, split, 'cut' from _cut_step where {ok}",
                {"k": k, **lims},
            ).fetchall()
            total += n
            if n == 0:
                break
            # only documents with room for another passage go on (most are used up by the first one)
            con.execute(f"drop {state} _cut_state")
            state = "table"
            con.execute(
                "create or replace temp table _cut_state as select document_id, split, text, n, pos "
                f"from _cut_step where {ok} and n - pos >= $min_pr",
                {**lims, "min_pr": cfg.min_prompt_chars + cfg.min_reference_chars},
            )
        con.execute(f"drop {state} if exists _cut_state")
        con.execute("drop table if exists _cut_step")
        con.unregister("_cut_src")
        return total


def _chunks(con: duckdb.DuckDBPyConnection, path: Path, cfg: IngestConfig) -> Iterator[tuple[pa.Table, int]]:
    fmt = file_format(path)
    size = path.stat().st_size
    if fmt == "jsonl" or (fmt == "json" and _json_kind(path) == "lines"):
        yield from _jsonl_chunks(path, cfg.chunk_bytes)
    elif fmt in ("json", "csv", "parquet"):
        # DuckDB's readers run on a cursor of their own: a reader error (a malformed file) must not
        # abort the file's transaction on the main connection, it becomes a quarantined record
        cur = con.cursor()
        try:
            if fmt == "json":
                kind = _json_kind(path)
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
    """Small text files staged together: one pipeline pass instead of ~20 statements per file."""
    import pyarrow as pa

    tables = []
    for p in paths:
        t = _text(p, cfg)
        tables.append(
            t.set_column(
                t.schema.get_field_index("source"), "source", pa.array([p.as_uri()] * t.num_rows, pa.string())
            )
        )
    yield pa.concat_tables(tables), sum(p.stat().st_size for p in paths)


def _units(con, files: list[Path], cfg: IngestConfig) -> Iterator[tuple[list[tuple[str, str]], object]]:
    """Transactions: ([(uri, format)], chunk factory). Each file is all-or-nothing; consecutive small
    text files share one transaction (still all-or-nothing each), because the fixed cost of the
    pipeline's statements (~0.1 s) would dominate a folder of thousands of small files."""
    batch: list[Path] = []
    size = 0

    def flush():
        srcs = [(p.as_uri(), "text") for p in batch]
        return srcs, (lambda ps=list(batch): _text_batch(ps, cfg))

    for p in files:
        fmt = file_format(p)
        small = fmt == "text" and p.stat().st_size < cfg.chunk_bytes // 16
        if small:
            batch.append(p)
            size += p.stat().st_size
            if size >= cfg.chunk_bytes // 4 or len(batch) >= 2000:
                yield flush()
                batch, size = [], 0
            continue
        if batch:
            yield flush()
            batch, size = [], 0
        yield [(p.as_uri(), fmt)], (lambda p=p: _chunks(con, p, cfg))
    if batch:
        yield flush()


def _default_unit() -> tuple[list[tuple[str, str]], object]:
    tbl = default_corpus()
    if tbl.num_rows == 0:  # an interpreter installed without its .py sources and pydoc_data
        raise FileNotFoundError(
            "this Python ships no standard-library sources or help topics: pass corpus paths"
        )
    srcs = [(u, "text") for u in dict.fromkeys(tbl["source"].to_pylist())]
    return srcs, (lambda: iter([(tbl, sum(len(x.encode()) for x in tbl["body"].to_pylist()))]))


def new_ingest_id() -> str:
    return time.strftime("ingest-%Y%m%dT%H%M%SZ-", time.gmtime()) + uuid.uuid4().hex[:6]


def ingest(
    paths: list[str | os.PathLike] | None,
    *,
    data_dir: DataDir | str | os.PathLike | None = None,
    options: IngestConfig | None = None,
) -> IngestSummary:
    """Ingest files, folders and globs (or, with paths=None, the embedded default corpus).

    Raises FileNotFoundError/ValueError before writing anything when a path does not
    exist or nothing readable is found; RuntimeError (naming the file) when a file fails
    halfway, after rolling that file back.
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
            per_file = {uri: FileSummary(source=uri, format=fmt) for uri, fmt in srcs}
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
                for uri, fs in per_file.items():
                    fs.bytes = (
                        Path(uri.removeprefix("file://")).stat().st_size if uri.startswith("file://") else 0
                    )
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
