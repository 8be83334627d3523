"""Cut prompts stored as character spans of documents.text, read back through the `prompts` view:
the text through the view equals the Python reference `cut_passages` on random texts mixing ASCII,
CJK, 4-byte characters and combining marks (character vs byte offsets is the bug to catch), and a
database made by the schema before spans (a `prompts` table with rows) is converted with its rows.

Runtime ~5 s.
"""

from __future__ import annotations

import json
import random

import duckdb

from gae import db
from gae.db import connect, run_query
from gae.ingest import IngestConfig, cut_passages, ingest

# Pieces of text: words of 1-, 2-, 3- and 4-byte characters, combining marks (U+0301 after a letter),
# sentence ends of both kinds, and the whitespace a span must leave out at its ends (NBSP, U+3000).
WORDS = ["alpha", "beta", "café", "naïve", "e\u0301te\u0301", "ß", "Ωμέγα", "日本語", "天地玄黄", "😀", "𝄞x",
         "👍🏽", "한국어", "مرحبا"]  # fmt: skip
ENDS = [
    ". ",
    "! ",
    "? ",
    ".” ",
    ".) ",
    "。",
    "！",
    "？」",
    "\n\n",
    ".\u3000",
    ". \u00a0",
    ", ",
    " ",
    "\t",
    "\u3000",
]


def random_text(rng: random.Random) -> str:
    parts = [rng.choice(["", " ", "\u3000", "\n", "\u00a0 "])]
    for _ in range(rng.randint(1, 40)):
        parts.append(rng.choice(WORDS))
        parts.append(rng.choice(ENDS) if rng.random() < 0.4 else " ")
    return "".join(parts) + rng.choice(["", " ", "\n", "\u3000"])


def test_view_text_matches_cut_passages_on_random_texts(tmp_path):
    rng = random.Random(1234)
    texts = list(dict.fromkeys(random_text(rng) for _ in range(400)))
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    cfg = IngestConfig(
        prompt_chars=30,
        reference_chars=20,
        min_prompt_chars=3,
        min_reference_chars=2,
        max_prompts_per_document=3,
    )
    s = ingest([f], data_dir=tmp_path / "d", options=cfg)
    con = connect(tmp_path / "d", read_only=True)
    try:
        docs = [t for (t,) in con.execute("select text from documents").fetchall()]
        got = con.execute(
            "select d.text, p.prompt, p.reference, p.prompt_id from prompts p join documents d using (document_id) "
            "order by p.prompt_id"
        ).fetchall()
        # the cut prompts are offsets only: no copy of their text is stored
        stored = con.execute(
            "select count(*), count(prompt), count(reference), count(prompt_start) from prompt_spans"
        ).fetchall()[0]
    finally:
        con.close()
    by_text: dict[str, list] = {}
    for text, p, r, _ in got:
        by_text.setdefault(text, []).append((p, r))
    # texts equal after normalisation (NFC, whitespace folding) are one document: compare the stored ones
    assert len(docs) > 300 and set(docs) <= set(texts)
    kw = dict(prompt_chars=30, reference_chars=20, min_prompt_chars=3, min_reference_chars=2, max_passages=3)
    want = {t: cut_passages(t, **kw) for t in docs}
    for t in docs:
        assert by_text.get(t, []) == want[t], repr(t)
    assert s.prompts == len(got) == stored[0] == sum(map(len, want.values()))
    assert stored[1:] == (0, 0, s.prompts)
    # the random texts do reach every kind of character in a prompt and in several passages per text
    joined = "".join(p + r for _, p, r, _ in got)
    assert all(c in joined for c in ("😀", "日", "\u0301", "한")) and any(i.endswith("-2") for *_, i in got)


def test_spans_by_hand(tmp_path):
    # "  Ünï 😀 one. 日本語。" : two leading spaces; the prompt window is the whole text minus the reference
    # minimum. Characters (code points), 1-based: 'Ü' is 3, '😀' is 7, the '.' at 12, a space at 13,
    # '日' at 14, '。' at 17. The prompt "Ünï 😀 one." starts at 3, 10 characters; the reference "日本語。"
    # starts at 14, 4 characters. In bytes (Ü, ï 2 each, 😀 4) it would start at 19: a byte offset fails here.
    text = "  Ünï 😀 one. 日本語。"
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = IngestConfig(prompt_chars=40, reference_chars=40, min_prompt_chars=2, min_reference_chars=2)
    ingest([f], data_dir=tmp_path / "d", options=cfg)
    con = connect(tmp_path / "d", read_only=True)
    try:
        span = con.execute(
            "select prompt_start, prompt_len, reference_start, reference_len from prompt_spans"
        ).fetchall()
        view = con.execute("select prompt, reference from prompts").fetchall()
    finally:
        con.close()
    assert span == [(3, 10, 14, 4)]
    assert view == [("Ünï 😀 one.", "日本語。")] == cut_passages(text, **_kw(cfg))
    assert len(text[:13].encode()) + 1 == 19


