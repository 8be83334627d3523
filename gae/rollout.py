"""Batched, KV-cached, seeded generation of rollouts with everything PPO needs per token.

Shapes: B rows (prompts x samples), P prompt columns (left-padded), T response columns
(right-padded). Each prompt becomes `[BOS] + encode(prompt)`, left-truncated to leave room
for `max_new_tokens` in the model's context.

Which log-prob is stored: `RolloutBatch.logprobs` is the behaviour policy's log-prob of
each sampled token under the UNMODIFIED distribution (temperature 1, no top-k/top-p), i.e.
log softmax(logits)[token]. PPO's ratio pi_theta(a|s) / pi_old(a|s) compares the same model
family before and after an update; temperature and truncation are sampling devices, not part
of the policy being optimised, and the trainer scores with `score_responses` at temperature 1
(the same choice as verl and OpenRLHF, which recompute "old" log-probs with the actor). By
default (`recompute_logprobs=True`) the stored value comes from `score_responses` on the
finished sequences -- the very function the trainer calls, so ratios start at exactly 1 when
scored on the same rows; with `recompute_logprobs=False` it is the value read from the
KV-cached logits while sampling (equal up to float summation order; tested).

Randomness: every row has its own generator seeded from (seed, prompt_id, sample index).
A row's samples therefore do not depend on which other prompts share its batch, how much
padding they force, or `batch_size`; vary `seed` between iterations to get fresh samples.

Speed on a GPU (issue 14): `decode="auto"` runs the static-cache loop of `gae.decode` on CUDA,
its step replayed as a CUDA graph, and `batch_size="auto"` sizes the chunks from the free
device memory and the model's KV-cache size (`gae.decode.rollout_batch_size`).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gae.batch import RolloutBatch
from gae.decode import (
    cuda_free_bytes,
    decode_row_bytes,
    release_decoders,
    rollout_batch_size,
    static_decoder,
)
from gae.device import autocast, to_host
from gae.models.scoring import score_responses
from gae.sampling import (  # noqa: F401 (filter_probs, sample_tokens, left_pad: public here too)
    choose_tokens,
    filter_probs,
    left_pad,
    row_uniforms,
    sample_tokens,
    token_logprobs,
)


class RolloutConfig(BaseModel):
    """How rollouts are sampled."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(4, ge=1, description="Samples per prompt (one group id per prompt).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 = greedy.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 = off.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1 = off.")
    max_new_tokens: int = Field(64, ge=1, description="Response length limit (finish_reason 'length').")
    seed: int = Field(0, description="Base seed; row seeds derive from (seed, prompt_id, sample index).")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Rows generated (and scored) together. auto: on CUDA as many as "
        "memory_fraction of the free device memory holds (KV cache, sampling and forward-pass "
        "memory per row), up to max_batch_size; 64 elsewhere.",
    )
    max_batch_size: int = Field(1024, ge=1, description="Largest chunk batch_size=auto picks.")
    memory_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of the free device memory batch_size=auto may plan for."
    )
    decode: Literal["auto", "static", "dynamic"] = Field(
        "auto",
        description="Decode loop. static: preallocated KV cache, fixed shapes, the step captured as a "
        "CUDA graph on CUDA (gpt and most hf models); dynamic: the cache grows a column per step and "
        "finished rows are dropped (the reference loop; gru always); auto: static on CUDA.",
    )
    cuda_graph: bool = Field(
        True, description="Replay the static decode step as a CUDA graph (False: the same loop run eagerly)."
    )
    check_every: int = Field(
        8,
        ge=1,
        description="Static decode reads 'all rows finished?' back every this many steps (a row-level "
        "stop needs no read-back; a finished batch runs at most 2x this many steps more).",
    )
    recompute_logprobs: bool = Field(
        True,
        description="Store score_responses log-probs (ratio exactly 1) instead of the sampling-time ones.",
    )
    bf16: bool = Field(False, description="bf16 autocast on CUDA (ignored on CPU).")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _null_batch_size_is_auto(cls, v):
        # Configs saved while null also meant auto still load; the field itself is not
        # nullable, so the run form shows two choices (rows, auto) rather than three.
        return "auto" if v is None else v


# Fields that change how fast rollouts run, not which tokens they draw (per-row seeds): a rerun
# that changes only these is the same run.
EXECUTION_FIELDS = frozenset(
    {"batch_size", "max_batch_size", "memory_fraction", "decode", "cuda_graph", "check_every"}
)
CPU_BATCH_SIZE = 64


