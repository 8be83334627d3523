"""Ingest throughput against DuckDB's own readers loading the same files, in the same run.

    python bench/ingest.py --mb 200          # JSON lines (with 0.1% broken lines) and plain text
    python bench/ingest.py --mb 50 --text-mb 20 --repeat 3   # min of 3 runs each, for A/B comparisons

Baselines: `create table t as select * from read_json_auto(F)` (the JSON-lines file without
its broken lines, which read_json_auto would refuse) and `create table t as select * from
read_text(F)` for text, into a database file (connect, load, commit, close), since ingest
writes one; the in-memory load is printed too. `gae.ingest` does more (per-line quarantine, NFC + hash + dedup,
prompts), so the ratio is the price of those guarantees; the target is <= 3x for JSON lines. It also times
reading prompts back through the `prompts` view (spans resolved against documents.text).
Files under ../shared/corpora/ are timed too when present.

Each timing is wall seconds and the process's CPU seconds (all threads). On a machine shared with other
jobs the wall ratio moves with their load (a 2x swing between runs minutes apart); the CPU ratio, the
work each side did, moves far less, so both are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

_WORDS = (
    "the of and to in is that for it as with was on be by this are from or an which at not have but "
    "value advantage policy reward token sequence model return estimate critic gradient update batch "
    "learning rate discount lambda sample prompt response reference corpus document sentence"
)
WORDS = _WORDS.split()
CJK = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜"


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(6, 16))) + rng.choice("。！？")
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def make_jsonl(path: Path, clean: Path, mb: float, seed: int = 0) -> int:
    """A JSON-lines file of ~mb MB (0.1% broken lines, 1% duplicates) and the same without broken lines."""
    rng = random.Random(seed)
    target, n, size, recent = mb * 1e6, 0, 0, []
    with open(path, "w", encoding="utf-8") as f, open(clean, "w", encoding="utf-8") as g:
        while size < target:
            n += 1
            if rng.random() < 0.001:
                line = '{"text": "unterminated\n'
                f.write(line)
                size += len(line)
                continue
            if recent and rng.random() < 0.01:
                text = rng.choice(recent)
            else:
                text = " ".join(sentence(rng) for _ in range(rng.randint(2, 8)))
                recent = (recent + [text])[-100:]
            line = json.dumps({"id": n, "source": "bench", "text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            g.write(line)
            size += len(line.encode())
    return n


def make_text(folder: Path, mb: float, seed: int = 1) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    i, size = 0, 0
    while size < mb * 1e6:
        body = "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(3, 9))) for _ in range(200))
        (folder / f"doc{i:05d}.txt").write_text(body, encoding="utf-8")
        size += len(body.encode())
        i += 1


def time_it(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed(fn):
    """(fn(), wall seconds, CPU seconds of this process over all its threads)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def duckdb_load(sql: str, arg: str, db: Path | None = None) -> tuple[float, float]:
    """DuckDB's own reader into a table: in memory, or (db given) into a file, commit and close included,
    which is what ingest pays too. Returns (wall, CPU) seconds."""
    import duckdb

    if db is not None and db.exists():
        db.unlink()

    def load():
        con = duckdb.connect(str(db) if db else ":memory:", config={"autoinstall_known_extensions": False})
        try:
            con.execute(sql, {"f": arg})
        finally:
            con.close()

    _, wall, cpu = timed(load)
    return wall, cpu


def best_of(n: int, fn, fresh):
    """(result of the first run, min wall, min CPU) over n runs of fn(data_dir), each into a fresh data
    directory from fresh(i): the minimum is the run least disturbed by other jobs on the machine."""
    runs = [timed(lambda i=i: fn(fresh(i))) for i in range(n)]
    return runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)


def row(label: str, wall: float, cpu: float, mb: float, base: tuple[float, float] | None) -> str:
    ratios = f"  ratio {wall / base[0]:.2f}x wall, {cpu / base[1]:.2f}x cpu" if base else ""
    return f"  {label:<31} {wall:6.2f} s  cpu {cpu:6.2f} s  {mb / wall:6.1f} MB/s{ratios}"


