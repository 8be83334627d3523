"""Nothing read is dropped (issue 12, item 3): a CSV without a header row keeps its first record, text
made of control characters is quarantined rather than stored, and over a folder of good and bad files of
every reader each record read lands in exactly one of `documents` and `ingest_errors`, counted against
plain-Python readers of the same files. Runtime ~15 s."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest

from gae.db import connect
from gae.ingest import IngestConfig, ingest

NO_PROMPTS = dict(make_prompts=False)


def rows(dd: Path, sql: str, params: dict | None = None) -> list[tuple]:
    con = connect(dd, read_only=True)
    try:
        return con.execute(sql, params or {}).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------- CSV without a header row


def test_typed_csv_without_header_is_read_from_its_first_line(tmp_path):
    # DuckDB's sniffer tells a typed first column (ids) from a header row: no header, and the text is the
    # longest text column; before, "1" and "First sentence here." became the column names and the first
    # record was in neither table
    f = tmp_path / "ids.csv"
    f.write_text("1,First sentence here.,a\n2,Second sentence here.,b\n3,Third one.,c\n")
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(**NO_PROMPTS))
    assert (s.records, s.inserted, s.quarantined) == (3, 3, 0)
    docs = rows(tmp_path / "d", "select line, record, text, metadata from documents order by line")
    assert [(d[0], d[1], d[2]) for d in docs] == [
        (1, 1, "First sentence here."),
        (2, 2, "Second sentence here."),
        (3, 3, "Third one."),
    ]
    assert json.loads(docs[0][3]) == {"column0": "1", "column2": "a"}


@pytest.mark.parametrize(
    "body",
    [
        "hello there,this is the text\nsecond row,more text here\n",  # two text columns
        "Just one column of text here.\nAnother line of text.\n",  # one column
    ],
    ids=["two-columns", "one-column"],
)
def test_all_text_csv_without_header_is_quarantined_whole_not_cut(tmp_path, body):
    # All text: nothing tells a header from a first record, and no column is named `text`. Every record,
    # the first row included, is quarantined as csv_no_header at its line, saying what to pass.
    f = tmp_path / "t.csv"
    f.write_text(body)
    s = ingest([f], data_dir=tmp_path / "a", options=IngestConfig(**NO_PROMPTS))
    assert (s.records, s.inserted, s.quarantined_by_reason) == (2, 0, {"csv_no_header": 2})
    errs = rows(tmp_path / "a", "select source_uri, line, record, detail from ingest_errors order by line")
    assert [(e[0], e[1], e[2]) for e in errs] == [(f.as_uri(), 1, 1), (f.as_uri(), 2, 2)]
    assert "--no-csv-header" in errs[0][3] and "--text-field" in errs[0][3]
    # read without a header, as the detail says: both records, the first line's included
    s = ingest([f], data_dir=tmp_path / "b", options=IngestConfig(csv_header=False, **NO_PROMPTS))
    assert (s.records, s.inserted) == (2, 2)
    first = body.splitlines()[0].split(",")
    texts = [r[0] for r in rows(tmp_path / "b", "select text from documents order by line")]
    assert texts[0] == max(first, key=len)  # the longest text column


def test_csv_header_naming_the_text_field_or_a_named_column(tmp_path):
    a = tmp_path / "h.csv"
    a.write_text("title,text\nA title,A body of text.\nB title,Another body.\n")  # a real header
    b = tmp_path / "n.csv"
    b.write_text("x,Short body.,y\nz,Other body.,w\n")
    s = ingest([a], data_dir=tmp_path / "a", options=IngestConfig(**NO_PROMPTS))
    assert (s.records, s.inserted) == (2, 2)
    assert [r[0] for r in rows(tmp_path / "a", "select line from documents order by line")] == [2, 3]
    # header-less with the column named as DuckDB names it: that one, not the longest
    s = ingest(
        [b],
        data_dir=tmp_path / "b",
        options=IngestConfig(csv_header=False, text_field="column0", **NO_PROMPTS),
    )
    assert [r[0] for r in rows(tmp_path / "b", "select text from documents order by line")] == ["x", "z"]
    # a header declared present and lacking the field: its rows are missing_field, the header not a record
    s = ingest([b], data_dir=tmp_path / "c", options=IngestConfig(csv_header=True, **NO_PROMPTS))
    assert (s.records, s.quarantined_by_reason) == (1, {"missing_field": 1})


# ---------------------------------------------------------------- control characters


def test_nul_bytes_and_control_text_are_quarantined(tmp_path):
    (tmp_path / "zeros.txt").write_bytes(b"\0" * 100_000)  # valid UTF-8, no text
    (tmp_path / "utf16.txt").write_bytes("A UTF-16 file without a BOM.".encode("utf-16-le"))  # half NUL
    (tmp_path / "esc.jsonl").write_text(
        json.dumps({"text": "\u0001\u0002\u0003 mostly control \u0004\u0005\u0006\u0007\u0008\u000e\u000f"})
        + "\n"
        # colourised log output keeps its few escapes and is a document
        + json.dumps({"text": "\u001b[31mERROR\u001b[0m something failed in the module loader today"})
        + "\n"
    )
    s = ingest([tmp_path], data_dir=tmp_path / "d", options=IngestConfig(**NO_PROMPTS))
    assert (s.records, s.inserted, s.quarantined_by_reason) == (4, 1, {"control_characters": 3})
    errs = rows(tmp_path / "d", "select source_uri, line, detail from ingest_errors order by source_uri")
    assert [(Path(e[0]).name, e[1]) for e in errs] == [("esc.jsonl", 1), ("utf16.txt", 1), ("zeros.txt", 1)]
    assert errs[2][2].startswith("100000 of 100000 characters are control characters")
    # the threshold is an option: a share of 0.6 lets the UTF-16 text (50% NUL) through
    s = ingest(
        [tmp_path / "utf16.txt"], data_dir=tmp_path / "e", options=IngestConfig(max_control_fraction=0.6)
    )
    assert s.inserted == 1


# ---------------------------------------------------------------- every record in exactly one place


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def write_mixed(root: Path) -> dict[str, int | None]:
    """Good and bad files of every reader, every text distinct (so no record is a duplicate). Returns
    {file name: whether a CSV has a header row} for the CSV files (None: not a CSV)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    u = iter(range(10_000))

    def t() -> str:
        return f"Distinct sentence number {next(u)} of the mixed corpus."

    jl = lambda o: (json.dumps(o) + "\n").encode()  # noqa: E731
    (root / "a.txt").write_text(t())
    (root / "b.md").write_bytes(b"bad \xff utf8")
    (root / "c.txt").write_bytes(b"")
    (root / "d.txt").write_bytes(b"\0" * 500)
    (root / "e.txt.gz").write_bytes(_gz(t().encode()))
    (root / "f.txt.gz").write_bytes(_gz(t().encode() * 50)[:40])  # truncated: batched with a.txt and c.txt
    lines = (
        jl({"text": t()}) + b'{"text": "broken\n' + b"\n" + jl([1]) + jl({"title": "x"}) + jl({"text": t()})
    )
    lines += jl({"text": "\u0000" * 40}) + b'{"text": "caf\xe9"}\n' + jl({"text": t(), "prompt": "p?"})
    (root / "g.jsonl").write_bytes(lines)
    (root / "h.jsonl.gz").write_bytes(_gz(lines.replace(b"Distinct", b"Zipped")))
    (root / "i.jsonl.gz").write_bytes(_gz(b"".join(jl({"text": t()}) for _ in range(300)))[:700])  # truncated
    (root / "j.json").write_text(json.dumps([{"text": t()}, "a string", {"text": t()}, {"text": 7}]))
    (root / "k.json").write_text(json.dumps({"text": t()}, indent=2))
    (root / "l.json").write_text('[{"text": "ok"}, {"text": broken}]')
    (root / "m.csv").write_bytes(f'id,text\n1,"{t()}"\n2,"bad \xff"\n3,x,y,z\n4,{t()}\n'.encode("latin-1"))
    (root / "n.csv").write_text(f"1,{t()}\n2,{t()}\n")  # typed, no header
    (root / "o.csv").write_text(f"{t()}\n{t()}\n{t()}\n")  # one text column, no header
    (root / "p.csv.gz").write_bytes(_gz(f"text,n\n{t()},1\n,2\n".encode()))  # an empty text
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [t(), None, t()], "n": [1, 2, 3]}), buf)
    (root / "q.parquet").write_bytes(buf.getvalue())
    (root / "r.parquet.gz").write_bytes(_gz(buf.getvalue().replace(b"Distinct", b"Gzipped!")))
    (root / "s.parquet").write_bytes(b"PAR1 this is not parquet at all")
    return {"m.csv": True, "n.csv": False, "o.csv": False, "p.csv.gz": True}


