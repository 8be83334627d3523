"""Corpus ingest: exact counts per table, quarantine reasons and locations, dedup across files and
runs, a failing file rolled back, CJK text kept byte for byte, SQL fast paths against Python references.

Every file is written here. Runtime ~15 s (the first DuckDB connection imports gae.store).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gae import ingest as gi
from gae.db import connect, run_query
from gae.ingest import IngestConfig, content_hash, cut_passages, ingest, normalise, split_of

POEM = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
HELLO = "Hello world. This is a sentence for the test."
EN_TXT = (
    "The quick brown fox jumps over the lazy dog. It was not amused at all.\n\n"
    "A second paragraph follows here. It has two sentences.\n"
)


def jl(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def write_corpus(root: Path) -> Path:
    """Nine supported files and one unsupported; the expected counts are worked out in test_exact_counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    (root / "en.txt").write_text(EN_TXT, encoding="utf-8")
    (root / "zh.jsonl").write_bytes(
        jl({"title": "静夜思", "text": POEM})
        + jl({"title": "春晓", "text": ["春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。"]})
        + jl({"text": "天地玄黄\u3000宇宙洪荒。"})
    )
    (root / "mixed.jsonl").write_bytes(
        jl({"text": HELLO})  # 1 ok (a duplicate of dup.jsonl.gz, read first)
        + b'{"text": "unterminated\n'  # 2 malformed_json
        + b'{"text": "caf\xe9"}\n'  # 3 invalid_utf8 (latin-1 byte)
        + b"\n"  # 4 blank: not a record
        + jl({"text": "   "})  # 5 empty_text
        + jl({"title": "no text"})  # 6 missing_field
        + b"[1, 2]\n"  # 7 not_an_object
        + jl({"text": "Hello   world.\tThis is a sentence for the test. "})  # 8 duplicate of 1 (whitespace)
        + jl({"text": 5})  # 9 bad_field_type
        + jl({"prompt": "What is 2+2?", "reference": "4", "id": 7})  # 10 ok, explicit prompt
        + jl({"text": "e\u0301te\u0301 is summer in French."})  # 11 ok (decomposed accents)
        + jl({"text": "\u00e9t\u00e9 is summer in French."})  # 12 duplicate of 11 after NFC
    )
    (root / "arr.json").write_text(
        json.dumps(
            [
                {"text": "Array element one has text."},
                "just a string",
                {"text": "Array element two has text."},
            ]
        ),
        encoding="utf-8",
    )
    (root / "empty.jsonl").write_bytes(b"")
    (root / "empty.txt").write_bytes(b"")
    (root / "dup.jsonl.gz").write_bytes(
        gzip.compress(jl({"text": HELLO}) + jl({"text": "A gzip-only record lives here."}))
    )
    (root / "data.csv").write_text(
        "id,text\n1,CSV row one is here.\n2,CSV row two is here.\n", encoding="utf-8"
    )
    pq.write_table(pa.table({"text": ["Parquet row one.", POEM], "n": [1, 2]}), root / "data.parquet")
    (root / "notes.xyz").write_text("not a corpus file")
    return root


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = write_corpus(tmp_path_factory.mktemp("corpus"))
    dd = tmp_path_factory.mktemp("data")
    first = ingest([root], data_dir=dd)
    second = ingest([root], data_dir=dd)
    return root, dd, first, second