def _kw(cfg: IngestConfig) -> dict:
    return dict(
        prompt_chars=cfg.prompt_chars,
        reference_chars=cfg.reference_chars,
        min_prompt_chars=cfg.min_prompt_chars,
        min_reference_chars=cfg.min_reference_chars,
        max_passages=cfg.max_prompts_per_document,
    )


def _apply_schema_up_to(con: duckdb.DuckDBPyConnection, last: int) -> None:
    """What a database created before prompt spans holds: schema files 000..last applied and recorded."""
    for version, name, path in db.schema_files():
        if version > last:
            break
        con.execute(path.read_text())
        if version > 0:
            con.execute(
                "insert into schema_migrations (version, name) values ($v, $n)", {"v": version, "n": name}
            )


def test_upgrade_converts_the_prompts_table_and_keeps_its_rows(tmp_path):
    dd = db.DataDir.resolve(tmp_path / "old")
    dd.root.mkdir(parents=True)
    old = duckdb.connect(str(dd.db))
    _apply_schema_up_to(old, 4)
    old.execute(
        "insert into documents (document_id, source_uri, line, record, content_hash, text, n_chars, split, ingest_id) "
        "values ('a1', 'file:///x.jsonl', 1, null, 'h1', 'One. Two.', 9, 'train', 'ingest-old'), "
        "('b2', 'file:///x.jsonl', 2, null, 'h2', 'Q and A', 7, 'eval', 'ingest-old')"
    )
    old.execute(
        "insert into prompts values "
        "('a1-0', 'a1', 'One.', 'Two.', 'train', 'cut', 'ingest-old', timestamp '2026-01-02 03:04:05'), "
        "('b2-0', 'b2', 'What?', null, 'eval', 'field', 'ingest-old', timestamp '2026-01-02 03:04:06')"
    )
    before = old.execute("select * from prompts order by prompt_id").fetchall()
    old.close()

    con = db.connect(dd, views=False)
    try:
        assert db.schema_version(con) == max(v for v, _, _ in db.schema_files()) >= 5
        assert con.execute("select * from prompts order by prompt_id").fetchall() == before
        kinds = dict(
            con.execute(
                "select table_name, table_type from information_schema.tables "
                "where table_name in ('prompts', 'prompt_spans')"
            ).fetchall()
        )
        assert kinds == {"prompts": "VIEW", "prompt_spans": "BASE TABLE"}
        assert run_query(con, "check_corpus").fetchall() == []
        assert [r[4] for r in run_query(con, "ingests").fetchall()] == [2]  # prompts per ingest
    finally:
        con.close()

    # an ingest into the upgraded database adds span rows next to the old string rows
    f = tmp_path / "new.jsonl"
    f.write_text(json.dumps({"text": "A new sentence here. And its reference follows."}) + "\n")
    s = ingest([f], data_dir=dd)
    con = connect(dd, read_only=True)
    try:
        rows = con.execute(
            "select prompt_id, prompt, reference, origin from prompts order by prompt_id"
        ).fetchall()
        n_spans = con.execute("select count(prompt_start) from prompt_spans").fetchall()[0][0]
    finally:
        con.close()
    assert s.prompts == 1 and n_spans == 1 and len(rows) == 3
    assert ("A new sentence here.", "And its reference follows.", "cut") in {r[1:] for r in rows}


def test_fresh_database_has_the_view(tmp_path):
    con = db.connect(tmp_path, views=False)
    try:
        cols = [r[0] for r in con.execute("describe prompts").fetchall()]
    finally:
        con.close()
    assert cols == [
        "prompt_id",
        "document_id",
        "prompt",
        "reference",
        "split",
        "origin",
        "ingest_id",
        "created_at",
    ]
