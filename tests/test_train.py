"""The PPO trainer: ratio 1 before the first step, warm-up, early stop, schedules, resume
exactness, and learning on a small task."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from gae.advantages import compute_gae
from gae.batch import RolloutBatch
from gae.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from gae.models import ModelConfig, build_model, score_responses
from gae.train import PPOConfig, build_optimizer, data_metrics, lr_factor, ppo_update

V = 16
TARGET = 7  # the token the learnable task rewards


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as `gae.device.configure_threads("auto")` picks on 2-core machines:
    a second thread makes these tiny models 5-15x slower on a shared machine (bench/RESULTS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, critic: str = "head"):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, critic=critic)
    return build_model(cfg, V)


def synthetic_batch(model, *, B=8, P=3, T=6, seed=0) -> RolloutBatch:
    """Random prompts and responses, scored by the model exactly as rollouts score them."""
    g = torch.Generator().manual_seed(seed)
    prompt_tokens = torch.randint(1, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.bool)
    prompt_mask[0, 0] = False  # one left-padded prompt
    prompt_tokens[0, 0] = 0
    response_tokens = torch.randint(1, V, (B, T), generator=g)
    response_tokens[::2, 0] = TARGET  # so the scores vary
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    action_mask = torch.arange(T)[None, :] < lengths[:, None]
    response_tokens = torch.where(action_mask, response_tokens, torch.zeros_like(response_tokens))
    with torch.no_grad():
        out = score_responses(model, prompt_tokens, prompt_mask, response_tokens, action_mask)
    return RolloutBatch(
        rollout_ids=[f"p{i}/0" for i in range(B)],
        prompt_ids=[f"p{i}" for i in range(B)],
        group_ids=torch.arange(B),
        prompt_tokens=prompt_tokens,
        prompt_mask=prompt_mask,
        response_tokens=response_tokens,
        action_mask=action_mask,
        logprobs=out.logprobs,
        ref_logprobs=out.logprobs.clone(),
        values=out.values,
        last_values=out.last_values,
        prompts=[""] * B,
        responses=[""] * B,
        references=[None] * B,
        finish_reasons=["eos"] * B,
    )


def target_rewards(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Score = fraction of response tokens equal to TARGET, placed on the last action token."""
    m = batch.action_mask
    score = ((batch.response_tokens == TARGET) & m).sum(1).float() / m.sum(1).clamp(min=1)
    rewards = torch.zeros(m.shape)
    last = m.sum(1) - 1
    rewards[torch.arange(m.shape[0]), last] = score
    return score, rewards


def advantages_of(batch):
    score, rewards = target_rewards(batch)
    adv, ret = compute_gae(rewards, batch.values, batch.action_mask, gamma=1.0, lam=0.95)
    return score, rewards, adv, ret


def test_ratio_is_exactly_one_on_the_first_minibatch():
    model = tiny_model()
    batch = synthetic_batch(model)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=2, minibatches=2, actor_lr=1e-2)
    opt = build_optimizer(model, cfg)
    metrics, train_lp = ppo_update(model, opt, batch, adv, ret, cfg)
    # The trainer and the rollout use the same scorer: bit-identical log-probs before any step.
    assert metrics["actor/first_minibatch_max_abs_log_ratio"] == 0.0
    assert torch.equal(train_lp, batch.logprobs)
    assert metrics["training/rollout_probs_diff_max"] == 0.0
    # ... and the update did something (later minibatches see a moved policy).
    assert metrics["actor/update_steps"] == 4
    after = score_responses(
        model, batch.prompt_tokens, batch.prompt_mask, batch.response_tokens, batch.action_mask
    )
    assert not torch.equal(after.logprobs, batch.logprobs)
    for key in (
        "actor/pg_loss",
        "actor/pg_clipfrac",
        "actor/ppo_kl",
        "actor/entropy",
        "actor/grad_norm",
        "critic/vf_loss",
        "critic/vf_clipfrac",
        "actor/kl_coef",
        "timing_s/update_actor",
    ):
        assert key in metrics, key