def test_exact_counts(ingested):
    root, dd, s, _ = ingested
    # Files in sorted order: arr.json, data.csv, data.parquet, dup.jsonl.gz, empty.jsonl, empty.txt,
    # en.txt, mixed.jsonl, zh.jsonl (notes.xyz skipped).
    # records:  3 + 2 + 2 + 2 + 0 + 1 + 1 + 11 + 3 = 25
    # inserted: arr 2, csv 2, parquet 2 (incl. the poem), gz 2 (incl. HELLO), en 1,
    #           mixed 2 (prompt record, NFC text), zh 2 (poem is a duplicate) = 13
    # duplicates: mixed 1 and 8 (HELLO), 12 (NFC); zh 1 (poem) = 4
    # quarantined: arr 1 (string), empty.txt 1, mixed 6 = 8;  13 + 4 + 8 = 25, nothing lost
    assert (s.files, s.records, s.inserted, s.duplicates, s.quarantined) == (9, 25, 13, 4, 8)
    assert s.quarantined_by_reason == {
        "bad_field_type": 1,
        "empty_text": 2,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "not_an_object": 2,
    }
    assert s.skipped_files == [str((root / "notes.xyz").resolve())]
    per = {Path(f.source).name: (f.records, f.inserted, f.duplicates, f.quarantined) for f in s.sources}
    assert per == {
        "arr.json": (3, 2, 0, 1),
        "data.csv": (2, 2, 0, 0),
        "data.parquet": (2, 2, 0, 0),
        "dup.jsonl.gz": (2, 2, 0, 0),
        "empty.jsonl": (0, 0, 0, 0),
        "empty.txt": (1, 0, 0, 1),
        "en.txt": (1, 1, 0, 0),
        "mixed.jsonl": (11, 2, 3, 6),
        "zh.jsonl": (3, 2, 1, 0),
    }
    con = connect(dd, read_only=True)
    try:
        n_docs, n_err = con.execute(
            "select (select count(*) from documents), (select count(*) from ingest_errors)"
        ).fetchall()[0]
        assert (n_docs, n_err) == (13, 8)
        assert con.execute("select count(*) from prompts where origin = 'field'").fetchall()[0][0] == 1
        assert con.execute("select count(*) from prompts").fetchall()[0][0] == s.prompts
        assert run_query(con, "check_corpus").fetchall() == []  # unique ids, splits agree
    finally:
        con.close()


def test_rerun_adds_nothing(ingested):
    _, dd, s, again = ingested
    assert (again.records, again.inserted, again.prompts) == (25, 0, 0)
    assert again.duplicates == s.inserted + s.duplicates
    assert again.quarantined_by_reason == s.quarantined_by_reason  # read and judged again, not stored again
    con = connect(dd, read_only=True)
    try:
        counts = con.execute(
            "select (select count(*) from documents), (select count(*) from ingest_errors), (select count(*) from prompts)"
        ).fetchall()[0]
        assert counts == (13, 8, s.prompts)
        assert con.execute("select count(distinct ingest_id) from documents").fetchall()[0][0] == 1
    finally:
        con.close()


def test_quarantine_reasons_and_locations(ingested):
    root, dd, _, _ = ingested
    con = connect(dd, read_only=True)
    try:
        rows = con.execute(
            "select reason, line, byte_offset, raw from ingest_errors where source_uri = $u order by line",
            {"u": (root / "mixed.jsonl").resolve().as_uri()},
        ).fetchall()
    finally:
        con.close()
    assert [(r[0], r[1]) for r in rows] == [
        ("malformed_json", 2),
        ("invalid_utf8", 3),
        ("empty_text", 5),
        ("missing_field", 6),
        ("not_an_object", 7),
        ("bad_field_type", 9),
    ]
    line1 = len(jl({"text": HELLO}))
    assert rows[0][2] == line1 and rows[0][3] == '{"text": "unterminated'
    assert rows[1][2] == line1 + len(b'{"text": "unterminated\n')
    assert "\\xE9" in rows[1][3]  # the invalid byte is shown, escaped


def test_cjk_byte_for_byte_and_list_fields(ingested):
    _, dd, _, _ = ingested
    con = connect(dd, read_only=True)
    try:
        texts = {r[0] for r in con.execute("select text from documents").fetchall()}
        meta = con.execute("select metadata from documents where text like '春眠%'").fetchall()[0][0]
    finally:
        con.close()
    assert POEM in texts and POEM.encode() in {t.encode() for t in texts}
    assert "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。" in texts  # list joined with \n
    assert "天地玄黄\u3000宇宙洪荒。" in texts  # ideographic space kept in the text, folded only for the hash
    assert json.loads(meta) == {"title": "春晓"}


