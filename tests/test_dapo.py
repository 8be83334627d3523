"""DAPO's overlong shaping and dynamic sampling, and the advantage options of issue 15 through
the real tasks (rollout -> score -> advantages -> PPO update) on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from prefect.logging import disable_run_logger

from gae.advantages import AdvantageInputError, zero_variance_groups
from gae.shaping import overlong_penalty


def dapo_eq13(length: int, max_length: int, buffer: int) -> float:
    """arXiv 2503.14476, eq. 13, as printed."""
    if length <= max_length - buffer:
        return 0.0
    if length <= max_length:
        return ((max_length - buffer) - length) / buffer
    return -1.0


def test_overlong_penalty_is_dapos_eq13():
    lengths = torch.arange(0, 25)
    for buffer in (1, 4, 20):
        for penalty in (1.0, 0.5):
            got = overlong_penalty(lengths, 20, buffer, penalty)
            want = torch.tensor(
                [penalty * dapo_eq13(int(n), 20, buffer) for n in lengths], dtype=torch.float32
            )
            torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # by hand: L_max 16, L_buf 4: 12 -> 0, 14 -> -0.5, 16 -> -1
    assert overlong_penalty(torch.tensor([12, 14, 16]), 16, 4).tolist() == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 20, 21)
    with pytest.raises(ValueError, match="penalty"):
        overlong_penalty(lengths, 20, 4, -1.0)


def test_zero_variance_groups_by_hand():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.0, -0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 4, 4])
    # group 0 all 1; group 1 mixed; group 2 all 0.5; group 3 alone; group 4: -0.0 == 0.0
    assert zero_variance_groups(scores, groups).tolist() == [
        True,
        True,
        False,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
    ]
    # group ids need not be sorted or contiguous
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        zero_variance_groups(scores[perm], groups[perm] * 7 + 3), zero_variance_groups(scores, groups)[perm]
    )
    with pytest.raises(AdvantageInputError, match=r"scores\[1\]"):
        zero_variance_groups(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))


def test_config_refuses_options_of_another_estimator():
    from gae.config import AdvantageConfig

    with pytest.raises(ValueError, match="lam_critic"):
        AdvantageConfig(estimator="rloo", lam_critic=1.0)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        AdvantageConfig(estimator="gae", dynamic_sampling="drop")
    AdvantageConfig(estimator="grpo", dynamic_sampling="drop")
    AdvantageConfig(estimator="gae", lam_critic=1.0, lam_schedule="length_adaptive")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from gae.models import ModelConfig, build_model, save_model
    from gae.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("dapo")
    texts = ["the quick brown fox jumps over the lazy dog.", "a b c d e f g h i j k l m n o p."] * 20
    tok = load_tokenizer(train_tokenizer(texts, vocab_size=300, out_dir=root / "tok"))
    torch.manual_seed(0)
    save_model(build_model(ModelConfig.preset("tiny"), tok.vocab_size), root / "policy")
    tok.save(root / "policy")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"p{i}", "prompt": texts[i % 2][:10], "reference": texts[i % 2]}) + "\n"
            for i in range(6)
        )
    )
    return root, str(root / "policy"), str(root / "policy" / "tokenizer.json"), str(prompts)


def _chain(tiny_policy, name, rewards, advantages, ppo):
    from tasks.advantages import compute_advantages, load_advantages
    from tasks.rewards import score_rollouts
    from tasks.rollout import rollout_task
    from tasks.train import train_iteration

    root, pol, tk, prompts = tiny_policy
    with disable_run_logger():
        batch_dir = rollout_task.fn(
            *(None, pol, pol, tk, {"n_samples": 4, "max_new_tokens": 12, "temperature": 1.5}),
            out_dir=str(root / name / "batch"),
            prompts_path=prompts,
            device="cpu",
        )
        scores = score_rollouts.fn(batch_dir, rewards)
        adv = compute_advantages.fn(batch_dir, scores, advantages, {}, kl_coef=0.0, device="cpu")
        out = train_iteration.fn(
            str(root / "data"), name, 0, pol, batch_dir, adv["path"], ppo, {}, kl_coef=0.0, device="cpu"
        )
    return batch_dir, scores, adv, load_advantages(adv["path"]), out["metrics"]


def test_dynamic_sampling_drops_zero_variance_groups_and_logs_the_fraction(tiny_policy):
    from gae.batch import RolloutBatch
    from gae.rewards import ScoreTable

    # exact_match against the reference almost never hits: most groups all score 0 (flat); the
    # length window makes some groups vary
    rewards = {
        "components": [
            {"name": "exact_match", "weight": 1.0},
            {
                "name": "length_window",
                "weight": 1.0,
                "options": {"min_length": 3, "max_length": 6, "slack": 0},
            },
        ],
        "overlong_buffer": 4,
        "overlong_penalty": 0.5,
    }
    batch_dir, scores_path, adv, tensors, metrics = _chain(
        tiny_policy,
        "grpo",
        rewards,
        {"estimator": "grpo", "dynamic_sampling": "drop"},
        {"epochs": 1, "minibatches": 2},
    )
    batch = RolloutBatch.load(batch_dir)
    table = ScoreTable.load(scores_path)
    # overlong: its own component, weight 1, in the total; eq. 13 on each row's generated tokens
    lengths = batch.action_mask.sum(1)
    torch.testing.assert_close(table.components["overlong"], overlong_penalty(lengths, 12, 4, 0.5))
    assert table.weights["overlong"] == 1.0
    others = sum(table.weights[k] * table.components[k].double() for k in table.components if k != "overlong")
    torch.testing.assert_close(
        table.total.double(), others + table.components["overlong"].double(), atol=1e-6, rtol=0
    )
    # dropped rows: exactly the zero-variance groups of the scores before the overlong penalty
    # (DAPO judges on accuracy), and the logged fractions
    flat = zero_variance_groups(others, batch.group_ids)
    assert torch.equal(tensors["loss_rows"].bool(), ~flat)
    groups = batch.group_ids
    n_flat = len(set(groups[flat].tolist()))
    assert metrics["dynamic_sampling/dropped_groups_frac"] == pytest.approx(
        n_flat / len(set(groups.tolist()))
    )
    assert metrics["dynamic_sampling/dropped_rows_frac"] == pytest.approx(float(flat.float().mean()))
    assert (
        adv["metrics"]["dynamic_sampling/dropped_rows_frac"] == metrics["dynamic_sampling/dropped_rows_frac"]
    )
    assert 0 < n_flat < len(set(groups.tolist()))  # some groups dropped, some kept
    kept = int((~flat & batch.action_mask.any(1)).sum())
    assert metrics["actor/loss_rows_frac"] == pytest.approx(kept / int(batch.action_mask.any(1).sum()))


def test_dynamic_sampling_judges_groups_before_the_overlong_penalty(tiny_policy):
    """A group whose samples all score the same but differ in length (so in the overlong
    penalty, part of the total) is still a group without signal and is dropped."""
    from gae.batch import RolloutBatch
    from gae.rewards import ScoreTable
    from tasks.advantages import compute_advantages, load_advantages
    from tasks.rollout import rollout_task

    root, pol, tk, prompts = tiny_policy
    with disable_run_logger():
        batch_dir = rollout_task.fn(
            *(None, pol, pol, tk, {"n_samples": 4, "max_new_tokens": 12, "temperature": 1.5}),
            out_dir=str(root / "overlong-judge" / "batch"),
            prompts_path=prompts,
            device="cpu",
        )
    batch = RolloutBatch.load(batch_dir)
    B, groups = batch.batch_size, batch.group_ids
    first = groups == groups[0]
    correct = torch.ones(B)
    correct[first.nonzero()[0, 0]] = 0.0  # the first group varies in accuracy, every other is all correct
    overlong = -0.1 * torch.arange(B, dtype=torch.float32)  # a different penalty on every row
    table = ScoreTable(
        total=(correct.double() * 0.5 + overlong.double()).float(),
        components={"correct": correct, "overlong": overlong},
        weights={"correct": 0.5, "overlong": 1.0},
    )
    scores = table.save(root / "overlong-judge" / "scores.safetensors")
    with disable_run_logger():
        adv = compute_advantages.fn(
            batch_dir,
            str(scores),
            {"estimator": "grpo", "dynamic_sampling": "drop"},
            {},
            kl_coef=0.0,
            device="cpu",
        )
    assert load_advantages(adv["path"])["loss_rows"].bool().tolist() == first.tolist()
    n_groups = len(set(groups.tolist()))
    assert adv["metrics"]["dynamic_sampling/dropped_groups_frac"] == pytest.approx((n_groups - 1) / n_groups)
    assert n_groups > 1


def test_decoupled_and_length_adaptive_lambda_through_the_task(tiny_policy):
    from gae.advantages import compute_gae, length_adaptive_lam
    from gae.batch import RolloutBatch
    from gae.rewards import ScoreTable
    from gae.shaping import ShapingConfig, shape_rewards

    cfg = {"estimator": "gae", "lam_schedule": "length_adaptive", "length_alpha": 0.2, "lam_critic": 1.0}
    batch_dir, scores_path, _, tensors, metrics = _chain(
        tiny_policy, "vapo", {"components": [{"name": "unigram_f1"}]}, cfg, {"epochs": 1, "minibatches": 1}
    )
    batch = RolloutBatch.load(batch_dir)
    rewards, _ = shape_rewards(ScoreTable.load(scores_path).total, batch, ShapingConfig(), 0.0)
    lam = length_adaptive_lam(batch.action_mask, 0.2)
    want_a, want_r = compute_gae(
        rewards,
        batch.values.float(),
        batch.action_mask,
        gamma=1.0,
        lam=lam,
        lam_critic=1.0,
        backend="reference",
    )
    torch.testing.assert_close(tensors["advantages"], want_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tensors["returns"], want_r, atol=1e-5, rtol=1e-5)
    assert metrics["advantages/lam_actor_mean"] == pytest.approx(float(lam.mean()))