def test_train_logprobs_without_prepass_match_on_first_minibatch_rows():
    model = tiny_model()
    batch = synthetic_batch(model)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=1, minibatches=1, score_before_update=False)
    _, train_lp = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg)
    assert torch.equal(train_lp, batch.logprobs)  # one minibatch: scored before the only step


def test_critic_warmup_leaves_the_policy_untouched():
    model = tiny_model()
    batch = synthetic_batch(model)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=1, minibatches=2, critic_warmup_iterations=1, critic_lr=1e-2)
    opt = build_optimizer(model, cfg)
    actor_before = [p.detach().clone() for p in model.actor_parameters()]
    head_before = model.value_head.weight.detach().clone()
    metrics, _ = ppo_update(model, opt, batch, adv, ret, cfg, iteration=0)
    assert metrics["actor/critic_warmup"] == 1.0 and "timing_s/update_critic" in metrics
    assert all(torch.equal(a, p) for a, p in zip(actor_before, model.actor_parameters(), strict=True))
    assert not torch.equal(head_before, model.value_head.weight)
    # After the warm-up the policy moves.
    ppo_update(model, opt, batch, adv, ret, cfg, iteration=1)
    assert not all(torch.equal(a, p) for a, p in zip(actor_before, model.actor_parameters(), strict=True))


def test_early_stop_on_target_kl():
    model = tiny_model()
    batch = synthetic_batch(model, B=16)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=4, minibatches=4, actor_lr=5e-2, target_kl=1e-4)
    metrics, _ = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg)
    assert metrics["actor/early_stopped"] == 1.0
    assert 1 <= metrics["actor/update_steps"] < 16


def test_kl_loss_placement_adds_the_kl_term():
    model = tiny_model()
    batch = synthetic_batch(model)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=2, minibatches=2)
    m, _ = ppo_update(
        model, build_optimizer(model, cfg), batch, adv, ret, cfg, kl_coef=0.1, kl_placement="loss"
    )
    assert "actor/kl_loss" in m and m["actor/kl_coef"] == 0.1
    m, _ = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg, kl_coef=0.1)
    assert "actor/kl_loss" not in m
    with pytest.raises(ValueError, match="kl_placement"):
        ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg, kl_placement="reward+loss")


def test_lr_schedule():
    cfg = PPOConfig(lr_schedule="linear", lr_warmup_iterations=1)
    # warm-up: (0 + 1) / (1 + 1) = 0.5; then linear from 1 at it=1 to 0 at it=total=5
    assert lr_factor(0, cfg, 5) == pytest.approx(0.5)
    assert lr_factor(1, cfg, 5) == pytest.approx(1.0)
    assert lr_factor(3, cfg, 5) == pytest.approx(0.5)  # progress (3 - 1) / (5 - 1) = 0.5
    cos = PPOConfig(lr_schedule="cosine", min_lr_ratio=0.1)
    # 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55
    assert lr_factor(2, cos, 4) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="total_iterations"):
        lr_factor(0, cos)
    with pytest.raises(ValueError):
        PPOConfig(epochs=0)
    with pytest.raises(ValueError):
        PPOConfig(epochz=1)


def test_bad_inputs_raise():
    model = tiny_model()
    batch = synthetic_batch(model)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig()
    with pytest.raises(ValueError, match="advantages"):
        ppo_update(model, build_optimizer(model, cfg), batch, adv[:, :-1], ret, cfg)
    bad = ret.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="returns"):
        ppo_update(model, build_optimizer(model, cfg), batch, adv, bad, cfg)


