"""Rollouts: recorded numbers equal a recomputation, EOS handling, seeding, padding invariance.

Models are tiny and untrained (vocab 300); a GRU whose output bias favours EOS gives
sequences that end at varied lengths, so both finish reasons occur.
"""

from __future__ import annotations

import pytest
import torch

from gae.batch import RolloutBatch
from gae.models import ModelConfig, build_model, score_responses
from gae.rollout import RolloutConfig, filter_probs, generate_rollouts, generate_text, sample_tokens
from gae.tokenizer import load_tokenizer, train_tokenizer
from tests.test_models import hf_tiny_dir, one_torch_thread  # noqa: F401 (autouse fixture)

ATOL = 1e-5
PROMPTS = [
    {"prompt_id": "p0", "prompt": "the quick brown fox", "reference": "jumps"},
    {"prompt_id": "p1", "prompt": "莫笑农家腊酒浑，丰年留客足鸡豚。山重水复疑无路", "reference": None},
    {"prompt_id": "p2", "prompt": "to be", "reference": "or not"},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [p["prompt"] for p in PROMPTS] * 10 + ["hello world and more words"] * 10
    return load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=tmp_path_factory.mktemp("tok")))


def make_model(cfg: ModelConfig, tok, seed: int, eos_bias: float = 0.0):
    torch.manual_seed(seed)
    m = build_model(cfg, tok.vocab_size).eval()
    with torch.no_grad():
        m.value_head.weight.normal_(0, 0.5)  # non-zero values so value checks mean something
    if eos_bias:
        # a policy that favours EOS, for any arch: shift the EOS logit of the LM head (an instance
        # attribute, used by generation and score_responses alike)
        head = m.actor.logits
        shift = torch.zeros(tok.vocab_size)
        shift[tok.eos_id] = eos_bias
        m.actor.logits = lambda hidden: head(hidden) + shift
    return m


def count_compactions(model) -> list[int]:
    """Record the row counts kept each time generation drops finished rows from its cache."""
    kept: list[int] = []
    new_cache = model.new_cache

    def spy(*args):
        cache = new_cache(*args)
        select = cache.select
        cache.select = lambda rows: (kept.append(len(rows)), select(rows))
        return cache

    model.new_cache = spy
    return kept


@pytest.fixture(scope="module", params=["gpt", "gru", "hf"])
def models(request, tok, tmp_path_factory):
    if request.param == "hf":
        model_cfg = ModelConfig(arch="hf", hf_path=hf_tiny_dir(tmp_path_factory))
    else:
        model_cfg = ModelConfig.preset("tiny", arch=request.param)
    return make_model(model_cfg, tok, 0), make_model(model_cfg, tok, 1)


def cfg(**kw) -> RolloutConfig:
    return RolloutConfig(**{"n_samples": 2, "max_new_tokens": 12, "seed": 7, "batch_size": 8, **kw})


