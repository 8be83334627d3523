"""Per-iteration plots of the per-token store (matplotlib's Agg canvas, small PNGs):

- `advantage_by_position`: mean advantage of action tokens at each response position, a
  ±1 std band and the 10th/90th percentiles: where in the response the credit lands;
- `value_vs_return`: critic value V_t against its target R_t for a seeded sample of tokens,
  with y = x and the explained variance 1 - Var(R - V) / Var(R) over all tokens: the
  picture behind `critic/vf_explained_var`;
- `reward_components`: the distribution over rollouts of the score and of each reward
  component (`reward_<name>` columns);
- `kl_by_position`: mean per-token KL to the reference policy at each position, with the
  10th-90th percentile band.

Data comes from the store through DuckDB (`iteration_data`), figures from that data
(`figures`), so the figures can be checked against numbers computed elsewhere. Figures are
`matplotlib.figure.Figure` objects built without pyplot: no global figure registry to leak
from a long-running worker, nothing to close.
"""

from __future__ import annotations

import math
import random
from typing import Any

from gae import tokenview as tv
from gae.store import COMPONENT_PREFIX

FIGSIZE = (4.8, 3.0)  # inches; at DPI this is a 432 x 270 PNG of 15-30 KB
DPI = 90
MAX_POINTS = 2000  # tokens in the value-vs-return scatter
NAMES = ("advantage_by_position", "value_vs_return", "reward_components", "kl_by_position")


def _sql(name: str) -> str:
    from gae.db import load_sql

    return load_sql(f"plots/{name}")


def iteration_data(con, run_id: str, iteration: int, *, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """What the plots of (run_id, iteration) show, from the `tokens` and `rollouts` views of `con`.

    Returns {"by_position": [{position, n, adv_mean, adv_std, adv_p10, adv_p90, kl_mean,
    kl_p10, kl_p90}], "value": [...], "returns": [...], "explained_variance": float | None,
    "n_tokens": int, "rewards": {"score": [...], "<component>": [...]}}."""
    params = {"run_id": run_id, "iteration": int(iteration)}
    by_pos = tv._rows(con.sql(_sql("by_position"), params=params))
    pts = con.sql(_sql("value_return"), params={**params, "limit": int(max_points)}).fetchall()
    ev = tv._rows(con.sql(_sql("explained_variance"), params=params))[0]
    rows = tv._rows(con.sql(_sql("rollout_rewards"), params=params))
    rewards: dict[str, list[float]] = {}
    if rows:
        rewards["score"] = [r["score"] for r in rows]
        for k in rows[0]:
            if k.startswith(COMPONENT_PREFIX):
                rewards[k[len(COMPONENT_PREFIX) :]] = [r[k] for r in rows]
    return {
        "by_position": by_pos,
        "value": [p[0] for p in pts],
        "returns": [p[1] for p in pts],
        "explained_variance": ev["explained_variance"],
        "n_tokens": int(ev["n"]),
        "rewards": rewards,
    }


def _axes(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    # fixed margins: a layout engine would cost more than the plot itself, every iteration
    fig.subplots_adjust(left=0.15, right=0.97, top=0.9, bottom=0.16)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, linewidth=0.5)
    return fig, ax


def _finite(xs) -> list[float]:
    return [float("nan") if x is None else float(x) for x in xs]


def figures(data: dict[str, Any], *, iteration: int) -> dict[str, Any]:
    """The four figures (NAMES) of one iteration's `iteration_data`."""
    figs = {}
    pos = [r["position"] for r in data["by_position"]]
    col = {k: _finite(r[k] for r in data["by_position"]) for k in data["by_position"][0]} if pos else {}

    fig, ax = _axes(f"advantage by response position, iteration {iteration}")
    if pos:
        lo = [m - s for m, s in zip(col["adv_mean"], col["adv_std"], strict=True)]
        hi = [m + s for m, s in zip(col["adv_mean"], col["adv_std"], strict=True)]
        ax.fill_between(pos, lo, hi, color="#2166ac", alpha=0.2, linewidth=0, label="mean ± std")
        ax.plot(pos, col["adv_mean"], color="#2166ac", linewidth=1.4, label="mean")
        ax.plot(pos, col["adv_p10"], color="#b2182b", linewidth=0.8, linestyle="--", label="p10 / p90")
        ax.plot(pos, col["adv_p90"], color="#b2182b", linewidth=0.8, linestyle="--")
        ax.legend(fontsize=6, loc="upper left")  # "best" searches the data: a third of the draw
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("position in response", fontsize=8)
    ax.set_ylabel("advantage", fontsize=8)
    figs["advantage_by_position"] = fig

    ev = data["explained_variance"]
    ev_text = f"{ev:.3f}" if ev is not None and math.isfinite(ev) else "n/a"
    fig, ax = _axes(f"value vs return, iteration {iteration} (explained var {ev_text})")
    v, r = _finite(data["value"]), _finite(data["returns"])
    if v:
        ax.scatter(r, v, s=4, alpha=0.35, color="#2166ac", linewidths=0)
        both = [x for x in v + r if math.isfinite(x)]
        if both:
            lo, hi = min(both), max(both)
            ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.7, label="value = return")
            ax.legend(fontsize=6, loc="upper left")  # "best" searches the data: a third of the draw
    shown = f"{len(v)} of {data['n_tokens']} tokens" if len(v) < data["n_tokens"] else f"{len(v)} tokens"
    ax.set_xlabel(f"return (critic target); {shown}", fontsize=8)
    ax.set_ylabel("value", fontsize=8)
    figs["value_vs_return"] = fig

    rewards = data["rewards"]
    n = len(rewards.get("score", []))
    fig, ax = _axes(f"reward per rollout, iteration {iteration} ({n} rollouts)")
    if rewards:
        names = list(rewards)
        series = [[x for x in _finite(rewards[k]) if math.isfinite(x)] for k in names]
        ax.boxplot(series, vert=False, widths=0.6, showfliers=False)
        # every rollout as a point too, jittered off its row: a box hides a two-valued reward
        rng = random.Random(0)
        for i, xs in enumerate(series, start=1):
            ys = [i + rng.uniform(-0.22, 0.22) for _ in xs]
            ax.scatter(xs, ys, s=5, alpha=0.45, color="#2166ac", linewidths=0, zorder=3)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=7)
        ax.set_xlabel("value (score: weighted sum of the components)", fontsize=8)
    figs["reward_components"] = fig

    fig, ax = _axes(f"KL to the reference by position, iteration {iteration}")
    if pos:
        ax.fill_between(
            pos, col["kl_p10"], col["kl_p90"], color="#b2182b", alpha=0.2, linewidth=0, label="p10-p90"
        )
        ax.plot(pos, col["kl_mean"], color="#b2182b", linewidth=1.4, label="mean")
        ax.legend(fontsize=6, loc="upper left")  # "best" searches the data: a third of the draw
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("position in response", fontsize=8)
    ax.set_ylabel("per-token KL", fontsize=8)
    figs["kl_by_position"] = fig
    return figs


def png_bytes(fig, *, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (Agg canvas)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
