"""Value pretraining (VC-PPO): the critic fits lambda = 1 returns of a frozen policy, the policy
does not move, explained variance is measured before and after; and the pipeline runs it
before PPO iteration 0 with the `vapo` preset's options on real components."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from gae.advantages import compute_gae
from gae.train import PPOConfig, build_optimizer
from gae.value_pretrain import critic_values, fit_critic
from tests.test_train import synthetic_batch, target_rewards, tiny_model


def test_fit_critic_raises_explained_variance_and_leaves_the_policy():
    base = tiny_model(31)
    batch = synthetic_batch(base, B=12, seed=32)
    _, rewards = target_rewards(batch)
    model = copy.deepcopy(base)
    cfg = PPOConfig(epochs=4, minibatches=2, critic_lr=1e-2)
    opt = build_optimizer(model, cfg)
    history = []
    for k in range(4):  # the same rollouts each time: the fit must improve on them
        history.append(fit_critic(model, opt, copy.deepcopy(batch), rewards, cfg, gamma=1.0, iteration=k)[0])
    first, last = history[0], history[-1]
    assert last["value_pretrain/explained_var_after"] > first["value_pretrain/explained_var_before"] + 0.2
    # each iteration's "before" is the previous one's "after" on the same data
    for a, b in zip(history, history[1:], strict=False):
        assert b["value_pretrain/explained_var_before"] == pytest.approx(
            a["value_pretrain/explained_var_after"]
        )
    assert all(
        torch.equal(p, q) for p, q in zip(base.actor_parameters(), model.actor_parameters(), strict=True)
    )


def monte_carlo_returns(rewards, mask, gamma: float, last=None) -> torch.Tensor:
    """Slow reference: R_t = sum_{j >= t} gamma^(j-t) r_j (+ gamma^(L-t) last) over each row's
    action tokens (a prefix here), by a backward loop in float64."""
    out = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        g = float(last[b]) if last is not None else 0.0
        for t in reversed(range(int(mask[b].sum()))):
            g = float(rewards[b, t]) + gamma * g
            out[b, t] = g
    return out


def test_fit_critic_targets_are_monte_carlo_returns():
    """lambda = 1 (VC-PPO's point): the returns fit_critic trains the critic on are the
    discounted sums of rewards (+ the critic's bootstrap on truncated rows), not GAE(0.95)
    returns, which would lean on the critic being fitted."""
    base = tiny_model(33)
    batch = synthetic_batch(base, B=6, seed=34)
    mask = batch.action_mask.bool()
    assert torch.equal(mask, torch.arange(mask.shape[1])[None] < mask.sum(1, keepdim=True))  # prefixes
    rewards = torch.randn(mask.shape, generator=torch.Generator().manual_seed(35)) * mask
    values, last = critic_values(base, batch)
    # critic_values is the model's own view of the batch: the rollout recorded the same
    torch.testing.assert_close(values, batch.values.float(), atol=0, rtol=0)
    torch.testing.assert_close(last, batch.last_values.float(), atol=0, rtol=0)
    cfg = PPOConfig(epochs=1, minibatches=1, critic_lr=1e-2)
    truncated = torch.tensor([True, False, True, False, False, True])
    for trunc in (None, truncated):
        model = copy.deepcopy(base)
        metrics, ret = fit_critic(
            model, build_optimizer(model, cfg), copy.deepcopy(batch), rewards, cfg, gamma=0.9, truncated=trunc
        )
        boot = None if trunc is None else torch.where(trunc, last, torch.zeros_like(last))
        want = monte_carlo_returns(rewards, mask, 0.9, boot)
        torch.testing.assert_close(ret.double()[mask], want[mask], atol=1e-5, rtol=1e-5)
        assert metrics["value_pretrain/returns_mean"] == pytest.approx(float(want[mask].mean()), abs=1e-5)
        # the reference tells lam = 1 from the run's usual 0.95 on this batch
        _, ret95 = compute_gae(rewards, values, mask, gamma=0.9, lam=0.95, last_value=boot)
        assert not torch.allclose(ret95.double()[mask], want[mask], atol=1e-3)


class Interrupted(Exception):
    """Stands in for the process being killed at that point."""


def test_an_interrupted_value_pretraining_resumes_and_logs_each_iteration_once(tmp_path, empty_store):
    """Killed while sampling iteration 2, and (another time) between iteration 1's checkpoint
    and its MLflow point: each rerun continues from the last completed iteration with a fresh
    model and optimizer (a new process), ends with the critic an uninterrupted run fits, and
    the run's MLflow history holds each iteration's point once."""
    from gae.paths import DataDir
    from gae.tracking import Tracker
    from gae.value_pretrain import pretrain_critic

    cfg = PPOConfig(epochs=2, minibatches=2, critic_lr=1e-2)
    policy = tiny_model(41)
    batches = [synthetic_batch(policy, B=8, seed=50 + k) for k in range(4)]

    def sample(k):
        b = copy.deepcopy(batches[k])
        return b, target_rewards(b)[1], None

    def run(state_dir, *, sample=sample, log=None):
        model = copy.deepcopy(policy)  # a new process: the initial policy, a fresh optimizer
        out = pretrain_critic(
            model, build_optimizer(model, cfg), cfg, iterations=4, sample=sample, gamma=1.0,
            state_dir=state_dir, log=log,
        )  # fmt: skip
        return model, out

    straight, want = run(tmp_path / "straight")

    dd = DataDir.resolve(tmp_path / "data").ensure()
    shutil.copyfile(empty_store, dd.mlflow_db)
    tracker = Tracker.start(dd, run_id="vp")
    calls = []

    def log(k, metrics, only_new):
        calls.append((k, only_new))
        if (k, only_new) == (1, False) and calls.count((1, False)) == 1:
            raise Interrupted  # checkpoint of iteration 1 written, its point not logged
        tracker.log_metrics(metrics, step=k, only_new=only_new)

    def sample_until_2(k):
        if k == 2:
            raise Interrupted
        return sample(k)

    state = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        run(state, log=log)  # iteration 0 logged, 1 checkpointed, then killed
    with pytest.raises(Interrupted):
        run(state, sample=sample_until_2, log=log)  # 1 logged on resume, killed sampling 2
    resumed, got = run(state, log=log)
    assert calls == [(0, False), (1, False), (1, True), (1, True), (2, False), (3, False)]
    assert got == want
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    for key in ("value_pretrain/explained_var_before", "value_pretrain/explained_var_after"):
        steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
        assert sorted(steps) == [0, 1, 2, 3], (key, steps)
    # a finished pretraining returns its result without fitting again
    again, out = run(state, log=log)
    assert out == want and calls[-1] == (3, True)
    for p, q in zip(straight.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_value_pretraining_with_a_critic_free_estimator_is_refused():
    from gae.config import load_config

    for est in ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus"):
        with pytest.raises(
            ValueError, match=rf"value_pretrain_iterations=2 fits the critic.*estimator={est}"
        ):
            load_config(
                preset="smoke",
                overrides={"advantages": {"estimator": est}, "ppo": {"value_pretrain_iterations": 2}},
            )
    load_config(preset="smoke", overrides={"advantages": {"estimator": "grpo"}})
    load_config(preset="smoke", overrides={"ppo": {"value_pretrain_iterations": 2}})


@pytest.mark.slow
def test_pipeline_pretrains_the_critic_before_iteration_0(prefect_api, smoke_run, smoke_copy):
    """The smoke pipeline with the vapo preset's advantage and loss options: value pretraining
    logged to MLflow (explained variance before and after), its policy is iteration 0's start
    (same policy weights as the pretrained base, a different value head), and every option
    shows in the metrics. In a copy of the session's smoke run (corpus ingested, model
    pretrained), with fewer prompts: the run samples, pretrains the critic and trains only."""
    from flows.pipeline import rl_pipeline
    from gae.config import PRESETS, load_config
    from gae.models import load_model
    from gae.paths import DataDir
    from gae.tracking import get_client

    data_dir = smoke_copy
    vapo = PRESETS["vapo"]
    overrides = {
        "advantages": vapo["advantages"],
        "ppo": {**vapo["ppo"], "value_pretrain_iterations": 2, "positive_score_threshold": 0.5},
        "shaping": vapo["shaping"],
        "iterations": 1,
        "prompts_per_iteration": 4,
        "eval": {"n_prompts": 2},
        "registry": {"enabled": False, "experiment": "vapo"},
    }
    corpus = list(smoke_run["cfg"].corpus)
    cfg = load_config(
        preset="smoke",
        overrides={**overrides, "data_dir": str(data_dir), "corpus": corpus, "run_name": "vapo"},
    )
    result = rl_pipeline(cfg)
    assert result["base"]["cached"]  # the smoke run's pretrained model
    client = get_client(data_dir)
    run = client.get_run(result["mlflow_run_id"])
    hist = {
        key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("value_pretrain/explained_var_before", "value_pretrain/explained_var_after")
    }
    assert all(len(v) == 2 for v in hist.values()), hist
    metrics = run.data.metrics
    for key in ("advantages/lam_actor_mean", "actor/positive_frac", "critic/vf_explained_var"):
        assert key in metrics, key
    vp = DataDir.resolve(data_dir).run_dir(result["run_id"]) / "value-pretrain" / "policy"
    pretrained, start = load_model(vp), load_model(result["base"]["model_dir"])
    assert all(
        torch.equal(p, q)
        for p, q in zip(pretrained.actor_parameters(), start.actor_parameters(), strict=True)
    )
    assert not torch.equal(pretrained.value_head.weight, start.value_head.weight)


def test_presets_carry_the_papers_settings(tmp_path):
    """vc_ppo: decoupled GAE (critic 1.0, policy 0.95), value pretraining, no KL. vapo: the
    same plus length-adaptive lambda (alpha 0.05), clip-higher 0.2/0.28, token-level loss and
    the positive-example NLL at 0.1. Both validate and survive `gae config` -> `--config`."""
    from gae.config import load_config, to_yaml

    vc = load_config(preset="vc_ppo")
    assert (vc.advantages.lam, vc.advantages.lam_critic, vc.advantages.lam_schedule) == (0.95, 1.0, "fixed")
    assert vc.ppo.value_pretrain_iterations > 0 and vc.shaping.kl.placement == "none"
    va = load_config(preset="vapo")
    assert (va.advantages.lam_critic, va.advantages.lam_schedule, va.advantages.length_alpha) == (
        1.0,
        "length_adaptive",
        0.05,
    )
    assert (va.ppo.clip_low, va.ppo.clip_high, va.ppo.loss_agg) == (0.2, 0.28, "token-mean")
    assert va.ppo.positive_nll_coef == 0.1 and va.ppo.value_pretrain_iterations > 0
    assert va.shaping.kl.placement == "none"
    for cfg in (vc, va):
        path = tmp_path / f"{cfg.preset}.yaml"
        path.write_text(to_yaml(cfg))
        assert load_config(path=path) == cfg
