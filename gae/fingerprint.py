"""Corpus fingerprints: when the pipeline may skip an ingest.

A corpus is unchanged when the same files (resolved paths) have the same sizes and
modification times and are read with the same options. The fingerprint of the embedded
default corpus is the interpreter's version and the location of its standard library,
which is where that corpus comes from. Fingerprints live in the database they describe
(`corpus_fingerprints`), so deleting or replacing the database forgets them.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig


def corpus_fingerprint(paths: list[str] | None, options: dict) -> str:
    from gae.ingest import resolve_inputs

    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    if paths is None:
        h.update(f"default:{sys.version}:{sysconfig.get_paths()['stdlib']}".encode())
    else:
        files, _ = resolve_inputs(paths)
        for f in files:
            st = f.stat()
            h.update(f"\x1e{f}\x1f{st.st_size}\x1f{st.st_mtime_ns}".encode())
    return h.hexdigest()


def lookup(con, fingerprint: str) -> dict | None:
    """The summary recorded for `fingerprint`, or None."""
    rows = con.execute(
        "select ingest_id, summary from corpus_fingerprints where fingerprint = $f", {"f": fingerprint}
    ).fetchall()
    if not rows:
        return None
    return {**json.loads(rows[0][1]), "ingest_id": rows[0][0]}


def record(con, fingerprint: str, ingest_id: str, summary: dict) -> None:
    con.execute(
        "insert or replace into corpus_fingerprints (fingerprint, ingest_id, summary) values ($f, $i, $s)",
        {"f": fingerprint, "i": ingest_id, "s": json.dumps(summary, default=str)},
    )


def has_documents(con, ingest_id: str) -> bool:
    """Whether `ingest_documents` lists the documents `ingest_id` read (not for an ingest made
    before that table existed)."""
    return bool(
        con.execute(
            "select count(*) from ingest_documents where ingest_id = $i", {"i": ingest_id}
        ).fetchall()[0][0]
    )