def test_sql_hash_and_split_match_python_reference(ingested):
    _, dd, _, _ = ingested
    con = connect(dd, read_only=True)
    try:
        docs = con.execute("select document_id, content_hash, text, split from documents").fetchall()
        bad = con.execute(
            "select count(*) from prompts p join documents d using (document_id) where p.split <> d.split"
        ).fetchall()[0][0]
    finally:
        con.close()
    for doc_id, h, text, split in docs:
        assert h == content_hash(text), text
        assert doc_id == h[:16]
        assert split == split_of(doc_id, IngestConfig().eval_fraction)
    assert bad == 0


def test_normalise_reference_by_hand():
    # NFC composes e + U+0301 into é; tabs, newlines, NBSP and U+3000 runs fold into one space; ends trimmed.
    assert normalise(" e\u0301t\u00e9\t\n x\u00a0\u3000y ") == "\u00e9t\u00e9 x y"


def test_cut_prompts_sql_matches_python_reference(tmp_path):
    texts = [
        "One short sentence here. Another one follows it! Does a third ask? Yes. " * 6,
        "风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。万里悲秋常作客，百年多病独登台。艰难苦恨繁霜鬓，潦倒新停浊酒杯。",
        "A paragraph without a full stop\n\nand another paragraph that goes on and on without one",
        "“Quoted sentence ends here.” Then another one comes after it. And the last.",
        "no boundary at all in this text whatsoever",
    ]
    f = tmp_path / "t.jsonl"
    f.write_bytes(b"".join(jl({"text": t}) for t in texts))
    cfg = IngestConfig(prompt_chars=60, reference_chars=40, max_prompts_per_document=3)
    ingest([f], data_dir=tmp_path / "d", options=cfg)
    con = connect(tmp_path / "d", read_only=True)
    try:
        got = con.execute(
            "select d.text, p.prompt, p.reference from prompts p join documents d using (document_id) order by p.prompt_id"
        ).fetchall()
    finally:
        con.close()
    by_text: dict[str, list] = {}
    for text, p, r in got:
        by_text.setdefault(text, []).append((p, r))
    for t in texts:
        want = cut_passages(
            t,
            prompt_chars=60,
            reference_chars=40,
            min_prompt_chars=cfg.min_prompt_chars,
            min_reference_chars=cfg.min_reference_chars,
            max_passages=3,
        )
        assert by_text.get(t, []) == want, t
    assert len(by_text[texts[0]]) == 3 and texts[4] not in by_text


def test_cut_passages_by_hand():
    # 40 chars; the prompt window is min(40, 40 - 8) = 32 chars, "Hello world. This is a test. An":
    # its last boundary is the '.' at 27 followed by a space, so the prompt ends at 29 and the 11
    # remaining chars (<= reference_chars) are the reference.
    text = "Hello world. This is a test. And a tail."
    assert cut_passages(text, prompt_chars=40, reference_chars=40) == [
        ("Hello world. This is a test.", "And a tail.")
    ]
    # CJK: no space after 。, the boundary is right after it. 14 chars; window min(10, 14 - 4) = 10
    # holds one 。 at 7, so the prompt is 8 chars and the last 6 (>= 4) are the reference.
    kw = dict(prompt_chars=10, reference_chars=10, min_reference_chars=4)
    assert cut_passages("第一句很长很长。第二句也长。", **kw) == [("第一句很长很长。", "第二句也长。")]
    # with the default min_reference_chars=8 the 6-char reference is too short: no passage
    assert cut_passages("第一句很长很长。第二句也长。", prompt_chars=10, reference_chars=10) == []


def test_chunking_changes_nothing(tmp_path):
    root = write_corpus(tmp_path / "c")
    small = ingest([root / "mixed.jsonl"], data_dir=tmp_path / "a", options=IngestConfig(chunk_bytes=40))
    big = ingest([root / "mixed.jsonl"], data_dir=tmp_path / "b")
    assert small.model_dump(
        include={"records", "inserted", "duplicates", "quarantined_by_reason"}
    ) == big.model_dump(include={"records", "inserted", "duplicates", "quarantined_by_reason"})
    q = "select line, byte_offset, reason from ingest_errors order by line"
    ca, cb = connect(tmp_path / "a", read_only=True), connect(tmp_path / "b", read_only=True)
    try:
        assert ca.execute(q).fetchall() == cb.execute(q).fetchall()
    finally:
        ca.close()
        cb.close()


