"""`gae show` and the colour scale: colours of known values worked out by hand, and the
command on the Parquet store written by a real smoke run (read back here with pyarrow,
not through the code under test)."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from gae import tokenview as tv
from gae.cli import _register_all, app

_register_all()


# ------------------------------------------------------------------------------ colours


def test_diverging_colours_of_known_values():
    s = 2.0
    assert tv.diverging_rgb(0.0, s) == (247, 247, 247)  # centre: RdBu's white
    assert tv.diverging_rgb(s, s) == (33, 102, 172)  # +scale: the blue end
    assert tv.diverging_rgb(-s, s) == (178, 24, 43)  # -scale: the red end
    # t = +0.2: 247 + 0.2 (33 - 247) = 204.2, 247 + 0.2 (102 - 247) = 218, 247 + 0.2 (172 - 247) = 232
    assert tv.diverging_rgb(0.4, s) == (204, 218, 232)
    # t = -0.2: 247 + 0.2 (178 - 247) = 233.2, 247 + 0.2 (24 - 247) = 202.4, 247 + 0.2 (43 - 247) = 206.2
    assert tv.diverging_rgb(-0.4, s) == (233, 202, 206)
    assert tv.diverging_rgb(7.0, s) == tv.diverging_rgb(s, s)  # clipped at the ends
    assert tv.diverging_rgb(-7.0, s) == tv.diverging_rgb(-s, s)
    assert tv.diverging_rgb(None, s) == tv.MISSING
    assert tv.diverging_rgb(float("nan"), s) == tv.MISSING
    assert tv.diverging_rgb(0.0, 0.0) == tv.MIDDLE  # every value shown is 0
    assert tv.to_hex((33, 102, 172)) == "#2166ac"
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale"):
            tv.diverging_rgb(0.1, bad)


def test_colour_moves_monotonically_away_from_white():
    xs = np.linspace(0, 1, 21)
    blues = [tv.diverging_rgb(float(x), 1.0) for x in xs]
    reds = [tv.diverging_rgb(float(-x), 1.0) for x in xs]
    # red channel falls towards blue, green channel falls towards red
    assert all(a[0] >= b[0] for a, b in zip(blues, blues[1:], strict=False))
    assert all(a[1] >= b[1] for a, b in zip(reds, reds[1:], strict=False))


def test_text_colour_and_visible_text():
    assert tv.text_rgb(tv.POSITIVE) == (255, 255, 255)
    assert tv.text_rgb(tv.MIDDLE) == (0, 0, 0)
    assert tv.visible_text("a\nb\tc\x01", 5) == "a↵b⇥c␁"
    assert tv.visible_text("", 5) == "∅"
    assert tv.visible_text(None, 42) == "⟨42⟩"
    assert tv.line_breaks("\n\n\n") == 2 and tv.line_breaks(" x") == 0
    assert tv.symmetric_scale([0.5, -2.0, None, float("nan")]) == 2.0
    assert tv.column_name("return") == "returns"
    assert tv.column_name("logprob-ref_logprob") == "log_ratio"
    with pytest.raises(ValueError, match="--by 'nope'"):
        tv.column_name("nope")


# ------------------------------------------------------------------------------ on a real run


def stored(data_dir, table: str) -> list[dict]:
    """Every row of a table, read with pyarrow from the hive-partitioned files."""
    dataset = ds.dataset(str(data_dir / table), format="parquet", partitioning="hive")
    return dataset.to_table().to_pylist()


def f32(x) -> np.float32 | None:
    return None if x is None else np.float32(x)


def gae_cli(*args, env=None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


@pytest.mark.slow
def test_show_json_is_the_stored_rows_with_their_colours(smoke_run):
    d = smoke_run["data_dir"]
    res = gae_cli("show", "--data-dir", str(d), "--iteration", "1", "--best", "2", "--worst", "2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    run_id = smoke_run["result"]["run_id"]
    assert out["run_id"] == run_id and out["iteration"] == 1 and out["by"] == "advantage"

    rollouts = [r for r in stored(d, "rollouts") if r["run_id"] == run_id and r["iteration"] == 1]
    by_score = sorted(rollouts, key=lambda r: (-r["score"], r["rollout_id"]))
    assert [r["rank"] for r in out["rollouts"]] == ["best 1", "best 2", "worst 1", "worst 2"]
    assert [r["rollout_id"] for r in out["rollouts"][:2]] == [r["rollout_id"] for r in by_score[:2]]
    worst = sorted(rollouts, key=lambda r: (r["score"], r["rollout_id"]))[:2]
    assert [r["rollout_id"] for r in out["rollouts"][2:]] == [r["rollout_id"] for r in worst]

    tokens = [t for t in stored(d, "tokens") if t["run_id"] == run_id and t["iteration"] == 1]
    shown_ids = {r["rollout_id"] for r in out["rollouts"]}
    scale = max(abs(t["advantage"]) for t in tokens if t["rollout_id"] in shown_ids and t["is_action"])
    assert out["scale"] == scale
    for r in out["rollouts"]:
        want = sorted((t for t in tokens if t["rollout_id"] == r["rollout_id"]), key=lambda t: t["position"])
        assert [t["position"] for t in r["tokens"]] == [t["position"] for t in want]
        assert [t["token"] for t in r["tokens"]] == [t["token"] for t in want]
        for got, row in zip(r["tokens"], want, strict=True):
            for col in ("advantage", "reward", "value", "returns", "kl", "logprob", "ref_logprob"):
                assert f32(got[col]) == f32(row[col]), (col, got, row)
            assert f32(got["log_ratio"]) == np.float32(row["logprob"]) - np.float32(row["ref_logprob"])
            # the colour of the stored advantage on the view's scale, worked out from the module's formula
            t = max(-1.0, min(1.0, row["advantage"] / scale))
            end = tv.POSITIVE if t > 0 else tv.NEGATIVE
            rgb = tuple(round(m + abs(t) * (e - m)) for m, e in zip(tv.MIDDLE, end, strict=True))
            assert got["color"] == "#{:02x}{:02x}{:02x}".format(*rgb)


@pytest.mark.slow
def test_show_colours_the_terminal_by_the_chosen_column(smoke_run):
    d = smoke_run["data_dir"]
    res = gae_cli("show", "--data-dir", str(d), "--best", "1", "--worst", "0", "--by", "return", "--json")
    view = json.loads(res.output)
    assert view["by"] == "returns"
    first = view["rollouts"][0]["tokens"][0]
    assert first["color"] == tv.to_hex(tv.diverging_rgb(first["returns"], view["scale"]))

    env = {"FORCE_COLOR": "1", "COLORTERM": "truecolor", "TERM": "xterm-256color"}
    res = gae_cli("show", "--data-dir", str(d), "--best", "1", "--worst", "0", "--by", "return", env=env)
    assert res.exit_code == 0, res.output
    r, g, b = (int(first["color"][i : i + 2], 16) for i in (1, 3, 5))
    # the first token printed on its background colour (24-bit SGR 48;2;R;G;B)
    text = tv.visible_text(first["token"], first["token_id"])
    assert re.search(rf"48;2;{r};{g};{b}m{re.escape(text)}", res.output), res.output[:2000]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.output)
    assert "return" in plain and "ref logp" in plain  # the numbers table's header


@pytest.mark.slow
def test_show_one_rollout_by_id_and_errors_are_one_line(smoke_run):
    d = smoke_run["data_dir"]
    run_id = smoke_run["result"]["run_id"]
    rid = next(r["rollout_id"] for r in stored(d, "rollouts") if r["iteration"] == 0)
    res = gae_cli("show", "--data-dir", str(d), "--run", "smoke", "-i", "0", "--rollout", rid, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run_id"] == run_id  # the run name resolved to its run id
    assert [r["rollout_id"] for r in out["rollouts"]] == [rid]
    assert out["rollouts"][0]["rank"] == "selected"

    import subprocess
    import sys

    for args, msg in (
        (["--by", "nope"], "--by 'nope'"),
        (["--run", "no-such-run"], "no-such-run"),
        (["-i", "0", "--rollout", "nope/0"], "no rollout 'nope/0'"),
        (["-i", "99"], "no stored iteration 99"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "gae.cli", "show", "--data-dir", str(d), *args],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert msg in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_show_on_an_empty_store_says_what_to_do(tmp_path):
    res = gae_cli("show", "--data-dir", str(tmp_path))
    assert isinstance(res.exception, ValueError) and "gae run" in str(res.exception)


def test_numbers_table_shows_tokens_that_look_like_markup_as_they_are():
    import io

    from rich.console import Console

    tokens = [
        tv.TokenRow(position=i, token_id=i, token=t, is_action=True, values={k: 0.5 for k in tv.NUMBERS})
        for i, t in enumerate(["[/x]", "[red]hi[/red]", "[b]"])
    ]
    view = tv.RolloutView(rank="selected", row={"rollout_id": "r"}, tokens=tokens)
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(tv.numbers_table(view, "advantage", 1.0))
    text = console.file.getvalue()
    for shown in ("[/x]", "[red]hi[/red]", "[b]"):
        assert shown in text, text