def resolve_batch_size(model, cfg: RolloutConfig, *, prompt_len: int, device: torch.device) -> int:
    """`cfg.batch_size` as a number: itself when set; with auto, on CUDA from the free memory and
    the per-row need (`gae.decode.decode_row_bytes`), elsewhere `CPU_BATCH_SIZE`."""
    if isinstance(cfg.batch_size, int):
        return cfg.batch_size
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    row = decode_row_bytes(
        kv_bytes_per_position=model.kv_bytes_per_position(),
        prompt_len=prompt_len,
        max_new_tokens=cfg.max_new_tokens,
        vocab_size=model.vocab_size,
        hidden_size=model.actor.hidden_size,
    )
    return rollout_batch_size(
        cuda_free_bytes(device), row, fraction=cfg.memory_fraction, max_rows=cfg.max_batch_size
    )


def row_seed(seed: int, key: str, sample: int) -> int:
    """A 63-bit seed from (seed, key, sample); stable across processes (unlike `hash`)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def resolve_decode(model, decode: str, device: torch.device) -> str:
    """ "static" or "dynamic" for a `RolloutConfig.decode` value: "auto" is static on CUDA for
    models that have a static cache (gpt, most hf), dynamic elsewhere; "static" on a model
    without one is refused with the reason."""
    if decode not in ("auto", "static", "dynamic"):
        raise ValueError(f"rollout decode={decode!r}; choose auto, static or dynamic")
    if decode == "dynamic":
        return "dynamic"
    reason = (
        model.static_decode_unsupported()
        if hasattr(model, "static_decode_unsupported")
        else "no static cache"
    )
    if decode == "static":
        if reason is not None:
            raise ValueError(f"rollout decode='static': {reason}")
        return "static"
    return "static" if device.type == "cuda" and reason is None else "dynamic"


@torch.no_grad()
def sample_batch(
    model,
    prompt_rows: list[list[int]],
    seeds: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int,
    pad_id: int,
    device: torch.device,
    bf16: bool = False,
    decode: str = "auto",
    cuda_graph: bool = True,
    check_every: int = 8,
) -> dict:
    """Generate for one chunk of rows with a KV cache. Returns prompt_tokens/prompt_mask (B, P),
    response_tokens/action_mask/logprobs (B, T) with T = the longest response, finish_reasons.

    `decode`: "dynamic" is the loop below (cache sliced to the filled length, finished rows
    compacted away); "static" is `gae.decode` (fixed shapes, the step a CUDA graph on CUDA
    unless `cuda_graph` is False, "all finished" read every `check_every` steps); "auto" picks
    static on CUDA. Both draw the same tokens from the same seeds.
    """
    device = torch.device(device)
    ids, mask = left_pad(prompt_rows, pad_id, device)
    uniforms = row_uniforms(seeds, max_new_tokens).to(device) if temperature != 0 else None
    if resolve_decode(model, decode, device) == "static":
        if check_every < 1:
            raise ValueError(f"rollout check_every must be >= 1, got {check_every}")
        dec = static_decoder(
            model,
            batch=len(prompt_rows),
            prompt_len=ids.shape[1],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            pad_id=pad_id,
            device=device,
            bf16=bf16,
            cuda_graph=cuda_graph,
        )
        out = dec.run(ids, mask, uniforms, check_every)
        return {
            "prompt_tokens": ids,
            "prompt_mask": mask,
            "response_tokens": out["tokens"],
            "action_mask": out["action_mask"],
            "logprobs": out["logprobs"],
            "finish_reasons": ["eos" if e else "length" for e in out["hit_eos"].tolist()],
        }
    return _sample_dynamic(
        model, ids, mask, uniforms, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, eos_id=eos_id, pad_id=pad_id, device=device, bf16=bf16,
    )  # fmt: skip


def _sample_dynamic(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    uniforms: torch.Tensor | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
) -> dict:
    """The reference loop: a cache grown a column per step; finished rows compacted away."""
    B, P = ids.shape
    cache = model.new_cache(B, P + max_new_tokens)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    alive_mask = torch.zeros((B, max_new_tokens), dtype=torch.bool, device=device)
    logprobs = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    hit_eos = torch.zeros(B, dtype=torch.bool, device=device)
    # `rows`: batch rows still in the decode batch; their cache, mask and logits are compacted
    # whenever half of them have finished, so finished sequences stop costing compute.
    rows = torch.arange(B, device=device)
    attn = mask
    with autocast(device, bf16=bf16):
        logits, cache = model.decode_step(ids, attn, cache, last_only=True)
    next_logits = logits[:, -1].float()  # (n, V) for the n rows in `rows`
    T = 0
    for t in range(max_new_tokens):
        u = uniforms[rows, t] if uniforms is not None else None
        tok = choose_tokens(next_logits, u, temperature, top_k, top_p)
        alive = ~hit_eos[rows]  # rows kept in the batch may have finished since the last compaction
        tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
        logp = token_logprobs(next_logits, tok)  # temperature 1
        tokens[rows, t] = tok
        alive_mask[rows, t] = alive
        logprobs[rows, t] = torch.where(alive, logp, torch.zeros_like(logp))
        T = t + 1
        hit_eos[rows] |= alive & (tok == eos_id)
        still = ~hit_eos[rows]
        n_alive = int(still.sum())
        if n_alive == 0 or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(len(rows), 1, dtype=torch.bool, device=device)], 1)
        if n_alive <= len(rows) // 2 and hasattr(cache, "select"):
            keep = still.nonzero().squeeze(1)
            cache.select(keep)
            rows, attn, tok = rows[keep], attn[keep], tok[keep]
        with autocast(device, bf16=bf16):
            logits, cache = model.decode_step(tok[:, None], attn, cache)
        next_logits = logits[:, -1].float()
    return {
        "prompt_tokens": ids,
        "prompt_mask": mask,
        "response_tokens": tokens[:, :T],
        "action_mask": alive_mask[:, :T],
        "logprobs": logprobs[:, :T],
        "finish_reasons": ["eos" if e else "length" for e in hit_eos.tolist()],
    }


def encode_prompts(tok, texts: list[str], *, max_prompt_tokens: int | None) -> tuple[list[list[int]], int]:
    """`[BOS] + encode(text)`, left-truncated to `max_prompt_tokens` (keeps the end, nearest the
    response). Returns the rows and how many were truncated."""
    rows, truncated = [], 0
    for ids in tok.encode_batch(texts):
        row = [tok.bos_id, *ids]
        if max_prompt_tokens is not None and len(row) > max_prompt_tokens:
            row = row[-max_prompt_tokens:]
            truncated += 1
        rows.append(row)
    return rows, truncated


def _max_prompt_tokens(model, max_new_tokens: int) -> int | None:
    block = model.block_size
    if block is None:
        return None
    if max_new_tokens >= block:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in block_size={block}")
    return block - max_new_tokens


def _pad_to(t: torch.Tensor, width: int, value, *, left: bool) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([fill, t] if left else [t, fill], 1)


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so a stage's wall time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampling_options(cfg: RolloutConfig, tok, device) -> dict:
    """`sample_batch`'s keyword arguments from a rollout config: one place for every caller
    (the sharded rollouts of `gae.distributed` must sample exactly as this module does)."""
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "device": device,
        "bf16": cfg.bf16,
        "decode": cfg.decode,
        "cuda_graph": cfg.cuda_graph,
        "check_every": cfg.check_every,
    }


def score_chunk(policy, ref, args: tuple, cfg: RolloutConfig, *, device, timing: dict):
    """The policy's and the reference's `score_responses` of one chunk, `args` = (prompt_tokens,
    prompt_mask) (B_c, P) and (response_tokens, action_mask) (B_c, T); adds the seconds to
    timing["values"] and timing["ref"]. Every rollout's scoring pass, local or sharded."""
    t0 = time.perf_counter()
    with autocast(device, bf16=cfg.bf16):
        out = score_responses(policy, *args)
    _sync(device)
    t1 = time.perf_counter()
    with autocast(device, bf16=cfg.bf16):
        ref_out = score_responses(ref, *args)
    _sync(device)
    # The policy's pass yields the stored log-probs and the critic's values together.
    timing["values"] += t1 - t0
    timing["ref"] += time.perf_counter() - t1
    return out, ref_out