def test_data_metrics_names_and_values():
    model = tiny_model()
    batch = synthetic_batch(model)
    score, rewards, adv, ret = advantages_of(batch)
    m = data_metrics(
        batch, scores=score, token_rewards=rewards, advantages=adv, returns=ret, kl=torch.zeros_like(adv)
    )
    assert m["critic/score/mean"] == pytest.approx(float(score.mean()))
    # one reward per row, on the last token: sequence reward = score
    assert m["critic/rewards/mean"] == pytest.approx(float(score.mean()))
    assert m["response_length/mean"] == pytest.approx(float(batch.action_mask.sum(1).float().mean()))
    assert m["response_length/clip_ratio"] == 0.0
    for k in m:  # MLflow-safe names
        assert all(c.isalnum() or c in "_-./ " for c in k), k


# ----------------------------------------------------------------------------- resume


def _iteration(model, opt, cfg, it):
    """One deterministic iteration: sample responses with the global torch RNG (so the RNG
    state must survive a resume), score, advantages, update."""
    B, P, T = 8, 2, 5
    prompt_tokens = torch.randint(1, V, (B, P))
    response_tokens = torch.randint(1, V, (B, T))
    response_tokens[::2, 0] = TARGET
    batch_seed = int(torch.randint(0, 2**31 - 1, (1,)))
    pm = torch.ones(B, P, dtype=torch.bool)
    am = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        out = score_responses(model, prompt_tokens, pm, response_tokens, am)
    batch = RolloutBatch(
        rollout_ids=[str(i) for i in range(B)],
        prompt_ids=[str(i) for i in range(B)],
        group_ids=torch.arange(B),
        prompt_tokens=prompt_tokens,
        prompt_mask=pm,
        response_tokens=response_tokens,
        action_mask=am,
        logprobs=out.logprobs,
        ref_logprobs=out.logprobs,
        values=out.values,
        last_values=out.last_values,
        prompts=[""] * B,
        responses=[""] * B,
        references=[None] * B,
        finish_reasons=["eos"] * B,
        meta={"seed": batch_seed},
    )
    _, _, adv, ret = advantages_of(batch)
    ppo_update(model, opt, batch, adv, ret, cfg, iteration=it, total_iterations=3)


def test_resume_is_bit_exact(tmp_path):
    from gae.shaping import AdaptiveKLController

    cfg = PPOConfig(epochs=2, minibatches=2, actor_lr=3e-3, lr_schedule="cosine", critic_warmup_iterations=1)

    torch.manual_seed(123)
    straight = tiny_model(seed=1)
    opt = build_optimizer(straight, cfg)
    for it in range(3):
        _iteration(straight, opt, cfg, it)

    torch.manual_seed(123)
    first = tiny_model(seed=1)
    opt = build_optimizer(first, cfg)
    kl = AdaptiveKLController(0.05, target=0.1, horizon=100)
    kl.update(0.3, 8)
    _iteration(first, opt, cfg, 0)
    run_dir = tmp_path / "run"
    save_checkpoint(
        checkpoint_dir(run_dir, 0),
        model=first,
        optimizer=opt,
        iteration=0,
        kl_controller=kl,
        config=cfg.model_dump(),
    )
    torch.manual_seed(999)  # disturb every RNG: resume must restore them
    torch.randn(100)

    resumed = tiny_model(seed=7)  # different init: the checkpoint must overwrite all of it
    opt2 = build_optimizer(resumed, cfg)
    kl2 = AdaptiveKLController(0.05, target=0.1, horizon=100)
    ck = latest_checkpoint(run_dir)
    assert ck == checkpoint_dir(run_dir, 0)
    state = load_checkpoint(ck, model=resumed, optimizer=opt2, kl_controller=kl2)
    assert state["iteration"] == 0 and kl2.value == kl.value
    for it in range(state["iteration"] + 1, 3):
        _iteration(resumed, opt2, cfg, it)

    sd_a, sd_b = straight.state_dict(), resumed.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k


