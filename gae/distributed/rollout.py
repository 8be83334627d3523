"""Sharded rollouts that reproduce `gae.rollout.generate_rollouts` bit for bit.

`generate_rollouts` samples rows in chunks of `batch_size` (each chunk left-padded to its own
longest prompt, P_c columns), then pads every chunk to the batch's widths (P = max P_c, T =
the longest response) and scores the same `batch_size` slices with the policy and the
reference. A row's numbers depend on more than its seed: a chunk without prompt padding
takes SDPA's causal fast path, a padded one the masked kernel, and the two differ in the
last float bit. So shards are made of whole chunks, and scoring waits for the widths:

    driver:  rows = prompts x samples (prompt-major), seeds = row_seed(seed, prompt_id, j)
             chunks = rows in runs of batch_size; shard k gets a contiguous run of chunks
    phase 1: worker k samples its chunks exactly as generate_rollouts does  -> (P_c, T_c)
    driver:  P = max P_c, T = max T_c
    phase 2: worker k pads its chunks to (P, T) and scores them             -> log-probs, values
    driver:  concatenates in chunk order: the batch generate_rollouts returns (tested with
             torch.equal on every tensor)

With fewer chunks than workers some workers sample nothing: set `rollout.batch_size` to at
most rows / workers to use them all (the same setting gives the same numbers locally).
"""

from __future__ import annotations

import time

import torch

from gae.batch import RolloutBatch
from gae.rollout import (
    RolloutConfig,
    _max_prompt_tokens,
    _pad_to,
    _response_ids,
    encode_prompts,
    resolve_batch_size,
    resolve_decode,
    row_seed,
    sample_batch,
    sampling_options,
    score_chunk,
)

# (B, P) prompt fields are left-padded, (B, T) response fields right-padded, as generate_rollouts pads.
PROMPT_FIELDS = {"prompt_tokens": "pad", "prompt_mask": False}
RESPONSE_FIELDS = {"response_tokens": "pad", "action_mask": False, "logprobs": 0.0}


def plan_rows(prompts: list[dict], cfg: RolloutConfig) -> list[tuple[int, int, int]]:
    """(prompt index, sample index, seed) of every row, prompt-major: generate_rollouts' order."""
    return [
        (i, j, row_seed(cfg.seed, str(p["prompt_id"]), j))
        for i, p in enumerate(prompts)
        for j in range(cfg.n_samples)
    ]


def split_chunks(n_rows: int, batch_size: int, n_shards: int) -> list[list[range]]:
    """Row ranges of the `batch_size` chunks, dealt to `n_shards` shards as contiguous runs;
    the first shards get one chunk more when they do not divide evenly (shard 0 is never
    empty, so the store's part-0 always exists)."""
    chunks = [range(s, min(s + batch_size, n_rows)) for s in range(0, n_rows, batch_size)]
    return [chunks[r.start : r.stop] for r in split_rows(len(chunks), n_shards)]


