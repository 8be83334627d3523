"""GSPO's sequence-level ratio, VAPO's positive-example NLL, DAPO's dropped rows and critic-only
updates: the losses against float64 references written from the papers' equations, and the
trainer's micro-batch and data-subset equivalences."""

from __future__ import annotations

import copy

import pytest
import torch

from gae.losses import policy_loss, positive_nll_loss, sequence_ratio
from gae.train import PPOConfig, build_optimizer, ppo_update
from tests.test_train import advantages_of, synthetic_batch, tiny_model


def ragged(B=6, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.7  # non-contiguous
    mask[0] = False  # empty row
    mask[1] = torch.arange(T) == 3  # one token
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    junk = torch.tensor(float("nan"), dtype=torch.float64)
    return mask, torch.where(mask, logp, junk), torch.where(mask, old, junk), torch.where(mask, adv, junk)


def gspo_reference(logp, old, adv, mask, lo, hi):
    """GSPO's objective as written (arXiv 2507.18071, eqs. 5-7), per sequence, in float64 with a
    sequence advantage A_i = the row's token advantages' mean: the loss is
    -(1/G) sum_i min(s_i A_i, clip(s_i, 1 - lo, 1 + hi) A_i) over non-empty rows."""
    terms = []
    for b in range(mask.shape[0]):
        ts = mask[b].nonzero().flatten().tolist()
        if not ts:
            continue
        s = torch.exp(sum(logp[b, t] - old[b, t] for t in ts) / len(ts))
        a = sum(adv[b, t] for t in ts) / len(ts)
        terms.append(-torch.minimum(s * a, torch.clamp(s, 1 - lo, 1 + hi) * a))
    return torch.stack(terms).mean()


def test_sequence_ratio_is_the_geometric_mean_of_token_ratios():
    mask, logp, old, _ = ragged()
    s = sequence_ratio(logp, old, mask)
    for b in range(mask.shape[0]):
        ts = mask[b].nonzero().flatten()
        if len(ts) == 0:
            assert bool((s[b] == 1).all())
            continue
        geo = torch.prod(torch.exp(logp[b, ts] - old[b, ts])) ** (1 / len(ts))
        torch.testing.assert_close(s[b, ts], geo.expand(len(ts)), rtol=1e-12, atol=1e-12)
        assert bool((s[b, ~mask[b]] == 1).all())


def test_gspo_loss_and_gradient_match_the_papers_objective():
    mask, logp, old, adv = ragged(seed=1)
    # GSPO's advantage is one number per sequence: broadcast each row's mean over its tokens
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    seq_adv = torch.where(mask, torch.where(mask, adv, 0).sum(-1, keepdim=True) / n, adv)
    for lo, hi in ((3e-4, 4e-4), (0.2, 0.28), (10.0, 10.0)):
        x = torch.where(mask, logp, 0.0).requires_grad_(True)
        loss, m = policy_loss(
            x,
            old,
            seq_adv,
            mask,
            clip_low=lo,
            clip_high=hi,
            agg="seq-mean-token-mean",
            ratio_level="sequence",
        )
        loss.backward()
        y = torch.where(mask, logp, 0.0).requires_grad_(True)
        ref = gspo_reference(y, old, seq_adv, mask, lo, hi)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
        assert 0.0 <= m["actor/pg_clipfrac"] <= 1.0
    # the clip is decided per sequence: a row's tokens all get a gradient or none does
    x = torch.where(mask, logp, 0.0).requires_grad_(True)
    policy_loss(x, old, seq_adv, mask, clip_low=3e-4, clip_high=4e-4, ratio_level="sequence")[0].backward()
    live = [bool((x.grad[b, mask[b]] != 0).any()) for b in range(1, mask.shape[0])]
    dead = [bool((x.grad[b, mask[b]] == 0).any()) for b in range(1, mask.shape[0])]
    assert not any(a and d for a, d in zip(live, dead, strict=True))
    assert any(live) and any(dead)


def test_gspo_ratio_on_a_one_token_response_is_the_token_ratio():
    mask, logp, old, adv = ragged(seed=2)
    one = mask.clone()
    one[:] = False
    one[:, 2] = True  # every row a one-token response
    for level in ("token", "sequence"):
        x = torch.where(one, logp.nan_to_num(-1.0), 0.0).requires_grad_(True)
        loss, _ = policy_loss(x, old.nan_to_num(-1.2), adv.nan_to_num(0.5), one, ratio_level=level)
        loss.backward()
        if level == "token":
            tok_loss, tok_grad = loss.detach(), x.grad.clone()
        else:
            assert torch.equal(loss.detach(), tok_loss) and torch.equal(x.grad, tok_grad)
    x = torch.where(one, logp.nan_to_num(-1.0), 0.0)
    r = torch.exp(x - old.nan_to_num(-1.2))
    torch.testing.assert_close(sequence_ratio(x, old.nan_to_num(-1.2), one)[one], r[one], rtol=0, atol=0)


def test_positive_nll_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.25, -4.0]])
    pos = torch.tensor([[True, True, False], [False, True, False]])
    loss, m = positive_nll_loss(logp, pos)
    # -(-1 - 2 - 0.25) / 3
    assert float(loss) == pytest.approx(3.25 / 3)
    assert m["actor/positive_nll"] == pytest.approx(3.25 / 3)
    half, _ = positive_nll_loss(logp, pos, denominator=6)
    assert float(half) == pytest.approx(3.25 / 6)
    zero, _ = positive_nll_loss(logp, torch.zeros_like(pos))
    assert float(zero) == 0.0


