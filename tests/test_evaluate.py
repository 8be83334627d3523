"""Held-out evaluation scores generations exactly as training scores its rollouts.

A reward that reads lengths or finish reasons (`length_window` on tokens, `sql` over
finish_reason and prompt_id) must give an eval sample the same score that the same response
gets in a training batch: same token count (EOS included), same finish reason, same prompt id.
"""

from __future__ import annotations

import pytest
import torch

from gae.evaluate import evaluate_policy
from gae.models import ModelConfig
from gae.rewards import RewardConfig, RewardInputs, score_batch, score_inputs
from gae.rollout import RolloutConfig, generate_rollouts
from gae.tokenizer import load_tokenizer, train_tokenizer
from tests.test_models import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.test_rollout import make_model

PROMPTS = [
    {"prompt_id": "p0", "prompt": "the quick brown fox", "reference": "jumps over"},
    {"prompt_id": "p1", "prompt": "莫笑农家腊酒浑", "reference": None},
    {"prompt_id": "p2", "prompt": "to be", "reference": "or not to be"},
    {"prompt_id": "p3", "prompt": "hello world", "reference": "and more"},
]
# The default reward's length window (tokens, EOS included): 1 inside [6, 24], then linear to 0
# over 8 tokens; e.g. 24 tokens + EOS = 25 scores 1 - 1/8 = 0.875, the same text without EOS 1.0.
REWARD = RewardConfig(
    components=[
        {"name": "length_window", "options": {"min_length": 6, "max_length": 24, "slack": 8}},
        {"name": "sql", "column": "eos", "options": {"expression": "finish_reason = 'eos'"}},
        {"name": "sql", "column": "is_p2", "options": {"expression": "prompt_id = 'p2'"}},
    ]
)
SAMPLING = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=30, seed=5)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [p["prompt"] for p in PROMPTS] * 10 + ["hello world and more words"] * 10
    return load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def model(tok):
    # EOS-favouring policy: rows end at varied lengths, some at the 30-token limit
    return make_model(ModelConfig.preset("tiny", arch="gru"), tok, 0, eos_bias=3.0)


def test_eval_scores_like_training(model, tok):
    n = 3
    batch = generate_rollouts(
        model, model, tok, PROMPTS, RolloutConfig(n_samples=n, batch_size=16, **SAMPLING), device="cpu"
    )
    train = score_batch(batch, REWARD)
    res = evaluate_policy(
        model, tok, PROMPTS, REWARD, n_samples=n, keep_samples=len(batch.responses), **SAMPLING
    )
    assert res.n == len(batch.responses) and len(res.samples) == len(batch.responses)
    # same seeds (seed, prompt_id, sample) as training: the very same responses, row for row
    assert [s["response"] for s in res.samples] == batch.responses
    assert [s["prompt_id"] for s in res.samples] == batch.prompt_ids
    assert [s["finish_reason"] for s in res.samples] == batch.finish_reasons
    assert [s["response_length"] for s in res.samples] == batch.response_length.tolist()
    assert set(batch.finish_reasons) == {"eos", "length"}  # both reasons occur, so the check bites
    for col in ("length_window", "eos", "is_p2"):
        assert [s[col] for s in res.samples] == train.components[col].tolist(), col
    assert [s["score"] for s in res.samples] == train.total.tolist()
    assert res.reward_mean == pytest.approx(float(train.total.mean()), abs=1e-6)
    # the old way (lengths re-encoded from the decoded text: EOS dropped) scores some of these
    # same responses differently, so the equalities above are not vacuous
    reencoded = RewardInputs.from_batch(batch)
    reencoded.response_lengths = [len(tok.encode(r)) for r in batch.responses]
    old = score_inputs(reencoded, REWARD).components["length_window"]
    assert not torch.equal(old, train.components["length_window"])


def test_eval_needs_prompt_ids(model, tok):
    with pytest.raises(ValueError, match=r"prompts\[0\] lacks 'prompt_id'"):
        evaluate_policy(model, tok, [{"prompt": "x"}], REWARD, **SAMPLING)
