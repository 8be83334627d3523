"""The weighted k-step family, the group baselines and the registry."""

from __future__ import annotations

import itertools

import pytest
import torch

from gae.advantages import (
    compute_gae,
    dr_grpo_advantages,
    grpo_advantages,
    rloo_advantages,
)
from gae.estimators import (
    Estimator,
    _advantages_from_tail,
    compute_weighted_advantages,
    estimate,
    get_estimator,
    reinforce_pp_advantages,
    tail_weights,
)
from gae.masked import masked_mean, masked_var
from tests.test_advantages import random_batch


def weighted_reference(r, v, m, lv, gamma, W):
    """A_t = sum_l gamma^l W_l delta_{t+l}, by a double loop over each row's action steps."""
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        steps = m[b].nonzero().flatten().tolist()
        n = len(steps)
        deltas = []
        for k, t in enumerate(steps):
            v_next = v[b, steps[k + 1]].item() if k + 1 < n else lv[b].item()
            deltas.append(r[b, t].item() + gamma * v_next - v[b, t].item())
        for k, t in enumerate(steps):
            adv[b, t] = sum(gamma**j * W[j].item() * deltas[k + j] for j in range(min(len(W), n - k)))
    return adv


@pytest.mark.parametrize("weighting,kw", [("uniform", {}), ("power", {"p": 0.7}), ("power", {"p": 2.0})])
@pytest.mark.parametrize("H", [1, 3, 50])
def test_weighted_matches_double_loop(weighting, kw, H):
    r, v, m, lv = random_batch(5, 23, seed=H, dtype=torch.float64)
    adv, ret = compute_weighted_advantages(
        r, v, m, gamma=0.9, weighting=weighting, horizon=H, last_value=lv, **kw
    )
    ref = weighted_reference(r, v, m, lv, 0.9, tail_weights(weighting, H, **kw))
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret[m], (ref + v)[m])
    assert bool((adv[~m] == 0).all()) and bool((ret[~m] == 0).all())


def test_uniform_horizon_one_is_td0():
    r, v, m, lv = random_batch(4, 30, seed=1, dtype=torch.float64)
    a, _ = compute_weighted_advantages(r, v, m, gamma=0.8, weighting="uniform", horizon=1, last_value=lv)
    td, _ = compute_gae(r, v, m, gamma=0.8, lam=0.0, last_value=lv)
    torch.testing.assert_close(a, td)


def test_power_p_zero_is_uniform():
    r, v, m, lv = random_batch(4, 30, seed=2, dtype=torch.float64)
    a, _ = compute_weighted_advantages(r, v, m, gamma=0.9, weighting="power", horizon=7, p=0.0, last_value=lv)
    u, _ = compute_weighted_advantages(r, v, m, gamma=0.9, weighting="uniform", horizon=7, last_value=lv)
    torch.testing.assert_close(a, u)


@pytest.mark.parametrize("gamma,lam", itertools.product([0.5, 0.99, 1.0], [0.0, 0.5, 0.95, 1.0]))
def test_exponential_tail_weights_through_the_convolution_equal_gae(gamma, lam):
    # With W_l = lam^l untruncated, the convolution path must reproduce GAE exactly.
    r, v, m, lv = random_batch(6, 40, seed=int(lam * 100), dtype=torch.float64)
    W = torch.tensor(lam, dtype=torch.float64).pow(torch.arange(40, dtype=torch.float64))
    a, ret = _advantages_from_tail(r, v, m, lv, gamma, W)
    g, gret = compute_gae(r, v, m, gamma=gamma, lam=lam, last_value=lv)
    torch.testing.assert_close(a, g)
    torch.testing.assert_close(ret, gret)
    e, _ = compute_weighted_advantages(r, v, m, gamma=gamma, weighting="exponential", lam=lam, last_value=lv)
    torch.testing.assert_close(e, g)


