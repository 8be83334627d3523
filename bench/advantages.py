"""Advantage-engine throughput: each backend against a verl-style loop over T and a plain
memory copy of the same bytes, all measured in this run (the machine is shared and noisy,
so the ratios are what to compare, not the absolute times).

    python bench/advantages.py                # the table of the README and RESULTS.md
    python bench/advantages.py --sizes 64x512 --repeat 3

Bytes per token for float32: read rewards (4), values (4), mask (1); write advantages (4)
and returns (4) = 17. The copy baseline clones rewards, values and mask (18 bytes a token
moved each way), the closest torch gets to "touch every input, write two outputs".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gae.advantages import compute_gae  # noqa: E402
from gae.demo import synthetic_batch  # noqa: E402
from gae.masked import masked_whiten, masked_whiten_torch  # noqa: E402

SIZES = [(64, 512), (256, 1024), (1024, 2048), (512, 8192)]


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up: compilation, page faults of the first allocation
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=[f"{b}x{t}" for b, t in SIZES])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument(
        "--loop-max-tokens", type=int, default=3_000_000, help="skip the slow loop above this size"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one pool on the hot loop (numba is single-threaded too)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, float32")
    hdr = "| B x T | path | ms | M tok/s | vs copy | vs loop |"
    print(hdr)
    print("|" + "---|" * 6)
    for spec in args.sizes:
        B, T = (int(x) for x in spec.split("x"))
        r, v, m = synthetic_batch(B, T, seed=0)
        n = B * T
        copy = median_time(lambda: (r.clone(), v.clone(), m.clone()), args.repeat)
        gae_nb = median_time(lambda: compute_gae(r, v, m, gamma=1.0, lam=0.95, backend="numba"), args.repeat)
        adv, _ = compute_gae(r, v, m, gamma=1.0, lam=0.95)
        white = median_time(lambda: masked_whiten(adv, m), args.repeat)
        white_t = median_time(lambda: masked_whiten_torch(adv, m), max(1, args.repeat // 2))
        loop = None
        if n <= args.loop_max_tokens:
            loop = median_time(
                lambda: compute_gae(r, v, m, gamma=1.0, lam=0.95, backend="torch"), max(1, args.repeat // 3)
            )
        rows = [
            ("memory copy", copy),
            ("GAE numba (checked)", gae_nb),
            ("whiten numba", white),
            ("whiten torch", white_t),
            ("GAE torch loop over T (verl-style)", loop),
        ]
        for name, s in rows:
            if s is None:
                print(f"| {B} x {T} | {name} | skipped (> --loop-max-tokens) | | | |")
                continue
            vs_loop = f"{loop / s:.1f}x" if loop else "-"
            print(
                f"| {B} x {T} | {name} | {s * 1e3:.2f} | {n / s / 1e6:,.0f} | {s / copy:.2f}x | {vs_loop} |"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