def test_failure_halfway_keeps_none_of_the_file(tmp_path, monkeypatch):
    good = tmp_path / "a_good.jsonl"
    good.write_bytes(jl({"text": "A file that is read fine."}))
    bad = tmp_path / "b_fails.jsonl"
    bad.write_bytes(
        b"".join(jl({"text": f"Record number {i} of the failing file."}) for i in range(20)) + b"{broken\n"
    )
    calls = {"n": 0}
    real_add = gi._Writer.add

    def add_then_fail(self, chunk, *args, **kwargs):
        out = real_add(self, chunk, *args, **kwargs)  # the first chunk of b_fails.jsonl is written...
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")  # ...then the second one fails
        return out

    monkeypatch.setattr(gi._Writer, "add", add_then_fail)
    with pytest.raises(RuntimeError, match="b_fails.jsonl.*none of its rows were kept"):
        ingest([tmp_path], data_dir=tmp_path / "d", options=IngestConfig(chunk_bytes=200))
    con = connect(tmp_path / "d", read_only=True)
    try:
        assert con.execute("select list(distinct source_uri) from documents").fetchall()[0][0] == [
            good.as_uri()
        ]
        assert con.execute("select count(*) from ingest_errors").fetchall()[0][0] == 0
        assert (
            con.execute("select count(*) from prompts p join documents d using (document_id)").fetchall()[0][
                0
            ]
            == (con.execute("select count(*) from prompts").fetchall()[0][0])
        )
    finally:
        con.close()


def test_text_paragraph_mode_and_invalid_bytes(tmp_path):
    f = tmp_path / "p.md"
    f.write_bytes(
        b"# Title line\n\nFirst block, line one.\nLine two.\n\n   \n\nBad \xff block.\n\nLast block."
    )
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(split_paragraphs=True))
    assert (s.records, s.inserted, s.quarantined_by_reason) == (4, 3, {"invalid_utf8": 1})
    con = connect(tmp_path / "d", read_only=True)
    try:
        lines = con.execute("select line, text from documents order by line").fetchall()
        err = con.execute("select line, byte_offset from ingest_errors").fetchall()[0]
    finally:
        con.close()
    assert lines == [(1, "# Title line"), (3, "First block, line one.\nLine two."), (10, "Last block.")]
    # lines: 1 title, 2 blank, 3-4 block, 5-7 blank (one with spaces), 8 "Bad \xff block.", 9 blank, 10 last
    assert err == (8, f.read_bytes().index(b"\xff"))