def test_batch_fields_and_recorded_logprobs_match_recompute(models, tok):
    policy, ref = models
    batch = generate_rollouts(policy, ref, tok, PROMPTS, cfg(recompute_logprobs=False), device="cpu")
    B = len(PROMPTS) * 2
    assert batch.batch_size == B
    assert batch.rollout_ids[:3] == ["p0/0", "p0/1", "p1/0"]
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.references[:3] == ["jumps", "jumps", None]
    assert torch.all(batch.prompt_tokens[batch.prompt_mask.sum(1) > 0, -1] != tok.pad_id)
    args = (batch.prompt_tokens, batch.prompt_mask, batch.response_tokens, batch.action_mask)
    with torch.no_grad():
        pol, rf = score_responses(policy, *args), score_responses(ref, *args)
    # sampling-time log-probs (KV cache, chunked) == one full forward of the finished sequences
    torch.testing.assert_close(batch.logprobs, pol.logprobs, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch.ref_logprobs, rf.logprobs, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch.values, pol.values, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch.last_values, pol.last_values, atol=ATOL, rtol=0)
    assert not torch.equal(batch.logprobs, batch.ref_logprobs)  # two different models
    assert torch.all(batch.logprobs[batch.action_mask] < 0)
    # default: stored log-probs ARE score_responses', bit for bit
    again = generate_rollouts(policy, ref, tok, PROMPTS, cfg(batch_size=64), device="cpu")
    assert torch.equal(again.response_tokens, batch.response_tokens)
    assert torch.equal(again.logprobs, pol.logprobs)


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_eos_stops_and_masks_later_positions(tok, arch):
    # p(EOS) ~ e^3.5 / (e^3.5 + 300) ~ 0.1 per step: over 6 steps some rows stop, some run to the limit
    policy = make_model(ModelConfig.preset("tiny", arch=arch), tok, 0, eos_bias=3.5)
    batch = generate_rollouts(policy, policy, tok, PROMPTS, cfg(n_samples=8, max_new_tokens=6), device="cpu")
    reasons = set(batch.finish_reasons)
    assert reasons == {"eos", "length"}  # both occur with this bias and seed
    for b in range(batch.batch_size):
        n = int(batch.action_mask[b].sum())
        assert batch.action_mask[b, :n].all() and not batch.action_mask[b, n:].any()  # contiguous
        toks = batch.response_tokens[b]
        if batch.finish_reasons[b] == "eos":
            assert toks[n - 1] == tok.eos_id  # the EOS token is an action (masked True)
            assert not (toks[: n - 1] == tok.eos_id).any()
        else:
            assert n == 6 and not (toks == tok.eos_id).any()
        assert torch.all(toks[n:] == tok.pad_id)
        for name in ("logprobs", "ref_logprobs", "values"):
            assert torch.all(getattr(batch, name)[b, n:] == 0)


def test_dropping_finished_rows_keeps_numbers_exact(models, tok):
    """With EOS likely, generation compacts its batch as rows finish; recorded log-probs must still
    equal a full forward of the finished sequences, and each row's samples must not change when
    other rows (which finish at other times) share its batch."""
    policy = make_model(models[0].cfg, tok, 0, eos_bias=4.0)
    kept = count_compactions(policy)
    c = cfg(n_samples=8, max_new_tokens=16, recompute_logprobs=False, batch_size=24)
    batch = generate_rollouts(policy, policy, tok, PROMPTS, c, device="cpu")
    assert kept and kept[0] <= 12  # compacted at least once, to at most half the rows
    args = (batch.prompt_tokens, batch.prompt_mask, batch.response_tokens, batch.action_mask)
    with torch.no_grad():
        torch.testing.assert_close(batch.logprobs, score_responses(policy, *args).logprobs, atol=ATOL, rtol=0)
    alone = generate_rollouts(policy, policy, tok, [PROMPTS[1]], c, device="cpu")
    n = alone.response_tokens.shape[1]
    assert torch.equal(batch.response_tokens[8:16, :n], alone.response_tokens)
    assert batch.finish_reasons[8:16] == alone.finish_reasons