def test_checkpoint_is_atomic_and_latest_moves(tmp_path):
    model = tiny_model()
    run_dir = tmp_path / "r"
    assert latest_checkpoint(run_dir) is None
    for it in range(2):
        save_checkpoint(checkpoint_dir(run_dir, it), model=model, iteration=it)
    assert latest_checkpoint(run_dir).name == "iter-00001"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    from gae.models import load_model

    loaded = load_model(checkpoint_dir(run_dir, 1) / "policy")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_checkpoint(tmp_path / "nowhere", model=copy.deepcopy(model))


# ----------------------------------------------------------------------------- learning


def test_ppo_learns_a_small_task():
    """Reward = fraction of response tokens in a target set (10% of the vocabulary). A tiny
    GPT from scratch, 8 PPO iterations on CPU (about 5 s): the eval reward, on fixed prompts
    with a fixed sampling seed, rises from about 0.08 (chance is 0.10) to well above
    0.3 (0.60 when this test was written). The test asks for a gain of at least 0.15."""
    from gae.rollout import RolloutConfig, generate_rollouts
    from gae.tokenizer import load_tokenizer, train_tokenizer

    texts = [
        "the cat sat on the mat.",
        "a dog ran in the park.",
        "the sun is warm today.",
        "we like to read.",
    ] * 20
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=d))
    targets = torch.arange(0, tok.vocab_size, 10)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), tok.vocab_size)
    ref = copy.deepcopy(model).eval()
    train_prompts = [{"prompt_id": f"p{i}", "prompt": texts[i % 4][: 5 + i % 7]} for i in range(16)]
    eval_prompts = [{"prompt_id": f"e{i}", "prompt": texts[i % 4][: 3 + i % 5]} for i in range(16)]

    def score(b):
        hit = torch.isin(b.response_tokens, targets) & b.action_mask
        return hit.sum(1).float() / b.action_mask.sum(1).clamp(min=1)

    def eval_reward():
        cfg = RolloutConfig(n_samples=4, max_new_tokens=8, seed=999)
        return float(score(generate_rollouts(model, ref, tok, eval_prompts, cfg, device="cpu")).mean())

    cfg = PPOConfig(epochs=2, minibatches=2, actor_lr=1e-2, critic_lr=1e-2)
    opt = build_optimizer(model, cfg)
    before = eval_reward()
    for it in range(8):
        rcfg = RolloutConfig(n_samples=4, max_new_tokens=8, seed=it)
        b = generate_rollouts(model, ref, tok, train_prompts, rcfg, device="cpu")
        s, m = score(b), b.action_mask
        rewards = torch.zeros(m.shape)
        rewards[torch.arange(m.shape[0]), m.sum(1) - 1] = s
        adv, ret = compute_gae(rewards, b.values, m, gamma=1.0, lam=0.95)
        metrics, _ = ppo_update(model, opt, b, adv, ret, cfg, iteration=it)
        # Rollout and trainer agree bit for bit before each iteration's first step.
        assert metrics["actor/first_minibatch_max_abs_log_ratio"] == 0.0
    after = eval_reward()
    assert after >= before + 0.15, (before, after)


# ----------------------------------------------------------------------------- task


