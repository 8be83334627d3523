"""The token report of one iteration: a single self-contained HTML file (inline CSS and
JavaScript, no network, opens offline) with the iteration's best and worst rollouts and a
seeded sample, each token coloured by its advantage (`gae.tokenview`'s diverging scale).
Hovering a token shows every number stored with it; clicking pins that box and puts the
token in the address (`#tok=R:I`), so a link opens on it.

The numbers travel as one JSON object in the page (per rollout, one list per column; each
stored float32 as the shortest decimal that reads back to it, `null` where missing); each token is a `<span
class="t" data-k="R:I">` whose background is its colour. Token text and prompts are escaped,
and the JSON is escaped for a `<script>` element, so no text from a model or a corpus can
become markup or code in the page.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from gae import tokenview as tv

DEFAULT_BEST = 3
DEFAULT_WORST = 3
DEFAULT_SAMPLE = 4
BY = "advantage"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#fff}
main{max-width:1100px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin:2px 0}.help{color:#57606a;font-size:13px}
table.sum{border-collapse:collapse;margin:8px 0}table.sum td{padding:1px 14px 1px 0}table.sum td:first-child{color:#57606a}
.legend{display:flex;align-items:center;gap:6px;margin:10px 0;font-size:13px}
.legend .bar{width:240px;height:14px;border:1px solid #d0d7de;border-radius:2px}
article{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:10px 0}
article h3{font-size:14px;margin:0 0 2px}article h3 .rank{display:inline-block;min-width:64px}
.prompt{color:#57606a;font-size:13px;white-space:pre-wrap;margin:6px 0;max-height:4.5em;overflow:hidden}
.tokens{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:break-spaces;overflow-wrap:anywhere;margin:6px 0 0}
.t{border-radius:2px;padding:1px 0;box-shadow:inset -1px 0 rgba(0,0,0,.12);cursor:pointer}
.t.obs{font-style:italic;color:#6e7781;background:repeating-linear-gradient(45deg,#eee,#eee 3px,#f8f8f8 3px,#f8f8f8 6px)}
.t:hover,.t.pin{outline:2px solid #1f2328;outline-offset:0}
#tip{position:absolute;z-index:9;background:#fff;border:1px solid #8c959f;border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.18);
padding:8px 10px;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;min-width:220px}
#tip table{border-collapse:collapse}#tip td{padding:0 0 0 12px;text-align:right}#tip td:first-child{padding:0;text-align:left;color:#57606a}
#tip .tk{font-weight:600;margin-bottom:4px;white-space:pre}#tip .by td{font-weight:700;color:#1f2328}
"""

# Builds the hover box with DOM calls and textContent only: token text never becomes markup.
_JS = """
(function(){
const D=JSON.parse(document.getElementById('gae-data').textContent);
const tip=document.getElementById('tip');let pinned=null;
function fmt(v){return v===null?'-':(Math.abs(v)>=1e4||(v!==0&&Math.abs(v)<1e-3)?v.toExponential(4):v.toFixed(5))}
function show(el){
  const [r,i]=el.dataset.k.split(':').map(Number);const R=D.rollouts[r];const c=R.tokens;
  tip.replaceChildren();const h=document.createElement('div');h.className='tk';
  h.textContent=JSON.stringify(c.token[i])+'  pos '+c.position[i]+'  id '+c.token_id[i]+(c.is_action[i]?'':'  (not an action)');
  tip.appendChild(h);const tb=document.createElement('table');
  for(const k of D.numbers){const tr=document.createElement('tr');if(k===D.by)tr.className='by';
    const a=document.createElement('td');a.textContent=D.labels[k];const b=document.createElement('td');b.textContent=fmt(c[k][i]);
    tr.append(a,b);tb.appendChild(tr)}
  tip.appendChild(tb);tip.hidden=false;
  const b=el.getBoundingClientRect();let x=window.scrollX+b.left,y=window.scrollY+b.bottom+6;
  tip.style.left=Math.max(4,Math.min(x,window.scrollX+document.documentElement.clientWidth-tip.offsetWidth-8))+'px';tip.style.top=y+'px';
}
function pin(el){if(pinned)pinned.classList.remove('pin');pinned=el;if(el){el.classList.add('pin');show(el)}else tip.hidden=true}
document.addEventListener('mouseover',e=>{const el=e.target.closest('.t');if(el&&!pinned)show(el)});
document.addEventListener('mouseout',e=>{if(!pinned&&e.target.closest('.t'))tip.hidden=true});
document.addEventListener('click',e=>{const el=e.target.closest('.t');
  if(el){pin(el);link('#tok='+el.dataset.k)}else if(!e.target.closest('#tip')){pin(null);link(' ')}});
function link(h){try{history.replaceState(null,'',h)}catch(_){}}  // sandboxed frames (MLflow's viewer) refuse it
const m=location.hash.match(/^#tok=(\\d+:\\d+)$/);
if(m){const el=document.querySelector('.t[data-k="'+m[1]+'"]');if(el){el.scrollIntoView({block:'center'});pin(el)}}
})();
"""