def reference_count(path: Path, csv_header: dict) -> int:
    """Records in a file by plain Python (gzip, json, csv, pyarrow): what ingest must account for. A file
    that cannot be read at all counts one, the record that quarantines it whole."""
    import pyarrow.parquet as pq

    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        kind = path.name.removesuffix(".gz").rsplit(".", 1)[1]
        if kind in ("txt", "md"):
            return 1
        if kind == "jsonl":
            return sum(1 for line in data.split(b"\n") if line.strip())
        if kind == "json":
            try:
                v = json.loads(data)
            except ValueError:
                return 1
            return len(v) if isinstance(v, list) else 1
        if kind == "csv":
            recs = [r for r in csv.reader(io.StringIO(data.decode("latin-1"), newline="")) if r]
            return len(recs) - bool(csv_header[path.name])
        return pq.read_table(io.BytesIO(data)).num_rows
    except (OSError, EOFError, ValueError) as exc:  # truncated gzip, not Parquet
        assert "gz" in path.name or "parquet" in path.name, exc
        return 1


def test_every_record_ends_in_exactly_one_table(tmp_path):
    root = tmp_path / "in"
    headers = write_mixed(root)
    want = {p.as_uri(): reference_count(p, headers) for p in sorted(root.iterdir())}
    s = ingest([root], data_dir=tmp_path / "d", options=IngestConfig(**NO_PROMPTS))
    assert s.duplicates == 0  # every text distinct: each record is a document or an error of its own source
    assert s.records == sum(want.values()) and s.records == s.inserted + s.quarantined
    got = rows(
        tmp_path / "d",
        """select source_uri, count(*), count(distinct (line, record)) from (
               select source_uri, line, record from documents
               union all
               select source_uri, line, record from ingest_errors)
           group by all""",
    )
    # per file: as many rows as records, and no two rows at one location (a record in both tables)
    assert {u: (n, k) for u, n, k in got} == {u: (n, n) for u, n in want.items()}
    failed = {Path(f.source).name for f in s.sources if f.error}
    assert failed == {"f.txt.gz", "i.jsonl.gz", "s.parquet"} and s.files_failed == 3