def test_train_task_checkpoints_and_is_resumable(tmp_path):
    from safetensors.torch import load_file, save_file

    from gae.models import save_model
    from gae.paths import DataDir
    from gae.rewards import ScoreTable
    from gae.shaping import ShapingConfig
    from tasks.rewards import SCORES_FILE
    from tasks.train import train_iteration

    dd = DataDir.resolve(tmp_path / "data").ensure()
    model = tiny_model()
    base = save_model(model, tmp_path / "base")
    shaping = ShapingConfig.model_validate({"kl": {"coef": 0.05, "target": 1.0, "horizon": 100}})
    ppo = PPOConfig(epochs=1, minibatches=2).model_dump(mode="json")
    policy_dir = str(base)
    kl_coef = 0.05
    for it in range(2):
        bdir = dd.iteration_dir("r1", it) / "batch"
        batch = synthetic_batch(model, seed=it)
        batch.save(bdir)
        score, rewards, adv, ret = advantages_of(batch)
        ScoreTable(total=score, components={"target": score.clone()}, weights={"target": 1.0}).save(
            bdir / SCORES_FILE
        )
        adv_path = bdir / "advantages.safetensors"
        save_file(
            {"token_rewards": rewards, "kl": torch.zeros_like(rewards), "advantages": adv, "returns": ret},
            str(adv_path),
        )
        args = (
            str(dd.root),
            "r1",
            it,
            policy_dir,
            str(bdir),
            str(adv_path),
            ppo,
            shaping.model_dump(mode="json"),
        )
        out = train_iteration.fn(*args, kl_coef=kl_coef, mean_kl=2.0, total_iterations=2, device="cpu")
        # adaptive controller: KL 2.0 over target 1.0 -> error clipped to 0.2, beta *= 1 + 0.2 * 8 / 100
        assert out["kl_coef"] == pytest.approx(kl_coef * (1 + 0.2 * 8 / 100))
        assert out["metrics"]["critic/score/mean"] == pytest.approx(float(score.mean()))
        assert "reward/target/mean" in out["metrics"]
        lp = load_file(out["train_logprobs"])["train_logprobs"]
        assert lp.shape == batch.logprobs.shape
        weights = (Path(out["model_dir"]) / "model.safetensors").read_bytes()
        again = train_iteration.fn(*args, kl_coef=kl_coef, mean_kl=2.0, total_iterations=2, device="cpu")
        assert again["checkpoint"] == out["checkpoint"] and again["kl_coef"] == out["kl_coef"]
        assert (Path(out["model_dir"]) / "model.safetensors").read_bytes() == weights  # no second step
        policy_dir, kl_coef = out["model_dir"], out["kl_coef"]
    assert latest_checkpoint(dd.run_dir("r1")).name == "iter-00001"


def test_timing_metrics():
    from gae.train import timing_metrics

    m = timing_metrics({"gen": 1.0, "update_actor": 2.0, "step": 4.0}, n_tokens=400)
    # throughput = 400 tokens / 4 s = 100; other = 4 - (1 + 2) = 1
    assert m["perf/throughput"] == 100.0 and m["timing_s/other"] == 1.0 and m["timing_s/gen"] == 1.0


