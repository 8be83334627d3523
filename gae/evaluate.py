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
    samples: list[dict] = field(default_factory=list)  # prompt, response, score, components

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
    """Mean score of `model`'s continuations of `prompts` (dicts with prompt, reference)."""
    from gae.rewards import RewardInputs, score_inputs
    from gae.rollout import generate_text

    if not prompts:
        raise ValueError(
            "evaluation needs at least one eval prompt; the prompts table has none in split 'eval'"
        )
    texts = [p["prompt"] for p in prompts for _ in range(n_samples)]
    refs = [p.get("reference") for p in prompts for _ in range(n_samples)]
    responses = generate_text(
        model,
        tok,
        texts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
    )
    lengths = [len(tok.encode(r)) for r in responses]
    inputs = RewardInputs.from_texts(responses, refs, prompts=texts, response_lengths=lengths)
    table = score_inputs(inputs, reward_cfg)
    comps = {k: float(v.mean()) for k, v in table.components.items()}
    samples = [
        {
            "prompt": texts[i],
            "response": responses[i],
            "score": float(table.total[i]),
            **{k: float(v[i]) for k, v in table.components.items()},
        }
        for i in range(min(keep_samples, len(texts)))
    ]
    return EvalResult(reward_mean=float(table.total.mean()), components=comps, n=len(texts), samples=samples)
