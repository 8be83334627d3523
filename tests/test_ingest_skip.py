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
    and prompt samples to B; a copy of A under another folder name (every document already
    stored) is all there; an edited file's old records are not; a skipped rerun gives the same
    id; an ingest recorded before ingest_documents existed is read once more."""
    import shutil

    from gae import db

    data = tmp_path / "data"
    dirs = {}
    for name, word in (("a", "apple"), ("b", "banana")):
        d = tmp_path / name
        d.mkdir()
        for i in range(30):
            (d / f"{i:02d}.txt").write_text(
                f"Document {i} about the {word}. The {word} is on the table today.\n"
            )
        dirs[name] = d
    shutil.copytree(dirs["a"], tmp_path / "a copy")
    opts = {"eval_fraction": 0.3}
    run = ingest_task.fn

    def scoped(corpus_id):
        con = db.connect(data, read_only=True)
        try:
            texts = db.corpus_texts(con, split="train", corpus=corpus_id)
            texts += db.corpus_texts(con, split="eval", corpus=corpus_id)
            prompts = db.fetch_prompts(con, split="train", corpus=corpus_id, limit=100, seed=1)
            everything = db.corpus_texts(con, split="train") + db.corpus_texts(con, split="eval")
        finally:
            con.close()
        return texts, prompts, everything

    with disable_run_logger():
        a = run(str(data), [str(dirs["a"])], opts, skip_unchanged=True)
        b = run(str(data), [str(dirs["b"])], opts, skip_unchanged=True)
        copy = run(str(data), [str(tmp_path / "a copy")], opts, skip_unchanged=True)
        again = run(str(data), [str(dirs["b"])], opts, skip_unchanged=True)
    assert len({a["corpus_id"], b["corpus_id"], copy["corpus_id"]}) == 3
    assert again["skipped"] is True and again["corpus_id"] == b["corpus_id"]
    texts, prompts, everything = scoped(b["corpus_id"])
    assert len(everything) == 60 and len(texts) == 30 and all("banana" in t for t in texts)
    assert prompts and all("banana" in p["prompt"] + (p["reference"] or "") for p in prompts)
    texts, _, _ = scoped(copy["corpus_id"])  # nothing new was stored, yet it is all there
    assert copy["inserted"] == 0 and len(texts) == 30 and all("apple" in t for t in texts)
    # an edited file: the new corpus has its new text, not the old one
    (dirs["b"] / "00.txt").write_text("A wholly new first document about the cherry. It is red.\n")
    with disable_run_logger():
        edited = run(str(data), [str(dirs["b"])], opts, skip_unchanged=True)
    texts, _, _ = scoped(edited["corpus_id"])
    assert len(texts) == 30 and sum("cherry" in t for t in texts) == 1
    assert not any(t.startswith("Document 0 about") for t in texts)
    # an ingest recorded before ingest_documents existed: read once more, then scoped
    con = db.connect(data)
    try:
        con.execute("delete from ingest_documents")
    finally:
        con.close()
    with disable_run_logger():
        redo = run(str(data), [str(dirs["b"])], opts, skip_unchanged=True)
    assert redo["skipped"] is False and redo["inserted"] == 0
    assert len(scoped(redo["corpus_id"])[0]) == 30