def test_task_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    """3 iterations straight == 1 iteration, a 'restart' (every RNG disturbed), then 2 more:
    the task keeps nothing in memory between iterations, so all state must be on disk."""
    from safetensors.torch import save_file

    from gae.models import load_model, save_model
    from gae.paths import DataDir
    from gae.shaping import ShapingConfig
    from tasks.train import train_iteration

    base = save_model(tiny_model(seed=3), tmp_path / "base")
    shaping = ShapingConfig.model_validate({"kl": {"coef": 0.05, "target": 1.0, "horizon": 100}})
    ppo = PPOConfig(epochs=2, minibatches=2, actor_lr=3e-3, lr_schedule="cosine").model_dump(mode="json")

    def run_iterations(dd, iterations, policy_dir, kl_coef):
        for it in iterations:
            bdir = dd.iteration_dir("r", it) / "batch"
            batch = synthetic_batch(load_model(policy_dir), seed=it)  # rollouts of the current policy
            batch.save(bdir)
            _, rewards, adv, ret = advantages_of(batch)
            tensors = {
                "token_rewards": rewards,
                "kl": torch.zeros_like(rewards),
                "advantages": adv,
                "returns": ret,
            }
            save_file(tensors, str(bdir / "advantages.safetensors"))
            out = train_iteration.fn(
                str(dd.root),
                "r",
                it,
                policy_dir,
                str(bdir),
                str(bdir / "advantages.safetensors"),
                ppo,
                shaping.model_dump(mode="json"),
                kl_coef=kl_coef,
                mean_kl=0.5,
                total_iterations=3,
                device="cpu",
            )
            policy_dir, kl_coef = out["model_dir"], out["kl_coef"]
        return policy_dir, kl_coef

    a = DataDir.resolve(tmp_path / "a").ensure()
    final_a, kl_a = run_iterations(a, range(3), str(base), 0.05)

    b = DataDir.resolve(tmp_path / "b").ensure()
    policy_b, kl_b = run_iterations(b, range(1), str(base), 0.05)
    torch.manual_seed(12345)  # a new process: nothing of the first one survives but files
    torch.randn(1000)
    final_b, kl_b = run_iterations(b, range(1, 3), policy_b, kl_b)

    assert kl_a == kl_b
    assert (Path(final_a) / "model.safetensors").read_bytes() == (
        Path(final_b) / "model.safetensors"
    ).read_bytes()

    # ... and both equal one process keeping model and optimizer in memory throughout, so
    # the checkpoint carries everything the update depends on (AdamW moments and steps).
    cfg = PPOConfig.model_validate(ppo)
    model = load_model(base)
    opt = build_optimizer(model, cfg)
    for it in range(3):
        batch = synthetic_batch(model, seed=it)
        _, _, adv, ret = advantages_of(batch)
        ppo_update(model, opt, batch, adv, ret, cfg, iteration=it, total_iterations=3)
    resumed = load_model(final_b)
    for (k, x), y in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_take_the_same_step_as_the_whole_minibatch(agg):
    """Gradient accumulation: micro batches of 3 rows and of 1 row, against whole minibatches,
    on ragged masks with an empty row, the KL and entropy terms and value clipping on: the same
    parameters after two epochs and the same metrics. A plain mean over micro batches would
    weight a short row's tokens like a long row's and fail here."""
    base = tiny_model(3)
    batch = synthetic_batch(base, B=10, seed=4)
    batch.action_mask[3] = False  # a row with no action token
    batch.logprobs[3] = 0.0
    batch.values[3] = 0.0
    batch.ref_logprobs = batch.logprobs - 0.1 * torch.rand(batch.logprobs.shape)
    _, _, adv, ret = advantages_of(batch)
    results = []
    for micro in (None, 3, 1):
        model = copy.deepcopy(base)
        cfg = PPOConfig(
            epochs=2, minibatches=2, loss_agg=agg, entropy_coef=0.01, value_clip=0.2, micro_batch_rows=micro
        )
        metrics, lp = ppo_update(
            model, build_optimizer(model, cfg), batch, adv, ret, cfg, kl_coef=0.1, kl_placement="loss"
        )
        results.append((model, metrics, lp))
    (m0, met0, lp0), *rest = results
    assert met0["actor/update_steps"] == 4
    for model, met, lp in rest:
        for p0, p in zip(m0.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p, p0, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(lp, lp0, atol=1e-6, rtol=0)
        for key in (
            "actor/pg_loss",
            "critic/vf_loss",
            "actor/entropy",
            "actor/kl_loss",
            "actor/approx_kl",
            "actor/pg_clipfrac",
            "actor/total_loss",
            "actor/grad_norm",
        ):
            assert met[key] == pytest.approx(met0[key], rel=1e-4, abs=1e-6), key


def test_micro_batches_stop_on_target_kl_like_the_whole_minibatch():
    """The target-KL stop reads the minibatch's KL, never one micro batch's."""
    base = tiny_model(5)
    batch = synthetic_batch(base, B=8, seed=6)
    _, _, adv, ret = advantages_of(batch)
    shifted = copy.deepcopy(batch)
    # rows 0 and 1 only: their tokens' k3 KL is (e^0.5 - 1) - 0.5 = 0.149, about a quarter of the
    # tokens, so the minibatch's is ~0.04 while any 2-row micro batch holding one of them is > 0.06
    shifted.logprobs[:2] = torch.where(batch.action_mask[:2], batch.logprobs[:2] - 0.5, 0.0)
    for b, target, stops in ((batch, 1e-9, False), (shifted, 0.06, False), (shifted, 0.01, True)):
        runs = []
        for micro in (None, 2):
            model = copy.deepcopy(base)
            cfg = PPOConfig(epochs=1, minibatches=1, target_kl=target, micro_batch_rows=micro)
            m, _ = ppo_update(model, build_optimizer(model, cfg), b, adv, ret, cfg)
            assert m["actor/early_stopped"] == float(stops) and m["actor/update_steps"] == float(not stops)
            runs.append(model)
        for p, q in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5)
        if stops:
            assert all(
                torch.equal(p, q) for p, q in zip(base.parameters(), runs[1].parameters(), strict=True)
            )