def test_same_seed_identical_different_seed_differs(models, tok):
    policy, ref = models
    a = generate_rollouts(policy, ref, tok, PROMPTS, cfg(), device="cpu")
    b = generate_rollouts(policy, ref, tok, PROMPTS, cfg(), device="cpu")
    c = generate_rollouts(policy, ref, tok, PROMPTS, cfg(seed=8), device="cpu")
    for name in ("response_tokens", "action_mask", "logprobs", "ref_logprobs", "values", "last_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.responses == b.responses
    assert not torch.equal(a.response_tokens, c.response_tokens)


def test_left_padding_and_batching_do_not_change_samples(models, tok):
    """p2 is short; alone it has no padding, next to p1 it is left-padded by ~20 columns, and
    with batch_size=1 every row is its own chunk. Its samples must be the same tokens."""
    policy, ref = models
    alone = generate_rollouts(policy, ref, tok, [PROMPTS[2]], cfg(), device="cpu")
    padded = generate_rollouts(policy, ref, tok, [PROMPTS[1], PROMPTS[2]], cfg(), device="cpu")
    single = generate_rollouts(policy, ref, tok, [PROMPTS[1], PROMPTS[2]], cfg(batch_size=1), device="cpu")
    assert padded.prompt_mask[2:].sum(1).max() < padded.prompt_tokens.shape[1]  # really padded
    for other in (padded, single):
        rows = slice(2, 4)
        n = alone.response_tokens.shape[1]
        assert torch.equal(other.response_tokens[rows, :n], alone.response_tokens)
        assert not other.action_mask[rows, n:].any()
        torch.testing.assert_close(other.logprobs[rows, :n], alone.logprobs, atol=ATOL, rtol=0)
        assert other.responses[2:] == alone.responses


def test_greedy_equals_top_k_1(models, tok):
    policy, ref = models
    g = generate_rollouts(policy, ref, tok, PROMPTS, cfg(temperature=0.0), device="cpu")
    k = generate_rollouts(policy, ref, tok, PROMPTS, cfg(top_k=1, seed=123), device="cpu")
    assert torch.equal(g.response_tokens, k.response_tokens)
    assert torch.equal(g.response_tokens[0], g.response_tokens[1])  # greedy: samples of a prompt agree


def test_batch_save_load(models, tok, tmp_path):
    policy, ref = models
    batch = generate_rollouts(policy, ref, tok, PROMPTS, cfg(), device="cpu")
    loaded = RolloutBatch.load(batch.save(tmp_path / "b"))
    assert torch.equal(loaded.logprobs, batch.logprobs) and loaded.responses == batch.responses
    assert loaded.meta["sampling"]["seed"] == 7


def test_filter_probs_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # top_p=0.6: mass before token0 = 0 < 0.6 keep; before token1 = 0.5 < 0.6 keep; before token2 = 0.8 drop
    torch.testing.assert_close(
        filter_probs(logits, 1.0, 0, 0.6), torch.tensor([[0.625, 0.375, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        filter_probs(logits, 1.0, 1, 1.0), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    )
    # temperature 0.5 squares the probabilities: 0.25, 0.09, 0.04 over 0.38
    torch.testing.assert_close(
        filter_probs(logits, 0.5, 0, 1.0), torch.tensor([[0.25, 0.09, 0.04]], dtype=torch.float64) / 0.38
    )
    probs = torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64).repeat(3, 1)
    # cdf [0.5, 0.5, 1.0]: u=0 -> 0, u=0.5 -> first cdf > 0.5 = 2 (never the zero-probability token 1)
    assert sample_tokens(probs, torch.tensor([0.0, 0.5, 0.999])).tolist() == [0, 2, 2]


def test_top_p_keeps_at_least_the_most_likely_token():
    # sorted probabilities 0.5 (id 2), 0.3 (id 0), 0.2 (id 1); the mass before the first sorted
    # token is 0, which is ">= top_p" when top_p = 0: without an exception for it every token
    # is dropped and 0/0 = NaN (then inverse-CDF sampling returns the last id).
    logits = torch.log(torch.tensor([[0.3, 0.2, 0.5], [0.5, 0.3, 0.2]]))
    expected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(filter_probs(logits, 1.0, 0, 0.0), expected)
    # top_p = 0.5: the mass before the second sorted token is 0.5 >= 0.5, so only the first stays
    torch.testing.assert_close(filter_probs(logits, 1.0, 0, 0.5), expected)
    # top_p = 1e-9 after top-k 2: still the most likely token only
    torch.testing.assert_close(filter_probs(logits, 0.7, 2, 1e-9), expected)
    assert sample_tokens(filter_probs(logits, 1.0, 0, 0.0), torch.tensor([0.0, 0.999])).tolist() == [2, 0]


def test_generate_cli_refuses_top_p_zero(tmp_path):
    import typer
    from typer.testing import CliRunner

    from gae.commands import models

    app = typer.Typer()
    models.register(app)  # `gae models` and `gae generate` only; the option is checked before any load
    res = CliRunner().invoke(
        app, ["generate", "hello", "--top-p", "0", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 2, res.output
    assert "top-p" in res.output and "> 0" in res.output


def test_generate_text(models, tok):
    policy, _ = models
    texts = generate_text(policy, tok, ["the quick", "莫笑"], max_new_tokens=5, seed=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts == generate_text(policy, tok, ["the quick", "莫笑"], max_new_tokens=5, seed=3)


def test_rejects_bad_prompts_and_lengths(models, tok):
    policy, ref = models
    with pytest.raises(ValueError, match="lacks 'prompt_id'"):
        generate_rollouts(policy, ref, tok, [{"prompt": "x"}], cfg(), device="cpu")
    if policy.block_size is not None:
        with pytest.raises(ValueError, match="leaves no room"):
            generate_rollouts(policy, ref, tok, PROMPTS, cfg(max_new_tokens=policy.block_size), device="cpu")


def test_rollout_task_from_file_and_duckdb(tmp_path, tok):
    """The Prefect task: prompts from a JSON-lines file or from DuckDB; saved batch reloads; a
    rerun with the same inputs reuses the saved batch."""
    import json

    from prefect.logging import disable_run_logger

    from gae.ingest import ingest
    from gae.models import save_model
    from tasks.rollout import rollout_task

    model = make_model(ModelConfig.preset("tiny"), tok, 0)
    save_model(model, tmp_path / "policy")
    tok.save(tmp_path / "policy")
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    src = tmp_path / "corpus.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"Passage {i}. The fox ran over the hill again."}) + "\n" for i in range(20)
        )
    )
    ingest([str(src)], data_dir=tmp_path / "data")
    pol, tk = str(tmp_path / "policy"), str(tmp_path / "policy" / "tokenizer.json")
    rcfg = {"n_samples": 2, "max_new_tokens": 5}
    with disable_run_logger():
        out = rollout_task.fn(
            None, pol, pol, tk, rcfg, out_dir=str(tmp_path / "b1"), prompts_path=str(prompts_file)
        )
        b1 = RolloutBatch.load(out)
        assert b1.prompt_ids == ["p0", "p0", "p1", "p1", "p2", "p2"]
        mtime = (tmp_path / "b1" / "batch.safetensors").stat().st_mtime_ns
        rollout_task.fn(
            None, pol, pol, tk, rcfg, out_dir=str(tmp_path / "b1"), prompts_path=str(prompts_file)
        )
        assert (tmp_path / "b1" / "batch.safetensors").stat().st_mtime_ns == mtime  # reused
        out = rollout_task.fn(
            str(tmp_path / "data"), pol, pol, tk, rcfg, out_dir=str(tmp_path / "b2"), n_prompts=3, seed=5
        )
        b2 = RolloutBatch.load(out)
        assert b2.batch_size == 6 and b2.meta["sampling"]["seed"] == 5
        ids = b2.prompt_ids[::2]
        out = rollout_task.fn(
            str(tmp_path / "data"), pol, pol, tk, rcfg, out_dir=str(tmp_path / "b3"), prompt_ids=ids, seed=5
        )
        assert torch.equal(
            RolloutBatch.load(out).response_tokens, b2.response_tokens
        )  # same prompts, same seed
        with pytest.raises(ValueError, match="not in the prompts table"):
            rollout_task.fn(
                str(tmp_path / "data"), pol, pol, tk, rcfg, out_dir=str(tmp_path / "b4"), prompt_ids=["nope"]
            )


def test_null_batch_size_of_old_configs_loads_as_auto_and_resumes_the_same_run(tmp_path):
    """batch_size is `rows | auto` (no third, null choice in the run form's schema); a config
    saved when null also meant auto still loads, as auto, and names the same run."""
    from gae.config import load_config
    from gae.runstate import config_hash
    from tasks.pipeline import resume_key

    assert RolloutConfig(batch_size=None).batch_size == "auto"
    assert RolloutConfig(batch_size=8).batch_size == 8
    with pytest.raises(ValueError, match="batch_size"):
        RolloutConfig(batch_size=0)
    old = tmp_path / "old.yaml"
    old.write_text("rollout: {batch_size: null}\n")
    cfg = load_config(preset="smoke", path=old)
    assert cfg.rollout.batch_size == "auto"
    auto = load_config(preset="smoke", overrides=["rollout.batch_size=auto"])
    assert config_hash(resume_key(cfg.model_dump(mode="json"))) == config_hash(
        resume_key(auto.model_dump(mode="json"))
    )
    schema = RolloutConfig.model_json_schema()["properties"]["batch_size"]
    assert not any(b.get("type") == "null" for b in schema["anyOf"]), schema