def split_rows(n_rows: int, n_shards: int) -> list[range]:
    """Contiguous row ranges of near-equal size (the first ones one row longer), shard 0 first:
    how rewards and the store's parts are dealt. Empty ranges when rows < shards."""
    base, extra = divmod(n_rows, n_shards)
    out, start = [], 0
    for k in range(n_shards):
        stop = start + base + (1 if k < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def sample_chunks(
    policy, tok, prompts: list[dict], chunks: list[list[tuple[int, int]]], cfg: RolloutConfig, *, device
):
    """Phase 1 on a worker: sample each chunk as generate_rollouts does.

    prompts: the texts the chunks refer to, {"prompt": str}; chunks: per chunk its rows as
    (index into `prompts`, seed). Returns (chunks as dicts of host tensors and decoded
    responses, indices of truncated prompts, seconds, the decode loop used)."""
    t0 = time.perf_counter()
    device = torch.device(device)
    was_training = policy.training
    policy.eval()
    limit = _max_prompt_tokens(policy, cfg.max_new_tokens)
    rows, _ = encode_prompts(tok, [p["prompt"] for p in prompts], max_prompt_tokens=limit)
    truncated = [
        i for i, p in enumerate(prompts) if limit is not None and len(tok.encode(p["prompt"])) + 1 > limit
    ]
    out = []
    for chunk in chunks:
        c = sample_batch(
            policy, [rows[i] for i, _ in chunk], [s for _, s in chunk], **sampling_options(cfg, tok, device)
        )
        host = {k: v.cpu() for k, v in c.items() if isinstance(v, torch.Tensor)}
        ids = _response_ids(host["response_tokens"], host["action_mask"], tok.eos_id)
        out.append({**host, "finish_reasons": c["finish_reasons"], "responses": [tok.decode(r) for r in ids]})
    policy.train(was_training)
    return out, truncated, time.perf_counter() - t0, resolve_decode(policy, cfg.decode, device)


def chunk_rows(policy, tok, prompts: list[dict], cfg: RolloutConfig, *, device) -> int:
    """The chunk size generate_rollouts would use on this device (`rollout.batch_size`, or what
    `auto` resolves to from the device's free memory and the prompts' length)."""
    device = torch.device(device)
    if isinstance(cfg.batch_size, int) or device.type != "cuda":
        return resolve_batch_size(policy, cfg, prompt_len=0, device=device)
    limit = _max_prompt_tokens(policy, cfg.max_new_tokens)
    rows, _ = encode_prompts(tok, [p["prompt"] for p in prompts], max_prompt_tokens=limit)
    return resolve_batch_size(policy, cfg, prompt_len=max(len(r) for r in rows), device=device)


def pad_chunk(chunk: dict, P: int, T: int, pad_id: int) -> dict:
    """A sampled chunk padded to the batch's widths, exactly as generate_rollouts pads (B_c, P) and (B_c, T)."""
    out = {}
    for fields, width, left in ((PROMPT_FIELDS, P, True), (RESPONSE_FIELDS, T, False)):
        for name, fill in fields.items():
            out[name] = _pad_to(chunk[name], width, pad_id if fill == "pad" else fill, left=left)
    return out


@torch.no_grad()
def score_chunks(policy, ref, chunks: list[dict], cfg: RolloutConfig, *, device) -> tuple[list[dict], dict]:
    """Phase 2 on a worker: the policy's log-probs, values and last values and the reference's
    log-probs of padded chunks, with generate_rollouts' calls. Returns (per chunk, timing)."""
    device = torch.device(device)
    was_training = (policy.training, ref.training)
    policy.eval()
    ref.eval()
    timing = {"values": 0.0, "ref": 0.0}
    out = []
    for c in chunks:
        args = tuple(
            c[k].to(device) for k in ("prompt_tokens", "prompt_mask", "response_tokens", "action_mask")
        )
        pol, rf = score_chunk(policy, ref, args, cfg, device=device, timing=timing)
        out.append(
            {
                "scored_logprobs": pol.logprobs.float().cpu(),
                "values": pol.values.float().cpu(),
                "last_values": pol.last_values.float().cpu(),
                "ref_logprobs": rf.logprobs.float().cpu(),
            }
        )
    policy.train(was_training[0])
    ref.train(was_training[1])
    return out, timing


def widths(chunks: list[dict]) -> tuple[int, int]:
    """(P, T) of sampled chunks: the widest prompt and the longest response."""
    return (
        max(c["prompt_tokens"].shape[1] for c in chunks),
        max(c["response_tokens"].shape[1] for c in chunks),
    )


def assemble_batch(
    prompts: list[dict],
    cfg: RolloutConfig,
    sampled: list[dict],
    scored: list[dict],
    *,
    pad_id: int,
    truncated: int,
    seconds: float,
    timing: dict,
    batch_size: int,
    decode: str,
) -> RolloutBatch:
    """The driver's merge: chunks in order (each padded to the batch's widths) into the
    RolloutBatch generate_rollouts builds, ids, groups and metadata included."""
    P, T = widths(sampled)
    padded = [pad_chunk(c, P, T, pad_id) for c in sampled]
    cat = {k: torch.cat([c[k] for c in padded]) for k in padded[0]}
    scores = {k: torch.cat([s[k] for s in scored]) for k in scored[0]}
    plan = plan_rows(prompts, cfg)
    n_tokens = int(cat["action_mask"].sum())
    return RolloutBatch(
        rollout_ids=[f"{prompts[i]['prompt_id']}/{j}" for i, j, _ in plan],
        prompt_ids=[str(prompts[i]["prompt_id"]) for i, _, _ in plan],
        group_ids=torch.tensor([i for i, _, _ in plan], dtype=torch.long),
        prompt_tokens=cat["prompt_tokens"],
        prompt_mask=cat["prompt_mask"],
        response_tokens=cat["response_tokens"],
        action_mask=cat["action_mask"],
        logprobs=scores["scored_logprobs"] if cfg.recompute_logprobs else cat["logprobs"],
        ref_logprobs=scores["ref_logprobs"],
        values=scores["values"],
        last_values=scores["last_values"],
        prompts=[prompts[i]["prompt"] for i, _, _ in plan],
        responses=[r for c in sampled for r in c["responses"]],
        references=[prompts[i].get("reference") for i, _, _ in plan],
        finish_reasons=[f for c in sampled for f in c["finish_reasons"]],
        meta={
            "sampling": cfg.model_dump(),
            "n_prompts": len(prompts),
            "truncated_prompts": truncated,
            "generated_tokens": n_tokens,
            "seconds": round(seconds, 4),
            "timing_s": {k: round(v, 4) for k, v in timing.items()},
            "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
            "batch_size": batch_size,
            "decode": decode,
            "logprobs_source": "score_responses" if cfg.recompute_logprobs else "sampling",
        },
    )
