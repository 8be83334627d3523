"""The named steps of one PPO iteration, each checkable on its own against the algorithm
sketch in `gae.train` (Schulman et al. 2017; verl's `update_actor` / `update_critic`):

    1. score_rollout        the trainer's log-probs of the rollout, no grad, before any step
    2. prepare_advantages   whitening over the batch's action tokens
       minibatch_schedule   fixed-seed permutation per epoch, split into minibatches
       loss_denominators    the minibatch's action-token and non-empty-row counts (one place)
       micro_batch_weights  a micro batch's share of those counts (gradient accumulation)
    3. policy_objective     clipped surrogate - c_H * entropy; c_KL * KL when it sits in the loss
    4. value_objective      c_V * clipped value loss
       joint_loss           what one backward pass takes (warm-up: the value loss alone);
                            `gae.losses.positive_nll_loss` (VAPO) is added over the
                            minibatch's positive tokens, the third denominator
    5. optimizer_step       sum gradients over ranks (data parallel), clip the norm, AdamW

Pure functions of tensors and floats; `gae.train.ppo_update` wires them.

Data parallelism: a trainer whose ranks each hold a shard of every minibatch passes a
`reduce_sum` (a sum over ranks, e.g. `dist.all_reduce`) to `loss_denominators` (so every rank
divides by the whole minibatch's counts: summing the ranks' gradients then gives exactly the
single-process gradient under every loss aggregation), to the metric partials and to
`optimizer_step` (the gradients). `tests/test_train_dp.py` checks two gloo ranks against one
process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gae.device import autocast
from gae.losses import AggMode, RatioLevel, entropy_loss, kl_loss, policy_loss, value_loss
from gae.masked import masked_whiten

ScoreFn = Callable[..., object]
# Returns the sum of a tensor over data-parallel ranks (e.g. `dist.all_reduce(t); return t`).
ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def score_rows(score_fn: ScoreFn, model, batch, idx: torch.Tensor, *, compute_entropy: bool = False):
    """`score_fn`'s output (gae.models.ScoreOutput: logprobs, values, entropy (len(idx), T),
    last_values (len(idx),)) for rows `idx` of `batch`; score_fn is the rollout's own scorer,
    gae.models.score_responses."""
    return score_fn(
        model,
        batch.prompt_tokens[idx],
        batch.prompt_mask[idx],
        batch.response_tokens[idx],
        batch.action_mask[idx],
        compute_entropy=compute_entropy,
    )


def score(score_fn: ScoreFn, model, batch, idx: torch.Tensor, *, compute_entropy: bool):
    """(logp, values, entropy) of rows `idx` of `batch`, each (len(idx), T) (see `score_rows`)."""
    out = score_rows(score_fn, model, batch, idx, compute_entropy=compute_entropy)
    return out.logprobs, out.values, out.entropy


def micro_batches(idx: torch.Tensor, rows: int | None) -> tuple[torch.Tensor, ...]:
    """`idx` split into chunks of `rows` rows (verl's micro batches); None: one chunk."""
    return idx.split(rows) if rows else (idx,)


def score_rollout(
    model,
    batch,
    idx_chunks: Sequence[torch.Tensor],
    out: torch.Tensor,
    *,
    score_fn: ScoreFn,
    micro_batch_rows: int | None,
    bf16: bool,
) -> None:
    """Step 1, "score": the trainer's log-probs of the rollout tokens, no grad, into `out` (B, T).

    `idx_chunks` are the row sets to score (the minibatches); each is scored in micro batches
    too, so the pre-pass fits wherever the update does.
    """
    device = out.device
    with torch.no_grad():
        for idx in idx_chunks:
            for mi in micro_batches(idx, micro_batch_rows):
                with autocast(device, bf16=bf16):
                    lp, _, _ = score(score_fn, model, batch, mi, compute_entropy=False)
                out[mi] = lp.float()


def prepare_advantages(advantages: torch.Tensor, mask: torch.Tensor, *, whiten: bool) -> torch.Tensor:
    """Step 2, "advantages": A = whiten(A) over the batch's action tokens (advantages-spec.md,
    "Whitening"); a batch of fewer than 2 action tokens keeps its raw advantages."""
    if whiten and int(mask.sum()) >= 2:
        return masked_whiten(advantages, mask)
    return advantages


def minibatch_schedule(
    B: int, *, epochs: int, minibatches: int, seed: int, device
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, k, row indices) of every minibatch: a fixed-seed permutation of the B rows per
    epoch (`seed` already mixes in the iteration, so a resumed run draws the same minibatches),
    split into `min(minibatches, B)` near-equal parts."""
    n_mb = min(minibatches, B)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(B, generator=gen).to(device)
        for k, idx in enumerate(perm.tensor_split(n_mb)):
            yield epoch, k, idx


@dataclass(frozen=True)
class LossDenominators:
    """The counts a minibatch's aggregated losses divide by (see `gae.losses.aggregate`).

    tokens: action tokens of the minibatch (token-mean); rows: its rows holding at least one
    action token (the sequence means); positive_tokens: action tokens of its positive
    samples (VAPO's positive-example NLL, `gae.losses.positive_nll_loss`). All >= 1.
    """

    tokens: int
    rows: int
    positive_tokens: int = 1


def local_denominators(mask: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
    """The raw counts of a minibatch's `(B_mb, T)` loss mask as an int64 tensor
    `[tokens, non-empty rows, positive tokens]` (`positive`: the mask of the positive samples'
    tokens, or None: 0). The only place the denominators are counted."""
    n_pos = positive.sum() if positive is not None else torch.zeros((), dtype=torch.int64, device=mask.device)
    return torch.stack([mask.sum(), mask.any(-1).sum(), n_pos]).to(torch.int64)


def loss_denominators(
    mask: torch.Tensor, reduce_sum: ReduceFn | None = None, *, positive: torch.Tensor | None = None
) -> LossDenominators:
    """`local_denominators(mask, positive)`, summed over data-parallel ranks by `reduce_sum` when
    given (each rank holds a shard of the minibatch, and the loss must divide by the whole
    minibatch's counts, not the shard's), then clamped to >= 1 (an empty minibatch adds 0)."""
    counts = local_denominators(mask, positive)
    if reduce_sum is not None:
        counts = reduce_sum(counts)
    tokens, rows, pos = (int(c) for c in counts.tolist())
    return LossDenominators(tokens=max(tokens, 1), rows=max(rows, 1), positive_tokens=max(pos, 1))


def micro_batch_weights(m: torch.Tensor, denoms: LossDenominators, agg: AggMode) -> tuple[float, float]:
    """(w_tok, w_agg) of a micro batch with action mask `m` (B_mu, T) inside its minibatch.

    Each micro batch's aggregated loss averages over its own tokens (or rows); scaled by its
    share of the minibatch's denominator the summed gradient is the whole minibatch's. A plain
    mean over micro batches would reweight tokens (the normalisation bug of gradient
    accumulation in HF Trainer, transformers#34191). w_tok is the token share (per-token rate
    metrics), w_agg the share under `agg` (token share for token-mean, else non-empty-row share).
    """
    w_tok = float(m.sum()) / denoms.tokens
    w_agg = w_tok if agg == "token-mean" else float(m.any(-1).sum()) / denoms.rows
    return w_tok, w_agg


def policy_objective(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    m: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    entropy_coef: float,
    agg: AggMode,
    kl: tuple[float, torch.Tensor, str, float | None] | None = None,
    ratio_level: RatioLevel = "token",
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """Step 3, "policy loss" on one micro batch: (pg - entropy_coef * H, kl_coef * KL or None, metrics).

    pg is the clipped surrogate (`gae.losses.policy_loss`; with ratio_level "sequence" on GSPO's
    sequence ratio), H the entropy (a bonus, subtracted); `kl`, when the KL to the reference
    sits in the loss, is (kl_coef, ref_logp, estimator, clamp). All tensors (B_mu, T).
    """
    pg, metrics = policy_loss(
        logp,
        old_logp,
        advantages,
        m,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        agg=agg,
        ratio_level=ratio_level,
    )
    ent, ent_m = entropy_loss(entropy, m, agg=agg)
    metrics.update(ent_m)
    kl_term = None
    if kl is not None:
        kl_coef, ref_logp, estimator, clamp = kl
        kl_l, kl_m = kl_loss(logp, ref_logp, m, agg=agg, estimator=estimator, clamp=clamp)
        kl_term = kl_coef * kl_l
        metrics.update(kl_m)
    return pg - entropy_coef * ent, kl_term, metrics


def value_objective(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    m: torch.Tensor,
    *,
    clip: float | None,
    vf_coef: float,
    agg: AggMode,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Step 4, "value loss" on one micro batch: vf_coef * clipped value loss
    (`gae.losses.value_loss`). All tensors (B_mu, T)."""
    vf, metrics = value_loss(values, old_values, returns, m, clip=clip, agg=agg)
    return vf_coef * vf, metrics


def joint_loss(
    policy: torch.Tensor,
    kl: torch.Tensor | None,
    value: torch.Tensor,
    *,
    train_policy: bool,
    train_critic: bool,
) -> torch.Tensor:
    """The loss one backward pass takes: policy + value [+ kl].

    Warm-up (train_policy False) is the value loss alone; critic-free estimators
    (train_critic False) leave the value loss out, so the value head gets no gradient and
    AdamW skips it.
    """
    if not train_policy:
        return value
    loss = policy
    if train_critic:
        loss = loss + value
    if kl is not None:
        loss = loss + kl
    return loss


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    *,
    frozen: set[int],
    max_grad_norm: float | None,
    reduce_sum: ReduceFn | None = None,
) -> tuple[float, bool]:
    """Step 5, "step": clip the global gradient norm, AdamW step, zero the gradients.

    Parameters whose id is in `frozen` take no step (their grad is dropped; AdamW skips a None
    grad). With `reduce_sum` the gradients are first summed over data-parallel ranks (each
    rank's backward was already divided by the global denominators, so the sum is the whole
    minibatch's gradient). A non-finite gradient norm skips the step: it would poison AdamW's
    moments for good (verl skips too). Returns (grad_norm, stepped).
    """
    if frozen:
        for p in params:
            if id(p) in frozen:
                p.grad = None
    live = [p for p in params if p.grad is not None]
    if reduce_sum is not None:
        for p in live:
            p.grad = reduce_sum(p.grad)
    max_norm = max_grad_norm if max_grad_norm is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(live, max_norm)) if live else 0.0
    stepped = math.isfinite(grad_norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped


def reduce_metrics(mb_metrics: dict[str, float], reduce_sum: ReduceFn, device) -> dict[str, float]:
    """A minibatch's metric partial sums, summed over data-parallel ranks (one collective, in a
    fixed key order so every rank's tensor lines up)."""
    keys = sorted(mb_metrics)
    vals = reduce_sum(torch.tensor([mb_metrics[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, vals.tolist(), strict=True))