def test_sequence_ratio_level_takes_gspos_clip_ranges_unless_set():
    cfg = PPOConfig(ratio_level="sequence")
    assert (cfg.clip_low, cfg.clip_high, cfg.loss_agg) == (3e-4, 4e-4, "seq-mean-token-mean")
    cfg = PPOConfig(ratio_level="sequence", clip_high=1e-3, loss_agg="token-mean")
    assert (cfg.clip_low, cfg.clip_high, cfg.loss_agg) == (3e-4, 1e-3, "token-mean")
    again = PPOConfig.model_validate(cfg.model_dump())
    assert again == cfg
    assert PPOConfig().clip_low == 0.2


def _batch_with_scores(seed):
    base = tiny_model(seed)
    batch = synthetic_batch(base, B=10, seed=seed)
    batch.action_mask[3] = False
    batch.logprobs[3] = 0.0
    batch.values[3] = 0.0
    score, _, adv, ret = advantages_of(batch)
    return base, batch, score, adv, ret


@pytest.mark.parametrize("mode", ["gspo", "nll", "gspo+nll"])
def test_new_loss_modes_take_the_same_step_in_micro_batches(mode):
    """Gradient accumulation stays exact for the sequence ratio and the positive NLL (whose
    denominator is the minibatch's positive tokens, counted in loss_denominators)."""
    base, batch, score, adv, ret = _batch_with_scores(13)
    kw = {"ratio_level": "sequence", "clip_low": 0.1, "clip_high": 0.1} if "gspo" in mode else {}
    if "nll" in mode:
        kw.update(positive_nll_coef=0.5, positive_score_threshold=float(score.max() + score.min()) / 2)
    results = []
    for micro in (None, 3, 1):
        model = copy.deepcopy(base)
        cfg = PPOConfig(epochs=2, minibatches=2, micro_batch_rows=micro, **kw)
        m, _ = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg, scores=score)
        results.append((model, m))
    (m0, met0), *rest = results
    if "nll" in mode:
        assert met0["actor/positive_nll"] > 0 and 0 < met0["actor/positive_frac"] < 1
    for model, met in rest:
        for p0, p in zip(m0.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p, p0, atol=2e-6, rtol=1e-5)
        for key in ("actor/pg_loss", "actor/total_loss", "actor/grad_norm", "actor/positive_nll"):
            if key in met0:
                assert met[key] == pytest.approx(met0[key], rel=1e-4, abs=1e-6), key


def test_positive_nll_pulls_up_the_positive_responses_only():
    """With the PPO terms switched off (zero advantages, no value loss), the NLL step raises the
    log-likelihood of the positive rows' tokens."""
    base, batch, score, _, ret = _batch_with_scores(17)
    zero = torch.zeros(batch.action_mask.shape)
    cfg = PPOConfig(
        epochs=3, minibatches=1, positive_nll_coef=1.0, positive_score_threshold=0.3, actor_lr=1e-2
    )
    model = copy.deepcopy(base)
    ppo_update(model, build_optimizer(model, cfg), batch, zero, ret, cfg, scores=score, train_critic=False)
    from gae.models import score_responses

    after = score_responses(
        model, batch.prompt_tokens, batch.prompt_mask, batch.response_tokens, batch.action_mask
    )
    pos = (score >= 0.3)[:, None] & batch.action_mask
    gain = (after.logprobs - batch.logprobs)[pos].mean()
    assert pos.any() and float(gain.detach()) > 0
    with pytest.raises(ValueError, match="scores"):
        ppo_update(model, build_optimizer(model, cfg), batch, zero, ret, cfg)


def test_dropped_rows_train_like_the_batch_without_them():
    """loss_rows (DAPO dynamic sampling) = training on the kept rows alone: same whitening,
    denominators and step, with one minibatch (so the row permutation cannot differ)."""
    base, batch, score, adv, ret = _batch_with_scores(19)
    keep = torch.tensor([True, False, True, True, False, True, True, False, True, True])
    cfg = PPOConfig(epochs=2, minibatches=1, actor_lr=1e-2, loss_agg="seq-mean-token-mean")
    dropped = copy.deepcopy(base)
    m, lp = ppo_update(dropped, build_optimizer(dropped, cfg), batch, adv, ret, cfg, loss_rows=keep)
    assert m["actor/loss_rows_frac"] == pytest.approx(6 / 9)  # row 3 is empty, not counted
    assert bool((lp[batch.action_mask] < 0).all())  # train_logprobs still cover every row
    from tests.test_train_dp import _shard

    rows = keep.nonzero().flatten().tolist()
    subset = copy.deepcopy(base)
    ppo_update(subset, build_optimizer(subset, cfg), _shard(batch, rows), adv[rows], ret[rows], cfg)
    for p, q in zip(dropped.parameters(), subset.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)
    # every row dropped: no step at all
    none = copy.deepcopy(base)
    m, _ = ppo_update(
        none, build_optimizer(none, cfg), batch, adv, ret, cfg, loss_rows=torch.zeros(10, dtype=torch.bool)
    )
    assert m["actor/update_steps"] == 0
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), none.parameters(), strict=True))


def test_critic_only_update_leaves_the_policy_and_fits_the_value():
    base, batch, _, adv, ret = _batch_with_scores(23)
    cfg = PPOConfig(epochs=4, minibatches=2, critic_lr=1e-2)
    model = copy.deepcopy(base)
    m, _ = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg, train_policy=False)
    assert m["actor/critic_warmup"] == 1.0
    assert all(
        torch.equal(a, p) for a, p in zip(base.actor_parameters(), model.actor_parameters(), strict=True)
    )
    assert not torch.equal(base.value_head.weight, model.value_head.weight)
    with pytest.raises(ValueError, match="train nothing"):
        ppo_update(
            model, build_optimizer(model, cfg), batch, adv, ret, cfg, train_policy=False, train_critic=False
        )
