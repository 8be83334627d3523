"""Score placement, missing-EOS policies, KL estimators and the KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from gae.shaping import (
    AdaptiveKLController,
    FixedKLController,
    KLConfig,
    ShapingConfig,
    apply_missing_eos,
    build_kl_controller,
    kl_per_token,
    score_positions,
    sequence_kl,
    shape_rewards,
)
from tests.test_store import make_batch

EOS = 2


def no_kl(**kw) -> ShapingConfig:
    return ShapingConfig(kl=KLConfig(placement="none"), **kw)


def test_score_lands_on_last_action_token_never_padding():
    batch = make_batch()  # lengths 3, 5, 1; padding holds NaN log-probs and 1e6 values
    r, kl = shape_rewards(torch.tensor([1.0, 2.0, 3.0]), batch, no_kl(), kl_coef=0.0)
    expect = torch.zeros(3, 5)
    expect[0, 2], expect[1, 4], expect[2, 0] = 1.0, 2.0, 3.0
    assert torch.equal(r, expect)
    assert torch.isfinite(kl).all() and (kl[~batch.action_mask] == 0).all()


def test_non_contiguous_mask_puts_score_on_last_action_token():
    # action, observation, observation, action, padding: the score goes to position 3.
    batch = make_batch(mask_rows=((1, 0, 0, 1, 0),), rollout_ids=["a"], prompt_ids=["a"])
    r, _ = shape_rewards(torch.tensor([5.0]), batch, no_kl(), kl_coef=0.0)
    assert r.tolist() == [[0.0, 0.0, 0.0, 5.0, 0.0]]


def test_eos_position_uses_the_last_eos_on_the_mask_else_last_action():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    tokens = torch.tensor([[7, EOS, 8, 9, EOS], [7, 8, 9, 0, 0], [EOS, EOS, 0, 0, 0]])
    # row 0: EOS at 1 (the EOS at 4 is padding, off the mask) -> 1; row 1: no EOS -> last action 2;
    # row 2: EOS at 0 and 1 -> the last one, 1.
    assert score_positions(mask, tokens, EOS, "eos").tolist() == [1, 2, 1]
    assert score_positions(mask, tokens, EOS, "last_action").tolist() == [3, 2, 1]
    with pytest.raises(ValueError, match="eos_id"):
        score_positions(mask, tokens, None, "eos")
    with pytest.raises(ValueError, match="row 1 has no action token"):
        score_positions(torch.tensor([[1, 0], [0, 0]], dtype=torch.bool))


def test_eos_placement_through_shape_rewards_reads_eos_id_from_meta():
    batch = make_batch(
        mask_rows=((1, 1, 1, 1),),
        response_tokens=torch.tensor([[5, EOS, 6, 7]]),
        rollout_ids=["a"],
        prompt_ids=["a"],
    )
    r, _ = shape_rewards(torch.tensor([1.0]), batch, no_kl(score_position="eos"), kl_coef=0.0)
    assert r.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    # No eos_id anywhere: EOS is the last action token of a row finished by 'eos' (the batch contract).
    batch.meta = {}
    r, _ = shape_rewards(torch.tensor([1.0]), batch, no_kl(score_position="eos"), kl_coef=0.0)
    assert r.tolist() == [[0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize(
    "policy, expect",
    [
        ("none", [1.0, 2.0, 3.0]),
        ("penalty", [1.0, 2.0 - 0.5, 3.0]),  # only row 1 finished by 'length'
        ("zero_score", [1.0, 0.0, 3.0]),
    ],
)
def test_missing_eos_policies(policy, expect):
    batch = make_batch()  # finish reasons: eos, length, eos
    cfg = no_kl(missing_eos=policy, missing_eos_penalty=0.5)
    r, _ = shape_rewards(torch.tensor([1.0, 2.0, 3.0]), batch, cfg, kl_coef=0.0)
    assert [r[0, 2].item(), r[1, 4].item(), r[2, 0].item()] == expect
    assert r.sum().item() == pytest.approx(sum(expect))
    with pytest.raises(ValueError, match="missing_eos"):
        apply_missing_eos(torch.zeros(1), torch.ones(1), "drop")


def _kl_reference(lp: float, ref: float, estimator: str) -> float:
    r = ref - lp  # log(ref/policy)
    return {"k1": -r, "k2": 0.5 * r * r, "k3": math.exp(r) - r - 1}[estimator]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_their_formulas(estimator):
    g = torch.Generator().manual_seed(0)
    lp = -3 * torch.rand(4, 6, generator=g, dtype=torch.float64)
    ref = -3 * torch.rand(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.3
    lp_garbage = torch.where(mask, lp, float("nan"))  # off-mask garbage must not leak
    kl = kl_per_token(lp_garbage, ref, mask, estimator)
    for b in range(4):
        for t in range(6):
            want = _kl_reference(lp[b, t].item(), ref[b, t].item(), estimator) if mask[b, t] else 0.0
            assert kl[b, t].item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_kl_hand_values_and_clamp():
    # logp = -1, ref = -2: r = -1. k1 = 1, k2 = 0.5, k3 = e^-1 - (-1) - 1 = 0.36788.
    lp, ref, mask = torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), torch.tensor([[True]])
    assert kl_per_token(lp, ref, mask, "k1").item() == pytest.approx(1.0)
    assert kl_per_token(lp, ref, mask, "k2").item() == pytest.approx(0.5)
    assert kl_per_token(lp, ref, mask, "k3").item() == pytest.approx(math.exp(-1))
    # clamp at 0.25: k1 1 -> 0.25; k1 of the reverse pair -1 -> -0.25.
    assert kl_per_token(lp, ref, mask, "k1", clamp=0.25).item() == 0.25
    assert kl_per_token(ref, lp, mask, "k1", clamp=0.25).item() == -0.25
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_per_token(lp, ref, mask, "k4")
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        kl_per_token(lp, ref[:, :0], mask)


@pytest.mark.parametrize("placement", ["reward", "loss", "none"])
def test_kl_placement_is_one_setting(placement):
    batch = make_batch()
    # k2 (k1 is refused with placement loss: as a loss it has zero expected gradient)
    cfg = ShapingConfig(kl=KLConfig(placement=placement, estimator="k2"))
    r, kl = shape_rewards(torch.tensor([1.0, 2.0, 3.0]), batch, cfg, kl_coef=0.1)
    placed, _ = shape_rewards(torch.tensor([1.0, 2.0, 3.0]), batch, no_kl(), kl_coef=0.1)
    m = batch.action_mask
    k2 = torch.where(m, 0.5 * (batch.logprobs - batch.ref_logprobs) ** 2, 0.0)
    assert torch.allclose(kl, k2)  # KL is returned for the store and the loss whatever the placement
    if placement == "reward":
        assert torch.allclose(r, placed - 0.1 * k2)
    else:
        assert torch.equal(r, placed)
    assert (r[~m] == 0).all()
    assert torch.allclose(sequence_kl(kl, m), k2.sum(1))


def test_shape_rewards_checks_scores():
    batch = make_batch()
    with pytest.raises(ValueError, match=r"scores has shape \(2,\), expected \(3,\)"):
        shape_rewards(torch.zeros(2), batch, ShapingConfig(), 0.1)
    with pytest.raises(ValueError, match="non-finite value at row 1"):
        shape_rewards(torch.tensor([0.0, float("nan"), 0.0]), batch, ShapingConfig(), 0.1)


def test_adaptive_controller_steps_by_hand():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # kl 9: error clip(9/6 - 1 = 0.5) = 0.2; factor 1 + 0.2 * 256/10000 = 1.00512.
    assert c.update(9.0, 256) == pytest.approx(0.1 * 1.00512)
    # kl 6.6: error 0.1; factor 1 + 0.1 * 0.0256 = 1.00256.
    assert c.update(6.6, 256) == pytest.approx(0.1 * 1.00512 * 1.00256)
    # kl 6: error 0, unchanged.
    assert c.update(6.0, 256) == pytest.approx(0.1 * 1.00512 * 1.00256)
    # kl 0: error clip(-1) = -0.2; factor 1 - 0.2 * 5000/10000 = 0.9.
    assert c.update(0.0, 5000) == pytest.approx(0.1 * 1.00512 * 1.00256 * 0.9)
    state = c.state_dict()
    d = AdaptiveKLController(1.0, target=1.0, horizon=1)
    d.load_state_dict(state)
    assert d.state_dict() == state and d.update(9.0, 256) == c.update(9.0, 256)


def test_fixed_controller_and_builder():
    f = FixedKLController(0.05)
    assert f.update(100.0, 1000) == 0.05 and f.value == 0.05
    assert isinstance(build_kl_controller(KLConfig(coef=0.2)), FixedKLController)
    a = build_kl_controller(KLConfig(coef=0.2, target=3.0, horizon=100))
    assert isinstance(a, AdaptiveKLController) and (a.value, a.target, a.horizon) == (0.2, 3.0, 100)
    with pytest.raises(ValueError, match="kind 'fixed', expected 'adaptive'"):
        a.load_state_dict(f.state_dict())
    g = FixedKLController(1.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.05


def test_config_refuses_unknown_fields_and_values():
    with pytest.raises(ValueError):
        ShapingConfig(kl={"placement": "both"})
    with pytest.raises(ValueError):
        ShapingConfig(score_position="padding")
    with pytest.raises(ValueError):
        ShapingConfig(kl_coef=0.1)