def test_critic_free_estimators_leave_the_value_function_and_a_zero_advantage_policy_alone():
    """GRPO with every sample scoring the same: advantages 0, so the policy must not move; the
    value loss against GRPO's returns (= advantages) must not move it through the shared trunk
    either, nor train the value head, nor warm up a critic that is not used."""
    base = tiny_model(7)
    batch = synthetic_batch(base, B=6, seed=8)
    zero = torch.zeros(batch.action_mask.shape)
    ret = torch.where(batch.action_mask, 1.0, 0.0)  # a target the value head is far from (V = 0)
    cfg = PPOConfig(epochs=2, minibatches=2, critic_warmup_iterations=1)
    free = copy.deepcopy(base)
    m, _ = ppo_update(free, build_optimizer(free, cfg), batch, zero, ret, cfg, train_critic=False)
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), free.parameters(), strict=True))
    assert m["actor/critic_warmup"] == 0.0 and m["actor/update_steps"] == 4
    # the same update fitting the critic moves the shared trunk: what train_critic=False prevents
    fitted = copy.deepcopy(base)
    ppo_update(fitted, build_optimizer(fitted, cfg), batch, zero, ret, cfg, iteration=1)
    assert any(
        not torch.equal(p, q) for p, q in zip(base.actor.parameters(), fitted.actor.parameters(), strict=True)
    )


def test_early_stop_without_a_prepass_still_scores_every_row():
    """score_before_update=False takes train_logprobs from the first epoch's minibatches; when
    the target KL stops the update after one step, the rows never visited are scored after the
    stop, not left at 0.0 (which the store would show as probability 1)."""
    model = tiny_model(9)
    batch = synthetic_batch(model, B=8, seed=10)
    _, _, adv, ret = advantages_of(batch)
    cfg = PPOConfig(epochs=1, minibatches=4, actor_lr=0.5, target_kl=1e-6, score_before_update=False)
    m, lp = ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg)
    assert m["actor/early_stopped"] == 1.0 and m["actor/update_steps"] == 1
    mask = batch.action_mask
    assert bool((lp[mask] < 0).all()), lp  # every action token has a real log-probability
    assert bool((lp[~mask] == 0).all())


def test_micro_batches_bound_every_forward_pass_including_the_scoring_prepass():
    """micro_batch_rows bounds the rows of every forward pass: the no-grad pre-pass that scores
    the batch before the first step as well as the update's passes."""
    from gae.models import score_responses as real_score

    model = tiny_model(11)
    batch = synthetic_batch(model, B=10, seed=12)
    _, _, adv, ret = advantages_of(batch)
    seen = []

    def score_fn(m, pt, *args, **kw):
        seen.append((pt.shape[0], torch.is_grad_enabled()))
        return real_score(m, pt, *args, **kw)

    cfg = PPOConfig(epochs=1, minibatches=2, micro_batch_rows=2)
    ppo_update(model, build_optimizer(model, cfg), batch, adv, ret, cfg, score_fn=score_fn)
    assert seen and max(rows for rows, _ in seen) <= 2
    assert {grad for _, grad in seen} == {False, True}  # both the pre-pass and the update ran
