"""Held-out evaluation: generate on the eval prompts and score with the run's rewards.

The same prompts and the same sampling seed at every iteration, so iteration-to-iteration
differences come from the policy, not from which prompts or random numbers were drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EvalResult:
    reward_mean: float
    components: dict[str, float]
    n: int
    # prompt_id, prompt, response, finish_reason, response_length, score, components
    samples: list[dict] = field(default_factory=list)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        out = {f"{prefix}/reward/mean": self.reward_mean}
        out.update({f"{prefix}/{k}/mean": v for k, v in self.components.items()})
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_policy(
    model,
    tok,
    prompts: list[dict],
    reward_cfg,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 1234,
    n_samples: int = 1,
    keep_samples: int = 8,
) -> EvalResult:
    """Mean score of `model`'s continuations of `prompts` (dicts with prompt_id, prompt and
    optionally reference), scored as training scores its rollouts.

    Rows are laid out as `generate_rollouts` lays them out (prompt-major, `n_samples` per prompt)
    and draw from the same per-row seeds (seed, prompt_id, sample index). The reward inputs are
    built as `RewardInputs.from_batch` builds them from a RolloutBatch: response lengths are the
    generated token counts (EOS included), finish reasons 'eos' or 'length', prompt ids and
    rollout ids ("prompt_id/sample") the real ones; so a response scores the same here as in
    a training batch, whatever its reward reads.
    """
    from gae.rewards import RewardInputs, score_inputs
    from gae.rollout import generate

    if not prompts:
        raise ValueError(
            "evaluation needs at least one eval prompt; the prompts table has none in split 'eval'"
        )
    for i, p in enumerate(prompts):
        if "prompt_id" not in p or "prompt" not in p:
            raise ValueError(
                f"evaluate_policy: prompts[{i}] lacks 'prompt_id' or 'prompt' (keys: {sorted(p)})"
            )
    rows = [(p, j) for p in prompts for j in range(n_samples)]
    texts = [p["prompt"] for p, _ in rows]
    prompt_ids = [str(p["prompt_id"]) for p, _ in rows]
    gen = generate(
        model,
        tok,
        texts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        seed_keys=[(pid, j) for pid, (_, j) in zip(prompt_ids, rows, strict=True)],
    )
    inputs = RewardInputs(
        prompts=texts,
        responses=gen.texts,
        references=[p.get("reference") for p, _ in rows],
        finish_reasons=gen.finish_reasons,
        response_lengths=gen.response_lengths,
        rollout_ids=[f"{pid}/{j}" for pid, (_, j) in zip(prompt_ids, rows, strict=True)],
        prompt_ids=prompt_ids,
    )
    table = score_inputs(inputs, reward_cfg)
    comps = {k: float(v.mean()) for k, v in table.components.items()}
    samples = [
        {
            "prompt_id": prompt_ids[i],
            "prompt": texts[i],
            "response": gen.texts[i],
            "finish_reason": gen.finish_reasons[i],
            "response_length": gen.response_lengths[i],
            "score": float(table.total[i]),
            **{k: float(v[i]) for k, v in table.components.items()},
        }
        for i in range(min(keep_samples, len(texts)))
    ]
    return EvalResult(reward_mean=float(table.total.mean()), components=comps, n=len(texts), samples=samples)
