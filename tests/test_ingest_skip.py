"""The pipeline skips an ingest whose corpus is unchanged, and never trusts a record whose
database is gone."""

from __future__ import annotations

import os

from prefect.logging import disable_run_logger

from tasks.ingest import ingest_task


def test_unchanged_corpus_is_skipped_and_changes_are_not(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The first document. It has two sentences.\n")
    (corpus / "b.jsonl").write_text('{"text": "A second document, in JSON lines."}\n')
    data = tmp_path / "data"
    run = ingest_task.fn
    with disable_run_logger():
        first = run(str(data), [str(corpus)], {}, skip_unchanged=True)
        assert first["skipped"] is False and first["inserted"] == 2
        again = run(str(data), [str(corpus)], {}, skip_unchanged=True)
        assert again["skipped"] is True and again["ingest_id"] == first["ingest_id"]
        # Other options are another corpus as far as prompts and splits go.
        assert run(str(data), [str(corpus)], {"eval_fraction": 0.5}, skip_unchanged=True)["skipped"] is False
        # A touched file is read again (and, being the same text, adds no document).
        st = os.stat(corpus / "a.txt")
        os.utime(corpus / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        touched = run(str(data), [str(corpus)], {}, skip_unchanged=True)
        assert touched["skipped"] is False and touched["inserted"] == 0
        # A deleted database forgets what it held: nothing is skipped.
        (data / "gae.duckdb").unlink()
        fresh = run(str(data), [str(corpus)], {}, skip_unchanged=True)
        assert fresh["skipped"] is False and fresh["inserted"] == 2


def test_a_run_reads_its_own_corpus_not_every_corpus_in_the_data_dir(tmp_path):
    """Corpus A, then corpus B into one data directory: B's corpus id scopes pretraining texts
    and prompt samples to B; a skipped rerun of B gives the same id; a database recorded before
    corpus sources existed is read once more to record them."""
    from gae import db

    data = tmp_path / "data"
    texts = {}
    for name, word in (("a", "apple"), ("b", "banana")):
        d = tmp_path / name
        d.mkdir()
        rows = [f"Document {i} about the {word}. The {word} is on the table today.\n" for i in range(30)]
        for i, row in enumerate(rows):
            (d / f"{i:02d}.txt").write_text(row)
        texts[name] = d
    run = ingest_task.fn
    with disable_run_logger():
        a = run(str(data), [str(texts["a"])], {"eval_fraction": 0.3}, skip_unchanged=True)
        b = run(str(data), [str(texts["b"])], {"eval_fraction": 0.3}, skip_unchanged=True)
        assert a["corpus_id"] != b["corpus_id"]
        again = run(str(data), [str(texts["b"])], {"eval_fraction": 0.3}, skip_unchanged=True)
        assert again["skipped"] is True and again["corpus_id"] == b["corpus_id"]
    con = db.connect(data, read_only=True)
    try:
        every = db.corpus_texts(con, split="train") + db.corpus_texts(con, split="eval")
        only_b = db.corpus_texts(con, split="train", corpus=b["corpus_id"])
        only_b += db.corpus_texts(con, split="eval", corpus=b["corpus_id"])
        prompts = db.fetch_prompts(con, split="train", corpus=b["corpus_id"], limit=100, seed=1)
        all_prompts = db.fetch_prompts(con, split="train", limit=1000)
    finally:
        con.close()
    assert len(every) == 60 and len(only_b) == 30 and all("banana" in t for t in only_b)
    assert prompts and all("banana" in p["prompt"] + (p["reference"] or "") for p in prompts)
    assert any("apple" in p["prompt"] for p in all_prompts)  # unscoped: both corpora
    # a database from before corpus_sources: the fingerprint is known but has no sources
    con = db.connect(data)
    try:
        con.execute("delete from corpus_sources")
    finally:
        con.close()
    with disable_run_logger():
        redo = run(str(data), [str(texts["b"])], {"eval_fraction": 0.3}, skip_unchanged=True)
    assert redo["skipped"] is False and redo["corpus_id"] == b["corpus_id"] and redo["inserted"] == 0
    con = db.connect(data, read_only=True)
    try:
        assert (
            len(db.corpus_texts(con, split="train", corpus=b["corpus_id"]))
            + len(db.corpus_texts(con, split="eval", corpus=b["corpus_id"]))
            == 30
        )
    finally:
        con.close()
