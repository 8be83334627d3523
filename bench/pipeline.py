"""Orchestration overhead of the pipeline: a preset's flow wall time against the sum of its
tasks' own run times, read back from the Prefect API of this run.

    python bench/pipeline.py                      # smoke preset on a generated corpus
    python bench/pipeline.py --preset default     # the embedded demo (minutes)

overhead = rl-pipeline's run time - sum of every task run's run time (subflow bookkeeping,
state changes, result handling, the gaps between tasks). Process start-up (imports, the
temporary Prefect server) is reported apart: it is paid once per process, not per flow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = (
    "The river ran past the mill and the miller counted the sacks. He was a careful man. "
    "Every evening he wrote the numbers in a book, and every morning he read them again. "
    "When the flood came, the book was all that he saved. The village laughed at him.\n\n"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument(
        "--embedded", action="store_true", help="use the embedded corpus (default for --preset default)"
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="gae-bench-pipeline-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    overrides = [f"data_dir={tmp / 'data'}"]
    if args.preset == "smoke" and not args.embedded:
        corpus = tmp / "corpus"
        corpus.mkdir()
        for i in range(40):
            (corpus / f"doc{i:02d}.txt").write_text(TEXT.replace("river", f"river {i}") * 3)
        overrides.append(f'corpus=["{corpus}"]')

    from prefect.client.orchestration import get_client

    from flows.pipeline import rl_pipeline
    from gae.config import load_config

    cfg = load_config(preset=args.preset, overrides=overrides)
    t_flow = time.perf_counter()
    result = rl_pipeline(cfg)
    t_end = time.perf_counter()
    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs()
        tasks = client.read_task_runs()
    top = [f for f in flows if f.parent_task_run_id is None]
    assert len(top) == 1, f"expected one top-level flow run, found {len(top)}"
    flow_s = top[0].total_run_time.total_seconds()
    # A subflow appears as a task run of its parent too; its time is its own tasks' time
    # plus orchestration, so only leaf task runs count as compute.
    wrappers = {f.parent_task_run_id for f in flows if f.parent_task_run_id is not None}
    tasks = [t for t in tasks if t.id not in wrappers]
    task_s = sum(t.total_run_time.total_seconds() for t in tasks)
    by_name: dict[str, float] = {}
    for t in tasks:
        name = t.name.rsplit("-", 1)[0]
        by_name[name] = by_name.get(name, 0.0) + t.total_run_time.total_seconds()
    print(
        f"# preset {args.preset}: {len(result['iterations'])} iterations, {len(tasks)} task runs, {len(flows)} flow runs"
    )
    print(f"process wall (imports, temporary Prefect server, flow): {t_end - t_start:.1f} s")
    print(f"start-up before the flow (imports, config): {t_flow - t_start:.1f} s")
    print(
        f"rl-pipeline run time (Prefect): {flow_s:.1f} s; wall of the call {t_end - t_flow:.1f} s "
        "(includes starting the temporary Prefect server)"
    )
    print(f"sum of task run times: {task_s:.1f} s")
    print(f"orchestration overhead: {flow_s - task_s:.1f} s = {(flow_s - task_s) / flow_s:.1%} of the flow")
    print("| task | seconds |\n|---|---|")
    for name, s in sorted(by_name.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
