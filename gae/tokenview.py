"""Per-token views of stored rollouts: pick rollouts of an iteration (one by id, the best and
worst by score, a seeded sample), read every stored number of their tokens, and colour each
token by one of those numbers on a diverging scale centred at 0.

It reads the Parquet store only, through DuckDB views on an in-memory connection: no model,
no Prefect, and not the project's `gae.duckdb` (a running flow holds that file; the Parquet
files of published iterations can be read meanwhile). The same code serves `gae show`, the
HTML report (`gae.report`) and the pipeline, which points it at an iteration's staging folder
before publishing (the folder has the store's layout).

Colour scale, for a value x and a scale s > 0 (by default s = max |x| over the tokens shown,
so colours compare across the rollouts of one view):

    t      = clip(x / s, -1, 1)
    colour = MIDDLE + |t| * (END - MIDDLE)      END = POSITIVE if t > 0 else NEGATIVE

per RGB channel, rounded; the ends are ColorBrewer's RdBu (red below 0, blue above), a
scale that readers with red-green colour blindness can still read. A missing value (None,
NaN; e.g. `train_logprob` before the update) gets MISSING.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gae.paths import DataDir

if TYPE_CHECKING:
    import duckdb

# The per-token numbers, in the order views list them; `log_ratio` is logprob - ref_logprob.
NUMBERS: tuple[str, ...] = (
    "advantage",
    "reward",
    "value",
    "returns",
    "kl",
    "logprob",
    "ref_logprob",
    "log_ratio",
    "train_logprob",
)
ALIASES = {
    "return": "returns",
    "adv": "advantage",
    "logprob-ref_logprob": "log_ratio",
    "logprob - ref_logprob": "log_ratio",
    "ratio": "log_ratio",
}
SHORT = {
    "advantage": "adv",
    "reward": "reward",
    "value": "value",
    "returns": "return",
    "kl": "kl",
    "logprob": "logp",
    "ref_logprob": "ref logp",
    "log_ratio": "logp-ref",
    "train_logprob": "train logp",
}

NEGATIVE = (178, 24, 43)  # #b2182b, RdBu's red end
MIDDLE = (247, 247, 247)  # #f7f7f7, RdBu's centre
POSITIVE = (33, 102, 172)  # #2166ac, RdBu's blue end
MISSING = (200, 200, 200)

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


# ------------------------------------------------------------------------------ colours


def column_name(by: str) -> str:
    """A `--by` value as a column of NUMBERS (aliases: return, adv, logprob-ref_logprob)."""
    name = ALIASES.get(by.strip(), by.strip())
    if name not in NUMBERS:
        raise ValueError(f"--by {by!r}: choose one of {', '.join(NUMBERS)} (or return, logprob-ref_logprob)")
    return name


def symmetric_scale(values) -> float:
    """max |x| over the finite values (0.0 when there are none): the scale's ends are ±this."""
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
    return max(finite, default=0.0)


def diverging_rgb(x: float | None, scale: float) -> tuple[int, int, int]:
    """The colour of `x` on the diverging scale of half-width `scale` (module docstring)."""
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if x is None or not math.isfinite(float(x)):
        return MISSING
    if scale == 0:
        return MIDDLE  # every value shown is 0
    t = max(-1.0, min(1.0, float(x) / scale))
    end = POSITIVE if t > 0 else NEGATIVE
    a = abs(t)
    return tuple(int(round(m + a * (e - m))) for m, e in zip(MIDDLE, end, strict=True))  # type: ignore[return-value]


