"""Per-iteration cost of the token report and plots (issue 17) against writing the same
iteration to the per-token store, measured in one run on the same data.

    python bench/token_views.py                    # 128 rows x 64 tokens (the default preset's iteration)
    python bench/token_views.py --B 512 --T 256    # a larger iteration

Views = what `log-iteration` adds per iteration (`gae.report.build_iteration`: picking and
reading the shown rollouts, the summary, the plot data and four matplotlib figures; then the
four PNGs rendered and the page written). Baseline = `gae.store.write_iteration` of the same
iteration (tokens and rollouts files), the step every iteration already pays. Matplotlib's
import is paid once per process, before the timed rounds (a pipeline pays it at its first
iteration). Median of `--repeat` interleaved rounds.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.store import median, synthetic  # noqa: E402
from gae import plots, report  # noqa: E402
from gae.store import write_iteration  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=128, help="rollouts in the iteration")
    ap.add_argument("--T", type=int, default=64, help="tokens per rollout")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-views-"))
    try:
        batch, out = synthetic(args.B, args.T, vocab=512)

        def store():
            write_iteration(tmp / "data", run_id="bench", iteration=0, batch=batch, **out)

        page_sizes, png_sizes = [], []

        def views():
            built = report.build_iteration(tmp / "data", "bench", 0)
            report.write(tmp / "report.html", built.page)
            pngs = [plots.png_bytes(f) for f in built.figures.values()]
            pngs.append(plots.png_bytes(built.figures["advantage_by_position"], dpi=60))  # the Prefect thumbnail
            page_sizes.append(len(built.page.encode()))
            png_sizes.append(sum(len(p) for p in pngs[:4]))

        store()
        t0 = time.perf_counter()
        views()  # imports matplotlib, compiles DuckDB's plans: once per process
        first = time.perf_counter() - t0
        t_store = median(store, args.repeat)
        t_views = median(views, args.repeat)
        rows = args.B * args.T
        print(f"iteration: {args.B} rollouts x {args.T} tokens = {rows} token rows")
        print(f"{'step':<38}{'seconds':>10}{'vs store':>10}")
        print(f"{'store write (baseline)':<38}{t_store:>10.3f}{1.0:>9.2f}x")
        print(f"{'token report + 4 plots (+ thumbnail)':<38}{t_views:>10.3f}{t_views / t_store:>9.2f}x")
        print(f"{'  first call in a process':<38}{first:>10.3f}{first / t_store:>9.2f}x")
        print(f"report page {page_sizes[-1] / 1024:.0f} KiB; 4 PNGs {png_sizes[-1] / 1024:.0f} KiB in all")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