def _script_json(obj) -> str:
    """JSON that is safe inside <script>: no `</script>`, `<!--` or `&` can appear in it."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean(v):
    if v is None:
        return None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


def _f32(v: float | None) -> float | None:
    """A stored FLOAT as the shortest decimal that reads back to the same float32 (`0.1125`,
    not `0.11249999701976776`): the page's numbers are the stored ones at half the size."""
    import numpy as np

    if v is None or not math.isfinite(v):
        return None
    return float(str(np.float32(v)))


def _gradient(scale: float, steps: int = 11) -> str:
    stops = []
    for i in range(steps):
        x = -scale + 2 * scale * i / (steps - 1) if scale > 0 else 0.0
        stops.append(f"{tv.to_hex(tv.diverging_rgb(x, scale))} {100 * i / (steps - 1):.0f}%")
    return "linear-gradient(90deg," + ",".join(stops) + ")"


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def render(
    views: list[tv.RolloutView],
    *,
    run_id: str,
    iteration: int,
    summary: dict | None = None,
    by: str = BY,
    scale: float | None = None,
) -> str:
    """The report page for `views` (rollouts with their tokens, as `tokenview.load` returns
    them), coloured by column `by` on the scale ±`scale` (default: max |by| shown)."""
    by = tv.column_name(by)
    s = tv.view_scale(views, by) if scale is None else float(scale)
    esc = html.escape
    data = {
        "run_id": run_id,
        "iteration": iteration,
        "by": by,
        "scale": s,
        "numbers": list(tv.NUMBERS),
        "labels": {k: k if k != "log_ratio" else "logprob - ref_logprob" for k in tv.NUMBERS},
        "rollouts": [],
    }
    sections: dict[str, list[str]] = {}
    for r, v in enumerate(views):
        cols: dict[str, list] = {"position": [], "token_id": [], "token": [], "is_action": []}
        cols.update({k: [] for k in tv.NUMBERS})
        spans = []
        for i, t in enumerate(v.tokens):
            cols["position"].append(t.position)
            cols["token_id"].append(t.token_id)
            cols["token"].append(t.token)
            cols["is_action"].append(t.is_action)
            for k in tv.NUMBERS:
                cols[k].append(_f32(t.values[k]))
            shown = esc(tv.visible_text(t.token, t.token_id))
            if t.is_action:
                bg = tv.diverging_rgb(t.values[by], s)
                style = f' style="background:{tv.to_hex(bg)};color:{tv.to_hex(tv.text_rgb(bg))}"'
                spans.append(f'<span class="t" data-k="{r}:{i}"{style}>{shown}</span>')
            else:
                spans.append(f'<span class="t obs" data-k="{r}:{i}">{shown}</span>')
            spans.append("\n" * tv.line_breaks(t.token))
        data["rollouts"].append(
            {"rollout_id": v.rollout_id, "rank": v.rank, "tokens": cols, "row": _row_json(v.row)}
        )
        row = v.row
        comps = " · ".join(f"{esc(k)} {_fmt(x, '.3f')}" for k, x in v.components.items())
        card = (
            f'<article id="r{r}" data-rollout-id="{esc(v.rollout_id)}">'
            f'<h3><span class="rank">{esc(v.rank)}</span> score {_fmt(row.get("score"))}'
            f"{' · ' + comps if comps else ''}</h3>"
            f'<p class="meta">rollout <code>{esc(v.rollout_id)}</code> · prompt <code>{esc(str(row.get("prompt_id")))}</code>'
            f" · {esc(str(row.get('response_length')))} tokens, {esc(str(row.get('finish_reason')))}"
            f" · KL sum {_fmt(row.get('kl_sum'))} · shaped reward sum {_fmt(row.get('shaped_reward_sum'))}</p>"
            f'<p class="prompt">{esc(row.get("prompt") or "")}</p>'
            f'<p class="tokens">{"".join(spans)}</p></article>'
        )
        sections.setdefault(v.rank.split(" ")[0], []).append(card)
    titles = {"best": "Best rollouts (highest score)", "worst": "Worst rollouts (lowest score)"}
    body = "".join(
        f"<h2>{esc(titles.get(key, 'Sample' if key == 'sample' else key.capitalize()))}</h2>" + "".join(cards)
        for key, cards in sections.items()
    )
    title = f"Tokens of run {run_id}, iteration {iteration}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>{_summary_html(summary or {})}"
        f'<div class="legend"><span>{esc(by)}</span><span>{-s:+.3g}</span>'
        f'<span class="bar" style="background:{_gradient(s)}"></span><span>{s:+.3g}</span>'
        "<span>red below 0 · blue above · white 0</span></div>"
        '<p class="help">Hover a token for every number stored with it; click to pin the box '
        "(the address then links to that token). Grey hatched tokens are not actions (tool or "
        "observation text).</p>"
        f"{body}</main>"
        '<div id="tip" hidden></div>'
        f'<script type="application/json" id="gae-data">{_script_json(data)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def _row_json(row: dict) -> dict:
    """The rollouts row without its texts (the page shows the prompt; the tokens are the response)."""
    out = {}
    for k, v in row.items():
        if k in ("prompt", "response", "reference"):
            continue
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        out[k] = _clean(v)
    return out


