"""What a real smoke run of `rl-pipeline` leaves for people to look at (issue 17): each
iteration's token report and plots in MLflow and in the data directory, a Prefect markdown
artifact that points at them, plot data that matches the Parquet store, and task inputs the
Prefect UI can read (no flow-run references)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.test_report import parse
from tests.test_tokenview import stored

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def test_each_iteration_logs_its_report_and_plots(smoke_run):
    from gae import plots
    from gae.tracking import get_client

    d, result, cfg = smoke_run["data_dir"], smoke_run["result"], smoke_run["cfg"]
    client = get_client(d)
    mlflow_run = result["mlflow_run_id"]
    for it in range(cfg.iterations):
        # the page in MLflow is the page in <data-dir>/reports, and it parses
        local = client.download_artifacts(mlflow_run, f"reports/iter-{it:05d}.html")
        with open(local, encoding="utf-8") as f:
            page = f.read()
        on_disk = (d / "reports" / result["run_id"] / f"iter-{it:05d}.html").read_text(encoding="utf-8")
        assert page == on_disk
        data = parse(page).data
        assert data["iteration"] == it and len(data["rollouts"]) == 10  # 3 best, 3 worst, 4 sampled
        for name in plots.NAMES:
            png = client.download_artifacts(mlflow_run, f"plots/{name}/iter-{it:05d}.png")
            with open(png, "rb") as f:
                blob = f.read()
            assert blob.startswith(PNG) and 2_000 < len(blob) < 60_000, (name, len(blob))
    hist = client.get_metric_history(mlflow_run, "timing_s/report")
    assert sorted(m.step for m in hist) == list(range(cfg.iterations))
    print("timing_s/report per iteration:", [round(m.value, 3) for m in sorted(hist, key=lambda m: m.step)])
    assert {a.path for a in client.list_artifacts(mlflow_run, "plots")} >= {"plots/training.png"}


def test_plot_data_is_the_store_by_position(smoke_run):
    """advantage and KL by position, and the explained variance, against numpy on the Parquet."""
    from gae import plots
    from gae import tokenview as tv

    d, run_id = smoke_run["data_dir"], smoke_run["result"]["run_id"]
    con = tv.open_store(d)
    try:
        data = plots.iteration_data(con, run_id, 1)
    finally:
        con.close()
    toks = [
        t for t in stored(d, "tokens") if t["run_id"] == run_id and t["iteration"] == 1 and t["is_action"]
    ]
    positions = sorted({t["position"] for t in toks})
    assert [r["position"] for r in data["by_position"]] == positions
    for r in data["by_position"]:
        adv = np.array([t["advantage"] for t in toks if t["position"] == r["position"]], dtype=np.float64)
        kl = np.array([t["kl"] for t in toks if t["position"] == r["position"]], dtype=np.float64)
        assert r["n"] == len(adv)
        assert r["adv_mean"] == pytest.approx(adv.mean(), rel=1e-9, abs=1e-12)
        assert r["adv_std"] == pytest.approx(adv.std(), rel=1e-6, abs=1e-9)
        assert r["adv_p90"] == pytest.approx(np.quantile(adv, 0.9), rel=1e-9, abs=1e-12)
        assert r["kl_mean"] == pytest.approx(kl.mean(), rel=1e-9, abs=1e-12)
    ret = np.array([t["returns"] for t in toks], dtype=np.float64)
    val = np.array([t["value"] for t in toks], dtype=np.float64)
    assert data["explained_variance"] == pytest.approx(1 - np.var(ret - val) / np.var(ret), rel=1e-6)
    assert data["n_tokens"] == len(toks) and len(data["value"]) == min(len(toks), plots.MAX_POINTS)
    rollouts = [r for r in stored(d, "rollouts") if r["run_id"] == run_id and r["iteration"] == 1]
    assert sorted(data["rewards"]["score"]) == sorted(r["score"] for r in rollouts)
    assert set(data["rewards"]) == {"score"} | {c.name for c in smoke_run["cfg"].rewards.components}

    # the figure draws those numbers
    fig = plots.figures(data, iteration=1)["advantage_by_position"]
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "mean")
    assert list(line.get_xdata()) == positions
    assert np.allclose(line.get_ydata(), [r["adv_mean"] for r in data["by_position"]])


def test_prefect_artifacts_link_the_report_and_task_inputs_are_plain(smoke_run):
    from prefect import get_client

    d, result = smoke_run["data_dir"], smoke_run["result"]

    async def read():
        async with get_client() as client:
            arts = await client.read_artifacts()
            runs = await client.read_task_runs()
            return arts, runs

    arts, task_runs = asyncio.run(read())
    key = ("tokens-" + f"{result['run_id']}-it1".lower().replace("_", "-"))[:100]
    art = next(a for a in arts if a.key == key)
    md = art.data
    report = d / "reports" / result["run_id"] / "iter-00001.html"
    assert f"`{report}`" in md and "reports/iter-00001.html" in md
    assert "data:image/png;base64," in md  # the advantage-by-position plot, inline
    assert md.count("| best ") == 3 and md.count("| worst ") == 3

    # Task inputs that reference a flow run break the Prefect UI's Task Runs tab.
    ours = [tr for tr in task_runs if tr.flow_run_id is not None]
    names = {tr.name.rsplit("-", 1)[0] for tr in ours}
    assert {"register-policy", "finish-run", "log-iteration"} <= names
    bad = {
        tr.name: {k: [i.input_type for i in v] for k, v in tr.task_inputs.items()}
        for tr in ours
        if any(i.input_type != "task_run" for v in tr.task_inputs.values() for i in v)
    }
    assert bad == {}