def test_missing_path_and_nothing_readable(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest([tmp_path / "nope.jsonl"], data_dir=tmp_path / "d")
    (tmp_path / "only.xyz").write_text("x")
    with pytest.raises(FileNotFoundError, match="nothing readable"):
        ingest([tmp_path], data_dir=tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ingest([str(tmp_path / "*.jsonl")], data_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing written


def test_data_dir_inside_the_input_is_not_read(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jl({"text": "A corpus file next to the data directory."}))
    ingest([tmp_path], data_dir=tmp_path / "gae-data")
    (tmp_path / "gae-data" / "x.jsonl").write_bytes(jl({"text": "Inside the data directory."}))
    s = ingest([tmp_path], data_dir=tmp_path / "gae-data")
    assert (s.files, s.records) == (1, 1)
    assert str((tmp_path / "gae-data" / "x.jsonl").resolve()) in s.skipped_files


def test_glob_and_too_large(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.jsonl").write_bytes(jl({"text": f"File {i} says hello."}) + jl({"text": "x" * 50}))
    s = ingest([str(tmp_path / "f*.jsonl")], data_dir=tmp_path / "d", options=IngestConfig(max_chars=40))
    assert (s.files, s.inserted, s.quarantined_by_reason) == (3, 3, {"too_large": 3})


def test_default_corpus_records_are_deterministic():
    a = list(gi.stdlib_doc_records())
    assert a == list(gi.stdlib_doc_records())
    n = sum(len(r) for _, r in a)
    chars = sum(len(x["text"]) for _, r in a for x in r)
    assert n > 1000 and 200_000 < chars < 5_000_000
    assert all(u.startswith("python-stdlib:") for u, _ in a)


def test_prefect_task_returns_summary_not_data(tmp_path):
    from prefect.logging import disable_run_logger

    from tasks.ingest import ingest_task

    f = tmp_path / "x.jsonl"
    f.write_bytes(jl({"text": "Prefect task input. It has two sentences."}) + b"{oops\n")
    with disable_run_logger():
        out = ingest_task.fn(str(tmp_path / "d"), [str(f)], {"eval_fraction": 0.0})
    assert out["inserted"] == 1 and out["quarantined_by_reason"] == {"malformed_json": 1}
    assert out["ingest_id"].startswith("ingest-") and "sources" not in out
    json.dumps(out)  # JSON-able


def test_csv_rejects_bad_array_single_object_bom(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "one.json").write_text('{\n  "text": "A pretty printed single object.",\n  "k": 1\n}\n')
    (tmp_path / "badarr.json").write_text('[{"text": "ok one"}, {"text": broken}]')
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "BOM first line works."}\n')
    (tmp_path / "b.csv").write_bytes(
        b'id,text\n1,"good row here"\n2,"bad \xff row"\n3,x,y,z\n4,last good row\n'
    )
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["gz parquet row"]}), buf)
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress(buf.getvalue()))
    s = ingest([tmp_path], data_dir=tmp_path / "d")
    # csv 4 data rows (2 ok, 1 invalid UTF-8, 1 with too many columns), the array file quarantined whole
    # (it is not valid JSON), one object, one BOM line, one Parquet row: 4 + 1 + 1 + 1 + 1 = 8
    assert (s.records, s.inserted) == (8, 5)
    assert s.quarantined_by_reason == {"invalid_utf8": 1, "malformed_csv": 1, "malformed_json": 1}
    con = connect(tmp_path / "d", read_only=True)
    try:
        errs = con.execute(
            "select reason, line, byte_offset from ingest_errors order by source_uri, line"
        ).fetchall()
        texts = {r[0] for r in con.execute("select text from documents").fetchall()}
    finally:
        con.close()
    assert errs == [("invalid_utf8", 3, 29), ("malformed_csv", 4, 44), ("malformed_json", 1, 30)]
    assert {
        "A pretty printed single object.",
        "BOM first line works.",
        "gz parquet row",
        "last good row",
    } <= texts


@pytest.mark.slow
def test_ingest_corpus_flow(prefect_api, tmp_path):
    from flows.ingest import ingest_corpus
    from gae.lock import read_holder

    f = tmp_path / "f.jsonl"
    f.write_bytes(jl({"text": "Run through the flow. It takes the writer lock."}) + jl({"text": ""}))
    out = ingest_corpus(paths=[str(f)], data_dir=str(tmp_path / "d"))
    assert (out["inserted"], out["quarantined_by_reason"]) == (1, {"empty_text": 1})
    assert read_holder(tmp_path / "d" / ".writer.lock") == {}  # released


SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"


@pytest.mark.skipif(not (SHARED / "tinyshakespeare.txt").exists(), reason="../shared/corpora not present")
def test_shared_corpora(tmp_path):
    import re

    shakespeare, poems = SHARED / "tinyshakespeare.txt", SHARED / "classical-chinese-poems.jsonl"
    s = ingest([shakespeare, poems], data_dir=tmp_path / "d", options=IngestConfig(split_paragraphs=True))
    # the slow obvious count: blank-line blocks of the play, one record per poem line
    blocks = [
        b for b in re.split(r"\r?\n(?:[ \t]*\r?\n)+", shakespeare.read_text(encoding="utf-8")) if b.strip()
    ]
    poem_lines = [x for x in poems.read_text(encoding="utf-8").splitlines() if x.strip()]
    assert s.records == len(blocks) + len(poem_lines)
    assert s.quarantined == 0 and s.inserted + s.duplicates == s.records
    con = connect(tmp_path / "d", read_only=True)
    try:
        stored = {r[0] for r in con.execute("select text from documents").fetchall()}
    finally:
        con.close()
    assert {json.loads(x)["text"] for x in poem_lines} <= stored  # CJK byte for byte
