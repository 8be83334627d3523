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
