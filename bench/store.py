"""Per-token store: writer throughput against a bare Polars `write_parquet` of the same
frame, and the time of every named query over the stored tokens, all in one run.

    python bench/store.py                       # 10 M token rows (the issue's target size)
    python bench/store.py --rows 2000000 --repeat 3

Writer = `gae.store.write_iteration`: builds the tokens and rollouts frames from (B, T)
tensors, writes both files under temporary names, fsyncs, renames. Baseline = Polars
`write_parquet(zstd)` of the tokens frame the writer built (no frame building, no fsync,
no rename, no rollouts file) at Polars' default zstd level; the writer uses level 1 (same
size on these near-incompressible floats), so a second row shows Polars at level 1. Targets (issue 5): writer >= 50% of the baseline's rows/s;
every named query < 1 s over 10 M token rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gae.batch import RolloutBatch  # noqa: E402
from gae.db import run_query  # noqa: E402
from gae.rewards import ScoreTable  # noqa: E402
from gae.store import tokens_frame, write_iteration  # noqa: E402
from gae.store_views import register_views  # noqa: E402

# The per-token named queries (sql/queries/<name>.sql; the others there read the corpus tables),
# run with their header defaults: the run written last, all iterations.
QUERIES = (
    "advantage_by_position",
    "top_tokens",
    "reward_trend",
    "kl_by_iteration",
    "worst_rollouts",
    "explained_variance",
)


def bench_tokenizer(out_dir: Path):
    """A byte-level BPE trained here on generated English and CJK words (the writer fills the
    `token` column from the run's tokenizer, as the pipeline does)."""
    import random

    from gae.tokenizer import load_tokenizer, train_tokenizer

    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]
    words += [
        "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(rng.randint(1, 3))) for _ in range(2000)
    ]
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(2000)]
    return load_tokenizer(train_tokenizer(texts, vocab_size=8000, out_dir=out_dir))


def synthetic(B: int, T: int, seed: int = 0, vocab: int = 32000) -> tuple[RolloutBatch, dict]:
    """B full-length rows of T tokens (B*T token rows) and per-token outputs."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)

    def f():
        return torch.randn(B, T, generator=g)

    batch = RolloutBatch(
        rollout_ids=[f"p{i // 4}/{i % 4}" for i in range(B)],
        prompt_ids=[f"p{i // 4}" for i in range(B)],
        group_ids=torch.arange(B) // 4,
        prompt_tokens=torch.ones(B, 8, dtype=torch.long),
        prompt_mask=torch.ones(B, 8, dtype=torch.bool),
        response_tokens=torch.randint(0, vocab, (B, T), generator=g),
        action_mask=mask,
        logprobs=-f().abs(),
        ref_logprobs=-f().abs(),
        values=f(),
        last_values=torch.zeros(B),
        prompts=["a prompt"] * B,
        responses=["a response"] * B,
        references=[None] * B,
        finish_reasons=["eos"] * B,
    )
    total = torch.randn(B, generator=g)
    out = dict(
        token_rewards=f(),
        kl=f().abs() * 0.01,
        advantages=f(),
        returns=f(),
        scores=ScoreTable(total=total, components={"chrf": total}, weights={"chrf": 1.0}),
    )
    return batch, out


def median(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="token rows (writer and query data)")
    ap.add_argument("--T", type=int, default=500, help="response length of the synthetic rows")
    ap.add_argument("--iterations", type=int, default=10, help="iterations the query data is split into")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-store-"))
    try:
        B = args.rows // args.T
        tok = bench_tokenizer(tmp / "tok")
        batch, out = synthetic(B, args.T, vocab=tok.vocab_size)
        rows = B * args.T
        print(
            f"tokenizer: byte-level BPE, {tok.vocab_size} tokens (the token column is filled, as in the pipeline)"
        )

        # --- writer vs bare Polars, same frame (token text included), same run
        frame = tokens_frame(
            batch,
            token_rewards=out["token_rewards"],
            kl=out["kl"],
            advantages=out["advantages"],
            returns=out["returns"],
            tokenizer=tok,
        )
        assert frame.height == rows
        # Interleaved rounds (baseline, writer, frame build), median of each: the machine is
        # shared, so drift hits all three alike.
        fns = {
            "polars": lambda: frame.write_parquet(tmp / "bare.parquet", compression="zstd"),
            "polars1": lambda: frame.write_parquet(
                tmp / "bare1.parquet", compression="zstd", compression_level=1
            ),
            "writer": lambda: write_iteration(
                tmp / "w", run_id="w", iteration=0, batch=batch, tokenizer=tok, **out
            ),
            "build": lambda: tokens_frame(
                batch,
                token_rewards=out["token_rewards"],
                kl=out["kl"],
                advantages=out["advantages"],
                returns=out["returns"],
                tokenizer=tok,
            ),
        }
        for fn in fns.values():
            fn()  # warm-up: allocator, page cache, directory creation
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeat):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        t_polars, t_polars1, t_writer, t_build = (
            sorted(times[k])[len(times[k]) // 2] for k in ("polars", "polars1", "writer", "build")
        )
        size = (tmp / "bare.parquet").stat().st_size
        print(f"\n{rows:,} token rows x {frame.width} columns, {size / 1e6:.0f} MB zstd")
        print(f"{'':34s} {'seconds':>8s} {'M rows/s':>9s} {'vs polars':>10s}")
        print(
            f"{'polars write_parquet (baseline)':34s} {t_polars:8.3f} {rows / t_polars / 1e6:9.2f} {1.0:10.2f}"
        )
        print(
            f"{'polars write_parquet, zstd level 1':34s} {t_polars1:8.3f} {rows / t_polars1 / 1e6:9.2f} "
            f"{t_polars / t_polars1:10.2f}"
        )
        print(
            f"{'gae.store.write_iteration':34s} {t_writer:8.3f} {rows / t_writer / 1e6:9.2f} {t_polars / t_writer:10.2f}"
        )
        print(f"{'  of which building the frame':34s} {t_build:8.3f}")
        shutil.rmtree(tmp / "w")
        (tmp / "bare.parquet").unlink()
        (tmp / "bare1.parquet").unlink()
        frame = None

        # --- named queries over the same number of rows, split into iterations
        data = tmp / "q"
        per = B // args.iterations
        for it in range(args.iterations):
            sl = slice(it * per, (it + 1) * per)
            part = RolloutBatch(
                **{
                    k: (v[sl] if isinstance(v, (torch.Tensor, list)) else v)
                    for k, v in batch.__dict__.items()
                    if k != "meta"
                },
                meta={},
            )
            o = {k: v[sl] for k, v in out.items() if k != "scores"}
            sc = out["scores"]
            o["scores"] = ScoreTable(
                total=sc.total[sl],
                components={k: v[sl] for k, v in sc.components.items()},
                weights=sc.weights,
            )
            write_iteration(data, run_id="bench", iteration=it, batch=part, **o)
        import duckdb

        con = duckdb.connect()
        register_views(con, data)
        n = con.sql("select count(*) from tokens").fetchall()[0][0]
        print(
            f"\nnamed queries over {n:,} token rows in {args.iterations} iterations (median of {args.repeat}, warm)"
        )
        worst = 0.0
        for name in QUERIES:
            run_query(con, name, {}).fetchall()  # warm-up: file metadata, page cache
            t = median(lambda: run_query(con, name, {}).fetchall(), args.repeat)
            worst = max(worst, t)
            print(f"  {name:28s} {t:7.3f} s")
        print(f"  {'slowest':28s} {worst:7.3f} s  (target < 1 s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