def generate_rollouts(policy, ref, tok, prompts: list[dict], cfg: RolloutConfig, *, device) -> RolloutBatch:
    """Sample `cfg.n_samples` responses per prompt and score them with the policy and the reference.

    Args:
        policy: ActorCritic sampled from; also gives values V(s_t), last_values and (by default)
            the stored log-probs via `score_responses`.
        ref: frozen reference ActorCritic; gives `ref_logprobs` via `score_responses`.
        tok: a `gae.tokenizer.Tok` (BOS starts every prompt; EOS ends a response).
        prompts: dicts with "prompt_id", "prompt" and optionally "reference".
    Returns a RolloutBatch with B = len(prompts) * n_samples rows, ordered prompt-major
    (rows of one prompt are adjacent; group_ids = the prompt's index in `prompts`).
    """
    if not prompts:
        raise ValueError("generate_rollouts: no prompts given")
    for i, p in enumerate(prompts):
        if "prompt_id" not in p or "prompt" not in p:
            raise ValueError(
                f"generate_rollouts: prompts[{i}] lacks 'prompt_id' or 'prompt' (keys: {sorted(p)})"
            )
    device = torch.device(device)
    started = time.perf_counter()
    was_training = (policy.training, ref.training)
    policy.eval()
    ref.eval()
    rows, truncated = encode_prompts(
        tok, [p["prompt"] for p in prompts], max_prompt_tokens=_max_prompt_tokens(policy, cfg.max_new_tokens)
    )
    row_prompt = [i for i in range(len(prompts)) for _ in range(cfg.n_samples)]
    row_sample = [j for _ in range(len(prompts)) for j in range(cfg.n_samples)]
    seeds = [
        row_seed(cfg.seed, str(prompts[i]["prompt_id"]), j)
        for i, j in zip(row_prompt, row_sample, strict=True)
    ]
    batch_size = resolve_batch_size(policy, cfg, prompt_len=max(len(r) for r in rows), device=device)
    chunks = []
    for s in range(0, len(row_prompt), batch_size):
        idx = range(s, min(s + batch_size, len(row_prompt)))
        chunks.append(
            sample_batch(
                policy,
                [rows[row_prompt[r]] for r in idx],
                [seeds[r] for r in idx],
                **sampling_options(cfg, tok, device),
            )
        )
    P = max(c["prompt_tokens"].shape[1] for c in chunks)
    T = max(c["response_tokens"].shape[1] for c in chunks)
    cat = {
        "prompt_tokens": torch.cat([_pad_to(c["prompt_tokens"], P, tok.pad_id, left=True) for c in chunks]),
        "prompt_mask": torch.cat([_pad_to(c["prompt_mask"], P, False, left=True) for c in chunks]),
        "response_tokens": torch.cat(
            [_pad_to(c["response_tokens"], T, tok.pad_id, left=False) for c in chunks]
        ),
        "action_mask": torch.cat([_pad_to(c["action_mask"], T, False, left=False) for c in chunks]),
        "logprobs": torch.cat([_pad_to(c["logprobs"], T, 0.0, left=False) for c in chunks]),
    }
    finish = [f for c in chunks for f in c["finish_reasons"]]
    # The response tokens go to the host once, to decode the text after the scoring passes; the
    # batch keeps these copies for its save (the store's copy), so they are not copied again.
    tokens_home = to_host({"response_tokens": cat["response_tokens"], "action_mask": cat["action_mask"]})
    _sync(device)
    timing = {"gen": time.perf_counter() - started, "values": 0.0, "ref": 0.0}
    logprobs, values, last_values, ref_logprobs = [], [], [], []
    with torch.no_grad():
        for s in range(0, len(row_prompt), batch_size):
            sl = slice(s, s + batch_size)
            args = (
                cat["prompt_tokens"][sl],
                cat["prompt_mask"][sl],
                cat["response_tokens"][sl],
                cat["action_mask"][sl],
            )
            out, ref_out = score_chunk(policy, ref, args, cfg, device=device, timing=timing)
            logprobs.append(out.logprobs.float())
            values.append(out.values.float())
            last_values.append(out.last_values.float())
            ref_logprobs.append(ref_out.logprobs.float())
    # The decode graphs and their static caches served this call's chunks; the PPO update that
    # follows gets their memory back (the next call captures again: two eager steps and a record).
    release_decoders(policy)
    policy.train(was_training[0])
    ref.train(was_training[1])
    host = tokens_home.wait()
    response_lists = _response_ids(host["response_tokens"], host["action_mask"], tok.eos_id)
    n_tokens = int(host["action_mask"].sum())
    seconds = time.perf_counter() - started
    return RolloutBatch(
        rollout_ids=[f"{prompts[i]['prompt_id']}/{j}" for i, j in zip(row_prompt, row_sample, strict=True)],
        prompt_ids=[str(prompts[i]["prompt_id"]) for i in row_prompt],
        group_ids=torch.tensor(row_prompt, dtype=torch.long, device=device),
        prompt_tokens=cat["prompt_tokens"],
        prompt_mask=cat["prompt_mask"],
        response_tokens=cat["response_tokens"],
        action_mask=cat["action_mask"],
        logprobs=torch.cat(logprobs) if cfg.recompute_logprobs else cat["logprobs"],
        ref_logprobs=torch.cat(ref_logprobs),
        values=torch.cat(values),
        last_values=torch.cat(last_values),
        prompts=[prompts[i]["prompt"] for i in row_prompt],
        responses=[tok.decode(r) for r in response_lists],
        references=[prompts[i].get("reference") for i in row_prompt],
        finish_reasons=finish,
        meta={
            "sampling": cfg.model_dump(),
            "n_prompts": len(prompts),
            "truncated_prompts": truncated,
            "generated_tokens": n_tokens,
            "seconds": round(seconds, 4),
            "timing_s": {k: round(v, 4) for k, v in timing.items()},
            "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
            "batch_size": batch_size,
            "decode": resolve_decode(policy, cfg.decode, device),
            "logprobs_source": "score_responses" if cfg.recompute_logprobs else "sampling",
        },
        host_copies=host,
    )