def _summary_html(summary: dict) -> str:
    if not summary:
        return ""
    items = [
        ("rollouts", summary.get("rollouts"), "d"),
        ("action tokens", summary.get("action_tokens"), "d"),
        ("score mean / min / max", None, None),
        ("response length mean", summary.get("mean_length"), ".1f"),
        ("ended with EOS", summary.get("eos_rate"), ".0%"),
        ("advantage mean ± std", None, None),
        ("KL mean", summary.get("mean_kl"), ".4f"),
        ("value mean / return mean", None, None),
    ]
    rows = []
    for label, v, spec in items:
        if label.startswith("score"):
            text = " / ".join(_fmt(summary.get(k)) for k in ("mean_score", "min_score", "max_score"))
        elif label.startswith("advantage"):
            text = f"{_fmt(summary.get('mean_advantage'))} ± {_fmt(summary.get('std_advantage'))}"
        elif label.startswith("value"):
            text = f"{_fmt(summary.get('mean_value'))} / {_fmt(summary.get('mean_return'))}"
        else:
            text = _fmt(v, spec)
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(text)}</td></tr>")
    return f'<table class="sum">{"".join(rows)}</table>'


def _load(con, root, run_id: str, iteration: int, *, best: int, worst: int, sample: int, seed: int):
    picks = tv.pick(con, run_id, iteration, best=best, worst=worst, sample=sample, seed=seed)
    if not picks:
        raise ValueError(f"run {run_id} iteration {iteration} has no stored rollouts under {root}")
    return tv.load(con, run_id, iteration, picks), tv.iteration_summary(con, run_id, iteration)


