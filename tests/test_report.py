"""The HTML token report, checked by parsing it: every token of every rollout it shows is
there, with the numbers the Parquet store holds (read back here with pyarrow) and its
colour; nothing in it reaches the network; text from a model cannot become markup."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from typer.testing import CliRunner

from gae import report as rp
from gae import tokenview as tv
from gae.cli import _register_all, app
from tests.test_tokenview import stored

_register_all()


class Page(HTMLParser):
    """Token spans (data-k, style, text), the embedded JSON, and every URL-bearing attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.spans: dict[str, dict] = {}
        self.data = None
        self.scripts = 0
        self.urls: list[str] = []
        self._span = None
        self._script_id = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "srcset") and v]
        if tag == "span" and "t" in (a.get("class") or "").split():
            self._span = {"k": a["data-k"], "class": a["class"], "style": a.get("style"), "text": ""}
        elif tag == "script":
            self.scripts += 1
            self._script_id = a.get("id")
            self._text = []

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self.spans[self._span["k"]] = self._span
            self._span = None
        elif tag == "script":
            if self._script_id == "gae-data":
                self.data = json.loads("".join(self._text))
            self._script_id = None

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data
        if self._script_id is not None:
            self._text.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


@pytest.mark.slow
def test_report_holds_every_token_with_its_stored_numbers(smoke_run, tmp_path):
    d = smoke_run["data_dir"]
    run_id = smoke_run["result"]["run_id"]
    out = tmp_path / "r.html"
    res = CliRunner().invoke(
        app, ["report", "--data-dir", str(d), "--run", run_id, "-i", "0", "--out", str(out), "--sample", "3"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    page = parse(text)

    # self-contained: no URL at all (no script/style/font/image fetched), one inline script besides the data
    assert page.urls == [] and page.scripts == 2
    assert "http://" not in text and "https://" not in text and "@import" not in text

    data = page.data
    assert data["run_id"] == run_id and data["iteration"] == 0 and data["by"] == "advantage"
    rollouts = [r for r in stored(d, "rollouts") if r["run_id"] == run_id and r["iteration"] == 0]
    ranks = [r["rank"] for r in data["rollouts"]]
    assert ranks[:6] == ["best 1", "best 2", "best 3", "worst 1", "worst 2", "worst 3"]
    assert ranks[6:] == ["sample"] * min(3, len(rollouts) - 6)
    best = sorted(rollouts, key=lambda r: (-r["score"], r["rollout_id"]))[0]
    assert data["rollouts"][0]["rollout_id"] == best["rollout_id"]

    tokens = [t for t in stored(d, "tokens") if t["run_id"] == run_id and t["iteration"] == 0]
    n_spans = 0
    for r, ro in enumerate(data["rollouts"]):
        want = sorted((t for t in tokens if t["rollout_id"] == ro["rollout_id"]), key=lambda t: t["position"])
        cols = ro["tokens"]
        assert cols["position"] == [t["position"] for t in want]  # every token, in order
        assert cols["token"] == [t["token"] for t in want]
        assert cols["token_id"] == [t["token_id"] for t in want]
        for col in (
            "advantage",
            "reward",
            "value",
            "returns",
            "kl",
            "logprob",
            "ref_logprob",
            "train_logprob",
        ):
            got = [None if v is None else np.float32(v) for v in cols[col]]
            assert got == [None if t[col] is None else np.float32(t[col]) for t in want], col
        for i, t in enumerate(want):
            span = page.spans[f"{r}:{i}"]
            n_spans += 1
            assert span["text"] == tv.visible_text(t["token"], t["token_id"])
            bg = tv.to_hex(tv.diverging_rgb(t["advantage"], data["scale"]))
            assert span["style"].startswith(f"background:{bg};")
    assert n_spans == len(page.spans)  # no span without a stored token
    shown = {ro["rollout_id"] for ro in data["rollouts"]}
    scale = max(abs(t["advantage"]) for t in tokens if t["rollout_id"] in shown and t["is_action"])
    assert data["scale"] == scale


def test_text_from_the_model_cannot_become_markup():
    evil = "</script><script>alert(1)</script><b>"
    view = tv.RolloutView(
        rank="best 1",
        row={"rollout_id": "r<1>", "prompt_id": "p", "prompt": "<img src=x onerror=alert(1)>", "score": 0.5},
        tokens=[
            tv.TokenRow(0, 7, evil, True, {k: 0.25 for k in tv.NUMBERS}),
            tv.TokenRow(1, 8, "&amp;\n", True, {k: -0.5 for k in tv.NUMBERS}),
        ],
    )
    text = rp.render([view], run_id="r", iteration=0)
    page = parse(text)
    assert page.scripts == 2 and page.urls == []
    assert "alert(1)</script>" not in text and "<img" not in text and "<b>" not in text
    assert page.data["rollouts"][0]["tokens"]["token"] == [evil, "&amp;\n"]
    assert page.spans["0:0"]["text"] == evil and page.spans["0:1"]["text"] == "&amp;↵"
    assert page.data["scale"] == 0.5
    assert page.spans["0:1"]["style"].startswith(f"background:{tv.to_hex(tv.NEGATIVE)};")


def test_markdown_summary_lists_rollouts_and_links_the_page():
    views = [
        tv.RolloutView(
            rank="worst 1",
            row={"rollout_id": "r/0", "score": 0.1, "response": "a|b`c\nd"},
            tokens=[
                tv.TokenRow(i, i, t, True, {**{k: 0.0 for k in tv.NUMBERS}, "advantage": a})
                for i, (t, a) in enumerate([("a|", -0.5), ("b", 0.25), ("c", 0.75), ("d", -0.125)])
            ],
        )
    ]
    md = rp.markdown(
        views,
        run_id="run-1",
        iteration=2,
        report_file="/data/reports/run-1/iter-00002.html",
        mlflow_path="reports/iter-00002.html",
        mlflow_run_id="abc",
        mlflow_url="http://mlflow:5000/#/experiments/1/runs/abc/artifacts/reports/iter-00002.html",
        images={"advantage_by_position": b"\x89PNG"},
    )
    assert "`/data/reports/run-1/iter-00002.html`" in md
    assert "[open it](http://mlflow:5000/#/experiments/1/runs/abc/artifacts/reports/iter-00002.html)" in md
    row = next(line for line in md.splitlines() if line.startswith("| worst 1"))
    assert row.count("|") == 7  # the response's pipe and backtick cannot break the table
    assert "a¦b'c↵d" in row
    lowest, highest = row.split("|")[5], row.split("|")[6]
    assert lowest.index("-0.500") < lowest.index("-0.125") and "+0.750" in highest.split(",")[0]
    assert "data:image/png;base64,iVBORw==" in md