def test_tail_weights_are_tail_sums_of_a_convex_combination():
    for weighting, kw in (("uniform", {}), ("power", {"p": 1.3}), ("exponential", {"lam": 0.9})):
        W = tail_weights(weighting, 9, **kw)
        assert W[0].item() == pytest.approx(1.0)  # sum of all w_k
        assert bool((W[:-1] >= W[1:]).all())
    assert tail_weights("uniform", 4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_truncated_exponential_is_continuous_at_lam_1():
    # w_k = (1 - lam) lam^(k-1) / (1 - lam^H) -> 1/H as lam -> 1: the tail sums of the uniform
    # mix, [1, .75, .5, .25] at H = 4, at lam = 1 and just below it (not the 4-step return's [1, 1, 1, 1])
    assert tail_weights("exponential", 4, lam=1.0).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert tail_weights("exponential", 4, lam=0.999999).tolist() == pytest.approx(
        [1.0, 0.75, 0.5, 0.25], abs=1e-5
    )


def test_weighted_validation():
    r, v, m, _ = random_batch(2, 5, seed=0)
    with pytest.raises(ValueError, match="horizon must be an integer >= 1"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="uniform", horizon=0)
    with pytest.raises(ValueError, match="horizon is required"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="power", p=1.0)
    with pytest.raises(ValueError, match="p must be a finite number"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="power", horizon=3)
    with pytest.raises(ValueError, match="weighting must be one of"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="gaussian", horizon=3)
    with pytest.raises(ValueError, match="lam is required"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="exponential")
    r[0, 0], m[0, 0] = 1.0, False
    with pytest.raises(ValueError, match=r"rewards\[0, 0\] = 1.0 at a non-action position"):
        compute_weighted_advantages(r, v, m, gamma=1, weighting="uniform", horizon=2)


# ------------------------------------------------------------------ group baselines


def test_grpo_rloo_by_hand():
    scores = torch.tensor([1.0, 0.0, 2.0, 5.0, 3.0])
    groups = torch.tensor([7, 7, 7, 9, 4])  # group 7 has three samples; 9 and 4 are alone
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    # group 7: mean 1, unbiased std 1
    adv, ret = grpo_advantages(scores, groups, mask, eps=0.0)
    assert adv[:, 0].tolist()[:3] == pytest.approx([0.0, -1.0, 1.0])
    assert adv[3].tolist() == [0.0, 0.0, 0.0] and adv[4].tolist() == [0.0, 0.0, 0.0]
    assert adv[0, 2].item() == 0.0  # not an action token
    assert torch.equal(adv, ret)
    dr, _ = dr_grpo_advantages(scores, groups, mask)
    assert dr[2, 2].item() == pytest.approx(1.0) and dr[1, 0].item() == pytest.approx(-1.0)
    # RLOO: 1 - (0+2)/2 = 0, 0 - (1+2)/2 = -1.5, 2 - (1+0)/2 = 1.5
    rl, _ = rloo_advantages(scores, groups, mask)
    assert rl[:3, 0].tolist() == pytest.approx([0.0, -1.5, 1.5])
    assert bool((rl[3:] == 0).all())


def test_groups_of_one_and_constant_groups_never_nan():
    scores = torch.tensor([3.0, 3.0, 1.0])
    groups = torch.tensor([0, 0, 1])
    mask = torch.ones(3, 4, dtype=torch.bool)
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        adv, _ = fn(scores, groups, mask)
        assert bool(torch.isfinite(adv).all()) and bool((adv == 0).all()), fn.__name__


def test_reinforce_pp_return_to_go_ignores_observation_tokens():
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    adv, ret = reinforce_pp_advantages(r, m, gamma=0.5)
    # row 0: actions t = 0, 2, 3 -> G = [0.25, ., 0.5, 1]; row 1: actions 0, 1, 2 -> G = [1, 2, 0]
    assert ret.tolist() == [[0.25, 0.0, 0.5, 1.0], [1.0, 2.0, 0.0, 0.0]]
    assert masked_mean(adv, m).abs().item() < 1e-9
    assert masked_var(adv, m).item() == pytest.approx(1.0, rel=1e-6)


def test_group_validation():
    with pytest.raises(ValueError, match="group_ids must have an integer dtype"):
        grpo_advantages(torch.zeros(2), torch.zeros(2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"scores\[1\] is nan"):
        rloo_advantages(
            torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]), torch.ones(2, 2, dtype=torch.bool)
        )


# ------------------------------------------------------------------ registry


def test_registry_selects_by_name_and_lists_valid_names():
    r, v, m, lv = random_batch(4, 12, seed=3, dtype=torch.float64)
    a, _ = estimate("gae", rewards=r, values=v, mask=m, gamma=0.9, lam=0.8, last_value=lv)
    torch.testing.assert_close(a, compute_gae(r, v, m, gamma=0.9, lam=0.8, last_value=lv)[0])
    groups = torch.tensor([0, 0, 1, 1])
    g, _ = estimate("grpo", rewards=r, mask=m, group_ids=groups)
    torch.testing.assert_close(g, grpo_advantages((r * m).sum(1), groups, m)[0])
    for e in Estimator:
        assert callable(get_estimator(e.value))
    with pytest.raises(
        ValueError, match="unknown advantage estimator 'ppo'; valid: gae, uniform, power, grpo"
    ):
        get_estimator("ppo")
    with pytest.raises(ValueError, match="needs values"):
        estimate("gae", rewards=r, mask=m)
    with pytest.raises(ValueError, match="needs group_ids"):
        estimate("rloo", rewards=r, mask=m)
    assert Estimator.GAE.needs_critic and not Estimator.GRPO.needs_critic