def build(
    root,
    run_id: str,
    iteration: int,
    *,
    best: int = DEFAULT_BEST,
    worst: int = DEFAULT_WORST,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> str:
    """The report of (run_id, iteration) from the store under `root` (a data directory or an
    iteration's staging folder)."""
    con = tv.open_store(root)
    try:
        views, summary = _load(con, root, run_id, iteration, best=best, worst=worst, sample=sample, seed=seed)
    finally:
        con.close()
    return render(views, run_id=run_id, iteration=iteration, summary=summary)


@dataclass
class IterationViews:
    """What the pipeline logs for one iteration: the report page, the rollouts it shows, and
    the plots (`gae.plots.NAMES` -> matplotlib Figure)."""

    page: str
    views: list[tv.RolloutView]
    figures: dict


def build_iteration(root, run_id: str, iteration: int) -> IterationViews:
    """The token report and the plots of one iteration from one read of the store under `root`."""
    from gae import plots

    con = tv.open_store(root)
    try:
        views, summary = _load(
            con,
            root,
            run_id,
            iteration,
            best=DEFAULT_BEST,
            worst=DEFAULT_WORST,
            sample=DEFAULT_SAMPLE,
            seed=0,
        )
        data = plots.iteration_data(con, run_id, iteration)
    finally:
        con.close()
    page = render(views, run_id=run_id, iteration=iteration, summary=summary)
    return IterationViews(page=page, views=views, figures=plots.figures(data, iteration=iteration))


def _md_cell(text: str, limit: int = 80) -> str:
    """Text for a markdown table cell: visible control characters, no pipes or backticks, cut."""
    text = tv.visible_text(text, -1)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text.replace("|", "¦").replace("`", "'"), quote=False)


def markdown(
    views: list[tv.RolloutView],
    *,
    run_id: str,
    iteration: int,
    report_file: str,
    mlflow_path: str,
    mlflow_run_id: str,
    mlflow_url: str | None = None,
    by: str = BY,
    images: dict[str, bytes] | None = None,
) -> str:
    """A markdown summary of the report for the Prefect UI: where the page is (`mlflow_url`:
    its page in an MLflow UI, when there is one), a table of the rollouts it shows with their
    most negative and most positive tokens, and `images` (name -> PNG bytes) inlined as data
    URIs (the Prefect UI allows `data:` images)."""
    import base64

    lines = [
        f"## Tokens of iteration {iteration}, run {run_id}",
        "",
        f"Token report (one HTML file, opens offline; hover a token for its numbers): `{report_file}`",
        "",
        f"- in MLflow: artifact `{mlflow_path}` of run `{mlflow_run_id}` (run page → Artifacts)"
        + (f": [open it]({mlflow_url})" if mlflow_url else ""),
        f"- again, or for any stored run: `gae report --run {run_id} -i {iteration}`;"
        f" in a terminal: `gae show --run {run_id} -i {iteration}`",
        "",
        f"| rollout | score | tokens | response | lowest {by} | highest {by} |",
        "|---|---|---|---|---|---|",
    ]
    for v in views:
        acts = [t for t in v.tokens if t.is_action and t.values[by] is not None]
        ranked = sorted(acts, key=lambda t: t.values[by])

        def fmt(ts):
            return ", ".join(f"`{_md_cell(t.token or '', 12)}` {t.values[by]:+.3f}" for t in ts)

        lines.append(
            f"| {html.escape(v.rank)} | {_fmt(v.row.get('score'))} | {len(v.tokens)} "
            f"| {_md_cell(v.row.get('response') or '')} | {fmt(ranked[:3])} | {fmt(ranked[::-1][:3])} |"
        )
    for name, png in (images or {}).items():
        b64 = base64.b64encode(png).decode("ascii")
        lines += ["", f"![{name.replace('_', ' ')}](data:image/png;base64,{b64})"]
    return "\n".join(lines) + "\n"


def write(path: str | Path, text: str) -> Path:
    """Write the page atomically (a reader never sees half a file)."""
    from gae.fsutil import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
