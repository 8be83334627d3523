"""PPO losses against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from gae.losses import (
    aggregate,
    entropy_loss,
    explained_variance,
    kl_loss,
    policy_loss,
    value_loss,
)

NAN = float("nan")


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_modes_by_hand():
    # Row 0 has 3 action tokens (1, 2, 3), row 1 one (4), row 2 none; NaN off the mask.
    x = _t([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN], [NAN, NAN, NAN, NAN]])
    m = _m([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert aggregate(x, m, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: mean(6/3, 4/1) = mean(2, 4) = 3; the empty row is not counted
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum: mean(6, 4) = 5
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(5.0)


def test_aggregate_empty_batch_is_zero_and_unknown_mode_raises():
    x = _t([[1.0, 2.0]])
    m = _m([[0, 0]])
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        assert aggregate(x, m, mode).item() == 0.0
    with pytest.raises(ValueError, match="seq-mean"):
        aggregate(x, m, "mean")
    with pytest.raises(ValueError, match="shape"):
        aggregate(x, _m([[1, 1, 1]]))


# ----------------------------------------------------------------------------- policy


def test_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.1 (4th position off the mask, garbage there)
    lr = torch.log(_t([[1.5, 0.5, 1.1, 7.0]]))
    old = torch.zeros(1, 4, dtype=torch.float64)
    new = lr.clone().requires_grad_(True)
    adv = _t([[1.0, -1.0, 2.0, NAN]])
    m = _m([[1, 1, 1, 0]])
    loss, met = policy_loss(new, old, adv, m, clip_low=0.2, clip_high=0.2)
    # t0: A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped branch)
    # t1: A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped branch)
    # t2: A=+2, r=1.1: max(-2.2, -2.2) = -2.2 (inside the trust region)
    # mean = (-1.2 + 0.8 - 2.2) / 3 = -0.866667
    assert loss.item() == pytest.approx(-2.6 / 3)
    assert met["actor/pg_loss"] == pytest.approx(-2.6 / 3)
    assert met["actor/pg_clipfrac"] == pytest.approx(2 / 3)
    # ppo_kl = mean(-log r) = -log(1.5 * 0.5 * 1.1) / 3 = -log(0.825) / 3 = 0.0641240
    assert met["actor/ppo_kl"] == pytest.approx(-math.log(0.825) / 3)
    # approx_kl (k3) = mean((r - 1) - log r)
    #   = ((0.5 - 0.405465) + (-0.5 + 0.693147) + (0.1 - 0.095310)) / 3 = 0.0974573
    k3 = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert met["actor/approx_kl"] == pytest.approx(k3)
    assert met["actor/pg_clipfrac_lower"] == 0.0
    loss.backward()
    # Clipped tokens pass no gradient; t2: d(-A r)/dlogp = -A r = -2.2, over 3 tokens.
    assert new.grad.tolist()[0] == pytest.approx([0.0, 0.0, -2.2 / 3, 0.0])


def test_policy_loss_dual_clip_by_hand():
    # Both tokens have ratio 5; A = -1 then +1. clip 0.2, dual clip c = 3.
    new = torch.log(_t([[5.0, 5.0]]))
    old = torch.zeros(1, 2, dtype=torch.float64)
    adv = _t([[-1.0, 1.0]])
    m = _m([[1, 1]])
    # Without dual clip: t0 max(5, 1.2) = 5; t1 max(-5, -1.2) = -1.2; mean = 1.9
    loss, met = policy_loss(new, old, adv, m)
    assert loss.item() == pytest.approx(1.9)
    # Dual clip bounds only A < 0: t0 min(5, -A c = 3) = 3; t1 unchanged -1.2; mean = 0.9
    loss, met = policy_loss(new, old, adv, m, dual_clip=3.0)
    assert loss.item() == pytest.approx(0.9)
    assert met["actor/pg_clipfrac_lower"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(new, old, adv, m, dual_clip=1.0)


def test_policy_loss_asymmetric_clip_higher():
    # DAPO clip-higher: clip_high = 0.28 keeps r = 1.25 inside for A > 0.
    new = torch.log(_t([[1.25]]))
    old = torch.zeros(1, 1, dtype=torch.float64)
    adv = _t([[1.0]])
    m = _m([[1]])
    assert policy_loss(new, old, adv, m, clip_high=0.2)[0].item() == pytest.approx(-1.2)
    assert policy_loss(new, old, adv, m, clip_high=0.28)[0].item() == pytest.approx(-1.25)


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    # With r = 1 everywhere the loss is -mean(A) and nothing is clipped.
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    m = torch.rand(3, 5, generator=g) > 0.3
    loss, met = policy_loss(lp, lp.clone(), adv, m)
    assert loss.item() == pytest.approx(-(adv[m].mean().item()))
    assert met["actor/pg_clipfrac"] == 0.0 and met["actor/ppo_kl"] == 0.0


def test_policy_loss_seq_mean_weights_sequences_equally():
    # r = 1, A = 1 on 3 tokens of row 0 and A = -3 on 1 token of row 1.
    lp = torch.zeros(2, 3, dtype=torch.float64)
    adv = _t([[1.0, 1.0, 1.0], [-3.0, 0.0, 0.0]])
    m = _m([[1, 1, 1], [1, 0, 0]])
    # token-mean: -(1 + 1 + 1 - 3) / 4 = 0
    assert policy_loss(lp, lp, adv, m, agg="token-mean")[0].item() == pytest.approx(0.0)
    # seq-mean-token-mean: -mean(3/3, -3/1) = -mean(1, -3) = 1
    assert policy_loss(lp, lp, adv, m, agg="seq-mean-token-mean")[0].item() == pytest.approx(1.0)
    # seq-mean-token-sum: -mean(3, -3) = 0
    assert policy_loss(lp, lp, adv, m, agg="seq-mean-token-sum")[0].item() == pytest.approx(0.0)


# ----------------------------------------------------------------------------- value


def test_value_loss_by_hand():
    v = _t([[1.0, 2.0, NAN]]).requires_grad_(True)
    old = _t([[0.5, 2.0, NAN]])
    ret = _t([[2.0, 1.0, NAN]])
    m = _m([[1, 1, 0]])
    loss, met = value_loss(v, old, ret, m, clip=0.2)
    # t0: (1 - 2)^2 = 1; v_clip = 0.5 + clip(0.5, +-0.2) = 0.7, (0.7 - 2)^2 = 1.69; max = 1.69
    # t1: (2 - 1)^2 = 1; v_clip = 2, same 1; max = 1 (not clipped)
    # 0.5 * (1.69 + 1) / 2 = 0.6725
    assert loss.item() == pytest.approx(0.6725)
    assert met["critic/vf_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    # t0 takes the clipped branch, whose v_clip is constant in v (clamp saturated): grad 0.
    # t1: d/dv 0.5 * (v - R)^2 / 2 = (2 - 1) / 2 = 0.5
    assert v.grad[0, :2].tolist() == pytest.approx([0.0, 0.5])
    assert v.grad[0, 2].item() == 0.0
    # No clip: 0.5 * (1 + 1) / 2 = 0.5
    loss, met = value_loss(v, old, ret, m, clip=None)
    assert loss.item() == pytest.approx(0.5)
    assert met["critic/vf_clipfrac"] == 0.0


# ----------------------------------------------------------------------------- entropy, KL


def test_entropy_loss():
    ent = _t([[1.0, 3.0, NAN]])
    loss, met = entropy_loss(ent, _m([[1, 1, 0]]))
    assert loss.item() == pytest.approx(2.0) and met["actor/entropy"] == pytest.approx(2.0)


def test_kl_loss_by_hand_with_the_runs_estimator_and_clamp():
    from gae.shaping import kl_per_token

    logp = torch.log(_t([[0.5, 0.3, 0.9]]))
    ref = torch.log(_t([[0.25, 0.3, 0.1]]))
    m = _m([[1, 1, 0]])
    # t0: d = log(0.25/0.5) = -0.693147; k3 = exp(d) - d - 1 = 0.5 + 0.693147 - 1 = 0.193147,
    # k2 = d^2 / 2 = 0.240227; t1: d = 0 -> 0; t2: off the mask -> 0
    k3 = 0.5 + math.log(2) - 1
    loss, met = kl_loss(logp, ref, m)  # defaults: k3 clamped to 10, GRPO's
    assert loss.item() == pytest.approx(k3 / 2) and met["actor/kl_loss"] == pytest.approx(loss.item())
    loss, _ = kl_loss(logp, ref, m, estimator="k2", clamp=None)
    assert loss.item() == pytest.approx(math.log(2) ** 2 / 2 / 2)
    loss, _ = kl_loss(logp, ref, m, estimator="k3", clamp=0.1)  # 0.193 clamped to 0.1
    assert loss.item() == pytest.approx(0.1 / 2)
    # the same numbers as the store's kl column
    assert torch.equal(kl_per_token(logp, ref, m, "k3", 10.0)[0, :2].sum() / 2, kl_loss(logp, ref, m)[0])
    # far from the reference the estimate saturates at the clamp, and stays finite without one
    far = kl_loss(_t([[-100.0]]), _t([[0.0]]), _m([[1]]))[0]
    assert far.item() == 10.0
    assert math.isfinite(kl_loss(_t([[-100.0]]), _t([[0.0]]), _m([[1]]), clamp=None)[0].item())


def test_kl_in_the_loss_refuses_k1():
    from gae.shaping import KLConfig

    with pytest.raises(ValueError, match="zero expected gradient"):
        KLConfig(placement="loss", estimator="k1")
    assert KLConfig(placement="loss", estimator="k3").estimator == "k3"
    assert KLConfig(placement="reward", estimator="k1").estimator == "k1"


# ----------------------------------------------------------------------------- explained var


def test_explained_variance_known_inputs():
    ret = _t([[1.0, 2.0, 3.0, 4.0, NAN]])
    m = _m([[1, 1, 1, 1, 0]])
    # perfect critic: 1
    assert explained_variance(_t([[1.0, 2.0, 3.0, 4.0, NAN]]), ret, m) == pytest.approx(1.0)
    # constant-zero critic: Var[R - 0] = Var[R] -> 0
    assert explained_variance(torch.zeros(1, 5, dtype=torch.float64), ret, m) == pytest.approx(0.0)
    # residuals (0.5, -0.5, 0.5, -0.5): unbiased Var = 4 * 0.25 / 3 = 1/3; Var[R] = 5/3
    # 1 - (1/3) / (5/3) = 0.8
    v = _t([[0.5, 2.5, 2.5, 4.5, 0.0]])
    assert explained_variance(v, ret, m) == pytest.approx(0.8)
    # constant returns: undefined
    assert math.isnan(explained_variance(v, torch.ones(1, 5, dtype=torch.float64), m))


def test_losses_ignore_garbage_off_the_mask():
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    m = torch.rand(B, T, generator=g) > 0.4
    lp, old, adv, v, ov, ret = (torch.randn(B, T, generator=g) for _ in range(6))

    def garbage(x):
        return torch.where(m, x, torch.full_like(x, NAN))

    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        a = policy_loss(lp, old, adv, m, agg=agg, dual_clip=3.0)
        b = policy_loss(garbage(lp), garbage(old), garbage(adv), m, agg=agg, dual_clip=3.0)
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
        a = value_loss(v, ov, ret, m, agg=agg)
        b = value_loss(garbage(v), garbage(ov), garbage(ret), m, agg=agg)
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert explained_variance(v, ret, m) == explained_variance(garbage(v), garbage(ret), m)