def lookups(data_dir: Path) -> None:
    """Prompts read through the `prompts` view (spans resolved against documents.text): the rollout task's
    lookup by id (tasks/rollout.py) and gae.db.fetch_prompts' seeded sample, best of 3 each."""
    from gae.db import connect, fetch_prompts

    con = connect(data_dir, read_only=True, views=False)
    try:
        ids = [
            r[0]
            for r in con.execute(
                "select prompt_id from prompt_spans using sample 32 rows (reservoir, 7)"
            ).fetchall()
        ]
        by_id = "select prompt_id, prompt, reference from prompts where list_contains($ids, prompt_id) order by prompt_id"
        for label, fn in (
            ("prompts by id (32, rollout task)", lambda: con.execute(by_id, {"ids": ids}).fetchall()),
            ("fetch_prompts train, 32 seeded ", lambda: fetch_prompts(con, split="train", limit=32, seed=0)),
            ("fetch_prompts eval, 32 seeded  ", lambda: fetch_prompts(con, split="eval", limit=32, seed=0)),
        ):
            best = min(time_it(fn) for _ in range(3))
            print(f"  {label}  {best:6.3f} s (best of 3)")
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200.0, help="Size of the generated JSON-lines file.")
    ap.add_argument("--text-mb", type=float, default=50.0, help="Size of the generated text folder.")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Runs of each gae ingest (fresh data directories): the minimum is shown.",
    )
    args = ap.parse_args()

    from gae.db import connect
    from gae.ingest import IngestConfig, ingest, nfc_suspects

    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-ingest-"))
    try:
        # one-time costs out of the timings: imports behind connect() (gae.store imports torch)
        # and the NFC character class built from unicodedata
        t = time.perf_counter()
        connect(tmp / "warm").close()
        nfc_suspects()
        print(f"first connect + NFC class (once per process)  {time.perf_counter() - t:.2f} s")
        jsonl, clean = tmp / "corpus.jsonl", tmp / "clean.jsonl"
        lines = make_jsonl(jsonl, clean, args.mb)
        mb = jsonl.stat().st_size / 1e6
        n = args.repeat
        mem = duckdb_load("create table t as select * from read_json_auto($f)", str(clean))
        loads = [duckdb_load("create table t as select * from read_json_auto($f)", str(clean), tmp / "base.duckdb")
                 for _ in range(args.repeat)]  # fmt: skip
        base = (min(w for w, _ in loads), min(c for _, c in loads))
        s, *t1 = best_of(
            n, lambda d: ingest([jsonl], data_dir=d, options=IngestConfig()), lambda i: tmp / f"d1-{i}"
        )
        lost = lines - (s.inserted + s.duplicates + s.quarantined)
        print(f"JSON lines  {mb:7.1f} MB {lines} lines")
        print(row("duckdb read_json_auto -> memory", *mem, mb, None))
        print(row("duckdb read_json_auto -> file", *base, mb, None) + "  (the baseline)")
        print(row("gae ingest", *t1, mb, base))
        print(
            f"  inserted {s.inserted} duplicates {s.duplicates} quarantined {s.quarantined_by_reason} lost {lost}"
        )
        lookups(tmp / "d1-0")
        _, *t0 = best_of(
            n,
            lambda d: ingest([jsonl], data_dir=d, options=IngestConfig(make_prompts=False)),
            lambda i: tmp / f"d0-{i}",
        )
        print(row("gae ingest, no prompts", *t0, mb, base))
        s2, *t2 = timed(lambda: ingest([jsonl], data_dir=tmp / "d1-0", options=IngestConfig()))
        print(row("rerun (all duplicates)", *t2, mb, base) + f"  inserted {s2.inserted}")

        text_dir = tmp / "text"
        make_text(text_dir, args.text_mb)
        tmb = sum(p.stat().st_size for p in text_dir.iterdir()) / 1e6
        loads = [duckdb_load("create table t as select * from read_text($f)", str(text_dir / "*.txt"), tmp / "base.duckdb")
                 for _ in range(args.repeat)]  # fmt: skip
        tbase = (min(w for w, _ in loads), min(c for _, c in loads))
        _, *tt = best_of(
            n, lambda d: ingest([text_dir], data_dir=d, options=IngestConfig()), lambda i: tmp / f"d2-{i}"
        )
        print(f"text files  {tmb:7.1f} MB {len(list(text_dir.iterdir()))} files")
        print(row("duckdb read_text -> table", *tbase, tmb, None) + "  (the baseline)")
        print(row("gae ingest", *tt, tmb, tbase))

        shared = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
        for f in sorted(shared.glob("*")) if shared.exists() else []:
            if f.suffix not in (".jsonl", ".txt"):
                continue
            sql = "read_json_auto($f)" if f.suffix == ".jsonl" else "read_text($f)"
            b, _ = duckdb_load(f"create table t as select * from {sql}", str(f), tmp / "base.duckdb")
            r = ingest(
                [f], data_dir=tmp / f"d-{f.stem}", options=IngestConfig(split_paragraphs=f.suffix == ".txt")
            )
            fmb = f.stat().st_size / 1e6
            print(f"{f.name:<32} {fmb:6.2f} MB  duckdb {b:6.3f} s  gae {r.seconds:6.3f} s  ratio {r.seconds / b:.1f}x  "
                  f"docs {r.inserted} prompts {r.prompts}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