def _response_ids(tokens: torch.Tensor, mask: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Token ids of each response on the host, without padding and EOS (what gets decoded)."""
    return [
        [t for t, m in zip(r, mk, strict=True) if m and t != eos_id]
        for r, mk in zip(tokens.tolist(), mask.tolist(), strict=True)
    ]


@dataclass
class Generation:
    """Per-row results of `generate`, all lists of length B (rows in the order of the prompts).

    `response_lengths` count the tokens on the action mask (EOS included), as
    `RolloutBatch.response_length` does; `finish_reasons` are 'eos' or 'length', as in
    `RolloutBatch.finish_reasons`. Rewards read both, so evaluation must pass these, not a
    re-encoding of the decoded text (which drops EOS and may tokenise differently)."""

    texts: list[str]
    response_lengths: list[int]
    finish_reasons: list[str]


def generate(
    model,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    seed_keys: list[tuple[str, int]] | None = None,
    device=None,
) -> Generation:
    """Continue each prompt: the generated text (EOS and padding removed), its length in
    generated tokens and its finish reason.

    Row i draws from `row_seed(seed, *seed_keys[i])`; pass (prompt_id, sample index) to get
    exactly the samples `generate_rollouts` draws with the same seed and sampling settings.
    Default keys: (str(i), 0)."""
    if not prompts:
        return Generation([], [], [])
    if seed_keys is not None and len(seed_keys) != len(prompts):
        raise ValueError(f"generate: {len(seed_keys)} seed_keys for {len(prompts)} prompts")
    keys = seed_keys if seed_keys is not None else [(str(i), 0) for i in range(len(prompts))]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    seed = random.randrange(1 << 62) if seed is None else seed
    was_training = model.training
    model.eval()
    rows, _ = encode_prompts(tok, prompts, max_prompt_tokens=_max_prompt_tokens(model, max_new_tokens))
    out = sample_batch(
        model,
        rows,
        [row_seed(seed, str(k), j) for k, j in keys],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        device=device,
    )
    release_decoders(model)
    model.train(was_training)
    host = to_host({"eval_response_tokens": out["response_tokens"], "eval_action_mask": out["action_mask"]})
    host = host.wait()
    ids = _response_ids(host["eval_response_tokens"], host["eval_action_mask"], tok.eos_id)
    return Generation(
        texts=[tok.decode(r) for r in ids],
        response_lengths=[int(n) for n in host["eval_action_mask"].sum(1).tolist()],
        finish_reasons=list(out["finish_reasons"]),
    )


def generate_text(
    model,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    device=None,
) -> list[str]:
    """Continue each prompt; returns the generated text only (EOS and padding removed)."""
    return generate(
        model,
        tok,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        device=device,
    ).texts