# ---------------------------------------------------------------- fast paths against the Python references

# ASCII, CJK, composed and decomposed accents (NFC changes them), Hangul jamo, every kind of whitespace the
# hash folds, and control characters: each text takes one of classify.sql's paths ('ascii', 'plain', 'rare')
PIECES = ["Ünïcödé", "e\u0301", "\u1100\u1161", "😀", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028",
          "\u2029", "\u000b", "\u000c", "\u0000", "\u0001", "\u001b[0m", "\u007f", "\u0085", "\u009f"]  # fmt: skip
CONTROL = {chr(c) for c in [*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0)]}


def test_normal_forms_and_control_rule_match_python_on_random_texts(tmp_path):
    import random

    from gae.ingest import content_hash

    rng = random.Random(7)
    texts = []
    for i in range(600):
        # words and up to two other pieces: many texts hold one kind of special character only, which a
        # fast path overlooking that kind would get wrong
        pool = rng.choice([["word", " "], ["天地玄黄", "word", " "]]) + rng.sample(PIECES, rng.randint(0, 2))
        texts.append(f"{i} " + "".join(rng.choice(pool) for _ in range(rng.randint(1, 30))))
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[::2])  # \u-escaped, as most JSON writers do
    lines += "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[1::2])  # raw UTF-8
    (tmp_path / "r.jsonl").write_text(lines, encoding="utf-8")
    ingest([tmp_path / "r.jsonl"], data_dir=tmp_path / "d", options=IngestConfig(**NO_PROMPTS))
    docs = dict(rows(tmp_path / "d", "select text, content_hash from documents"))
    errs = {
        r[0]
        for r in rows(tmp_path / "d", "select line from ingest_errors where reason = 'control_characters'")
    }
    order = texts[::2] + texts[1::2]
    for line, t in enumerate(order, 1):
        if sum(c in CONTROL for c in t) > 0.25 * len(t):
            assert line in errs, repr(t)
        else:
            assert line not in errs and docs[t] == content_hash(t), repr(t)
    assert 0 < len(errs) < len(order) // 2 and len(docs) + len(errs) == len(order)