def to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_rgb(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `background` (WCAG relative luminance)."""

    def lin(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in background)
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else (255, 255, 255)


def visible_text(token: str | None, token_id: int) -> str:
    """A token as it can be seen: line breaks, tabs and other control characters as symbols
    (↵, ⇥, control pictures), an empty token as ∅, a token without text as ⟨id⟩."""
    if token is None:
        return f"⟨{token_id}⟩"
    if token == "":
        return "∅"
    out = []
    for ch in token:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32:
            out.append(chr(0x2400 + ord(ch)))
        elif ord(ch) == 127:
            out.append("␡")
        else:
            out.append(ch)
    return "".join(out)


def line_breaks(token: str | None) -> int:
    """Line breaks a token ends (at most 2: a run of blank lines shows as one gap)."""
    return min(2, token.count("\n")) if token else 0


# ------------------------------------------------------------------------------ reading


@dataclass
class TokenRow:
    position: int
    token_id: int
    token: str | None
    is_action: bool
    values: dict[str, float | None]  # every name of NUMBERS


@dataclass
class RolloutView:
    """One rollout with its tokens; `rank` says why it is shown ("best 1", "worst 2", "sample", "selected")."""

    rank: str
    row: dict[str, Any]  # the rollouts row: every column, reward_<name> included
    tokens: list[TokenRow] = field(default_factory=list)

    @property
    def rollout_id(self) -> str:
        return self.row["rollout_id"]

    @property
    def components(self) -> dict[str, float | None]:
        from gae.store import COMPONENT_PREFIX

        return {k[len(COMPONENT_PREFIX) :]: v for k, v in self.row.items() if k.startswith(COMPONENT_PREFIX)}


def open_store(root: str | Path | DataDir | None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the `tokens` and `rollouts` views over the Parquet
    under `root` (a data directory, or a staging folder with the same layout)."""
    import duckdb

    from gae.store_views import register_views

    dd = root if isinstance(root, DataDir) else DataDir.resolve(root)
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    register_views(con, dd)
    return con


def _sql(name: str) -> str:
    from gae.db import load_sql

    return load_sql(f"tokenview/{name}")


def _rows(rel) -> list[dict]:
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def stored_runs(con) -> list[dict]:
    """[{run_id, iterations, written_at}], the run written last first."""
    return _rows(con.sql(_sql("runs")))


def resolve_run(con, run: str | None, runs_dir: Path | None = None) -> dict:
    """The stored run `run` names: a run id, a run name (its state file in `runs_dir` names
    its current run id), or an unambiguous prefix of a run id; None: the run written last.
    Returns {run_id, iterations, written_at}."""
    runs = stored_runs(con)
    if not runs:
        raise ValueError("no rollouts stored yet: `gae run` writes them")
    if run is None:
        return runs[0]
    by_id = {r["run_id"]: r for r in runs}
    if run in by_id:
        return by_id[run]
    if runs_dir is not None and _RUN_NAME.fullmatch(run):
        from gae.runstate import RunState

        state = RunState.load(Path(runs_dir), run)
        if state is not None and state.run_id in by_id:
            return by_id[state.run_id]
    prefixed = [r for r in runs if r["run_id"].startswith(run)]
    if len(prefixed) == 1:
        return prefixed[0]
    listed = ", ".join(r["run_id"] for r in runs[:5]) + (" ..." if len(runs) > 5 else "")
    what = "matches several runs" if prefixed else "is not a stored run id, run name or id prefix"
    raise ValueError(f"--run {run!r} {what}; stored runs: {listed}")


def resolve_iteration(run: dict, iteration: int | None) -> int:
    its = list(run["iterations"])
    if iteration is None:
        return its[-1]
    if iteration not in its:
        raise ValueError(f"run {run['run_id']} has no stored iteration {iteration}; stored: {its}")
    return iteration


def pick(
    con, run_id: str, iteration: int, *, best: int = 0, worst: int = 0, sample: int = 0, seed: int = 0
) -> list[tuple[str, str]]:
    """(rollout_id, rank) of the `best` highest-scoring rollouts, the `worst` lowest-scoring
    (worst first), then `sample` others in a seeded order; no rollout twice."""
    for name, k in (("best", best), ("worst", worst), ("sample", sample)):
        if int(k) < 0:
            raise ValueError(f"{name} must be >= 0, got {k}")
    params = {
        "run_id": run_id,
        "iteration": int(iteration),
        "best": int(best),
        "worst": int(worst),
        "sample": int(sample),
        "seed": str(int(seed)),
    }
    rows = _rows(con.sql(_sql("pick"), params=params))
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(rid: str, rank: str) -> None:
        if rid not in seen:
            seen.add(rid)
            out.append((rid, rank))

    for r in sorted((r for r in rows if r["best_rank"] <= best), key=lambda r: r["best_rank"]):
        add(r["rollout_id"], f"best {r['best_rank']}")
    for r in sorted((r for r in rows if r["worst_rank"] <= worst), key=lambda r: r["worst_rank"]):
        add(r["rollout_id"], f"worst {r['worst_rank']}")
    n = 0
    for r in sorted(rows, key=lambda r: r["sample_rank"]):
        if n >= sample:
            break
        if r["rollout_id"] not in seen:
            add(r["rollout_id"], "sample")
            n += 1
    return out


def load(con, run_id: str, iteration: int, picks: list[tuple[str, str]]) -> list[RolloutView]:
    """The picked rollouts with every stored number of their tokens, in the order picked.
    A rollout id the iteration does not hold raises ValueError naming it."""
    ids = [rid for rid, _ in picks]
    if not ids:
        return []
    params = {"run_id": run_id, "iteration": int(iteration), "ids": ids}
    rows = {r["rollout_id"]: r for r in _rows(con.sql(_sql("rollouts"), params=params))}
    missing = [rid for rid in ids if rid not in rows]
    if missing:
        raise ValueError(f"run {run_id} iteration {iteration} has no rollout {missing[0]!r}")
    views = {rid: RolloutView(rank=rank, row=rows[rid]) for rid, rank in picks}
    for t in _rows(con.sql(_sql("tokens"), params=params)):
        views[t["rollout_id"]].tokens.append(
            TokenRow(
                position=int(t["position"]),
                token_id=int(t["token_id"]),
                token=t["token"],
                is_action=bool(t["is_action"]),
                values={k: _num(t[k]) for k in NUMBERS},
            )
        )
    return [views[rid] for rid in ids]


def _num(v) -> float | None:
    return None if v is None else float(v)


def iteration_summary(con, run_id: str, iteration: int) -> dict:
    rows = _rows(con.sql(_sql("summary"), params={"run_id": run_id, "iteration": int(iteration)}))
    return rows[0] if rows else {}


def view_scale(views: list[RolloutView], by: str) -> float:
    """max |x| of column `by` over the action tokens of `views`."""
    return symmetric_scale(t.values[by] for v in views for t in v.tokens if t.is_action)


# ------------------------------------------------------------------------------ output


def to_json(views: list[RolloutView], *, run_id: str, iteration: int, by: str, scale: float) -> dict:
    """Everything a view shows, for scripts: each token's numbers and its colour (`#rrggbb`)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return v

    return {
        "run_id": run_id,
        "iteration": iteration,
        "by": by,
        "scale": scale,
        "rollouts": [
            {
                "rank": v.rank,
                **{k: clean(x) for k, x in v.row.items()},
                "tokens": [
                    {
                        "position": t.position,
                        "token_id": t.token_id,
                        "token": t.token,
                        "is_action": t.is_action,
                        **{k: clean(x) for k, x in t.values.items()},
                        "color": to_hex(diverging_rgb(t.values[by], scale)),
                    }
                    for t in v.tokens
                ],
            }
            for v in views
        ],
    }


def styled_text(view: RolloutView, by: str, scale: float):
    """The response as a rich Text: each token on its colour, line breaks kept; tool or
    observation tokens (not actions) in grey italics."""
    from rich.text import Text

    text = Text()
    for t in view.tokens:
        shown = visible_text(t.token, t.token_id)
        if t.is_action:
            bg = diverging_rgb(t.values[by], scale)
            text.append(shown, style=f"{to_hex(text_rgb(bg))} on {to_hex(bg)}")
        else:
            text.append(shown, style="italic grey50")
        if line_breaks(t.token):
            text.append("\n" * line_breaks(t.token))
    return text


def legend(by: str, scale: float, steps: int = 9):
    """A colour bar from -scale to +scale with its ends and centre labelled."""
    from rich.text import Text

    text = Text(f"{by}: ")
    text.append(f"{-scale:+.3g} ")
    for i in range(steps):
        x = -scale + 2 * scale * i / (steps - 1) if steps > 1 else 0.0
        text.append("  ", style=f"on {to_hex(diverging_rgb(x, scale))}")
    text.append(f" {scale:+.3g}   (red below 0, blue above, white 0; grey: missing)")
    return text


def numbers_table(view: RolloutView, by: str, scale: float):
    """A compact table: one row per token, every stored number, the `by` column coloured."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    table.add_column("pos", justify="right")
    table.add_column("token")
    for k in NUMBERS:
        table.add_column(SHORT[k], justify="right")
    for t in view.tokens:
        cells = [str(t.position), Text(visible_text(t.token, t.token_id))]  # Text: never read as markup
        for k in NUMBERS:
            v = t.values[k]
            cell = "-" if v is None else f"{v:.3f}"
            if k == by and t.is_action:
                bg = diverging_rgb(v, scale)
                cell = f"[{to_hex(text_rgb(bg))} on {to_hex(bg)}]{cell}[/]"
            cells.append(cell)
        table.add_row(*cells, style=None if t.is_action else "italic grey50")
    return table


def header(view: RolloutView, iteration: int, prompt_chars: int = 160):
    """Rollout id, rank, score and its components, length, finish reason; the prompt's end."""
    from rich.text import Text

    row = view.row
    comps = ", ".join(f"{k} {v:.3f}" for k, v in view.components.items() if v is not None)
    score = row.get("score")
    text = Text()
    text.append(f"{view.rank}", style="bold")
    text.append(f"  rollout {view.rollout_id}  iteration {iteration}  ")
    text.append(f"score {score:.4f}" if score is not None else "score -", style="bold")
    if comps:
        text.append(f" ({comps})")
    text.append(f"  {row.get('response_length')} tokens, {row.get('finish_reason')}")
    prompt = row.get("prompt") or ""
    if len(prompt) > prompt_chars:
        prompt = "…" + prompt[-prompt_chars:]
    text.append("\nprompt: ", style="dim")
    text.append(visible_text(prompt, -1), style="dim")
    return text
