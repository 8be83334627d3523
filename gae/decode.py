"""Static-cache decoding: every shape fixed, one decode step capturable as a CUDA graph.

The dynamic loop (`gae.rollout.sample_batch` with `decode="dynamic"`) grows its attention
mask by a column per step, slices the cache to the filled length and compacts finished rows
out of the batch: the shapes change every step, so each step is one Python pass launching a
few hundred small kernels, and a 0.5B model decodes at the pace of the launches, not of the
GPU (issue 14: ~40 ms per step at batch 64 on an H200, where reading the weights takes
~0.25 ms). Here instead, for R = `batch_bucket(B)` rows and a cache of S = `cache_bucket(...)`
columns:

    prefill (eager):  cache[:, :, 0:P] <- K/V of the left-padded prompts;  pick token 0
    step t (graph):   key_mask[:, P + t - 1] = True
                      logits = model(tok, pos, key_mask, cache)           # writes column P + t - 1
                      tok = choose(logits, u[:, t]); record tok, alive, log-prob at column t
                      pos += 1; t += 1; hit_eos |= alive & (tok == eos)

Everything a step reads or writes lives in preallocated buffers (the step counter and the
cache column included, as device tensors), so on CUDA the step is captured once with
`torch.cuda.CUDAGraph` and replayed: one launch per token instead of hundreds. The sampling
(`gae.sampling`: temperature, top-k, top-p, the per-row seeded uniforms) is inside the graph.
Finished rows keep running (they emit padding), and "have all rows finished?" is read back
every `check_every` steps from a copy queued `check_every` steps earlier, so the host never
waits on the step it just queued. Extra rows up to the bucket are padding rows, finished from
the start. Graphs are kept per (model weights, R, S, new tokens, sampling settings) and reused
by later calls: a rollout's chunks share one. `gae.rollout.generate_rollouts` and `generate`
release them when they return, so the PPO update gets their memory back.

The tokens and log-probs equal the dynamic loop's for the same seeds up to float summation
order (tests/test_decode.py compares them on CPU, where the same static loop runs without a
graph; tests/test_cuda_decode.py with the graph on CUDA).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections import OrderedDict

import torch

from gae.sampling import choose_tokens, token_logprobs

# Steps run eagerly before capture: the first calls initialise cuBLAS workspaces and kernels'
# lazy state, which must not happen inside a capture (PyTorch's CUDA-graph notes).
WARMUP_STEPS = 2
# Graphs (each with its static cache) kept per model; the oldest goes first.
MAX_DECODERS_PER_MODEL = 4

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_bucket(n: int) -> int:
    """Rows a decode graph is built for: n rounded up to a power of two up to 16, then to a
    multiple of 16 (at most 15 padding rows), so chunks of nearby sizes reuse one graph."""
    if n < 1:
        raise ValueError(f"batch_bucket: need at least one row, got {n}")
    if n <= 16:
        return 1 << (n - 1).bit_length()
    return -(-n // 16) * 16


def cache_bucket(n: int, limit: int | None) -> int:
    """Cache columns for n positions: rounded up to a multiple of 64 (prompts of different
    lengths share a graph), but not past the model's `limit` (its block size)."""
    rounded = -(-n // 64) * 64
    return rounded if limit is None else max(n, min(rounded, int(limit)))


def _fingerprint(model) -> tuple:
    """Addresses and dtypes of the weights a captured graph reads: a model moved or reloaded into
    new storage gets a new graph (updates in place, such as optimizer steps, keep it valid)."""
    return tuple((t.data_ptr(), t.dtype) for t in (*model.parameters(), *model.buffers()))


class StaticDecoder:
    """Static buffers, a static cache and (on CUDA) the captured step for one decode shape."""

    def __init__(
        self,
        model,
        *,
        rows: int,
        max_len: int,
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        eos_id: int,
        pad_id: int,
        device: torch.device,
        bf16: bool,
        cuda_graph: bool,
    ):
        self._model = weakref.ref(model)
        self.rows, self.max_len, self.max_new_tokens = rows, max_len, max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.eos_id, self.pad_id = eos_id, pad_id
        self.device = device
        self.bf16 = bf16 and device.type == "cuda"
        self.use_graph = cuda_graph and device.type == "cuda"
        R, T, S = rows, max_new_tokens, max_len
        z = dict(device=device)
        self.cache = model.new_static_cache(R, S)
        self.key_mask = torch.zeros(R, S, dtype=torch.bool, **z)  # cache columns holding real tokens
        self.cur = torch.full((R, 1), pad_id, dtype=torch.long, **z)  # token to feed next
        self.pos = torch.zeros(R, 1, dtype=torch.long, **z)  # its position id
        self.col = torch.zeros(1, dtype=torch.long, **z)  # its cache column
        self.step = torch.zeros(1, dtype=torch.long, **z)  # response column being sampled
        self.uniforms = torch.zeros(R, T, dtype=torch.float64, **z)
        self.tokens = torch.full((R, T), pad_id, dtype=torch.long, **z)
        self.alive = torch.zeros(R, T, dtype=torch.bool, **z)
        self.logprobs = torch.zeros(R, T, dtype=torch.float32, **z)
        self.hit_eos = torch.zeros(R, dtype=torch.bool, **z)
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.use_graph:
            self._flag = torch.zeros(1, dtype=torch.bool, pin_memory=True)
            self._flag_event = torch.cuda.Event()

    # ------------------------------------------------------------------ the step

    def _autocast(self):
        # The autocast cache must be off around a capture: cached bf16 weight copies would be
        # freed when the context exits while the graph still reads them (torch.cuda.graphs notes).
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _pick(self, logits: torch.Tensor) -> None:
        """Sample column `step` from (R, V) float logits and record it; advance the counters."""
        u = self.uniforms.index_select(1, self.step).squeeze(1) if self.temperature != 0 else None
        tok = choose_tokens(logits, u, self.temperature, self.top_k, self.top_p)  # (R,)
        alive = ~self.hit_eos
        tok = torch.where(alive, tok, torch.full_like(tok, self.pad_id))
        logp = token_logprobs(logits, tok)  # temperature 1
        self.tokens.index_copy_(1, self.step, tok[:, None])
        self.alive.index_copy_(1, self.step, alive[:, None])
        self.logprobs.index_copy_(1, self.step, torch.where(alive, logp, torch.zeros_like(logp))[:, None])
        self.hit_eos |= alive & (tok == self.eos_id)
        self.cur.copy_(tok[:, None])
        self.step += 1

    def _decode(self) -> None:
        """One decode step: feed `cur` at column `col`, then sample. Reads no host value."""
        model = self._model()
        self.key_mask.index_fill_(1, self.col, True)
        with self._autocast():
            logits = model.static_step(self.cur, self.pos, self.key_mask[:, None, None, :], self.cache)
        self.pos += 1
        self.col += 1
        self._pick(logits.float())

    def _advance(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._decode()

    def _capture(self) -> None:
        """Record one `_decode` as a graph. Recording runs nothing, so the buffers are where the
        warm-up steps left them. A step that cannot be captured (a model whose forward reads a
        value back to the host) leaves this decoder eager, with a warning naming the error."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._decode()
        except RuntimeError as e:
            self.use_graph = False
            warnings.warn(
                f"static decode: the step could not be captured as a CUDA graph, decoding eagerly "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.graph = graph

    # ------------------------------------------------------------------ one call

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, uniforms: torch.Tensor | None) -> None:
        B, P = ids.shape
        R, S = self.rows, self.max_len
        model = self._model()
        self.cache.reset()
        full_ids = torch.full((R, P), self.pad_id, dtype=torch.long, device=self.device)
        full_ids[:B] = ids
        self.key_mask.zero_()
        self.key_mask[:B, :P] = mask
        pos = (self.key_mask[:, :P].long().cumsum(1) - 1).clamp(min=0)  # (R, P)
        q = torch.arange(P, device=self.device)[:, None]  # (P, 1)
        k = torch.arange(S, device=self.device)[None, :]  # (1, S)
        # query q sees real key columns k <= q, and itself (a padding query never has an empty row)
        attn = ((k <= q)[None] & self.key_mask[:, None, :]) | (k == q)[None]  # (R, P, S)
        with self._autocast():
            logits = model.static_step(full_ids, pos, attn[:, None], self.cache)  # (R, V)
        self.pos.copy_(self.key_mask.sum(1, keepdim=True))  # next position = real tokens so far
        self.col.fill_(P)
        self.step.zero_()
        self.uniforms.zero_()
        if uniforms is not None:
            self.uniforms[:B] = uniforms
        self.tokens.fill_(self.pad_id)
        self.alive.zero_()
        self.logprobs.zero_()
        self.hit_eos.zero_()
        self.hit_eos[B:] = True  # padding rows: finished before they start
        self._pick(logits.float())

    def _all_finished(self, pending: bool) -> bool:
        """On CUDA: the flag copied at the previous check (waiting only for that step), then queue
        a copy of the current one. On CPU: the current flag."""
        if not self.use_graph:
            return bool(self.hit_eos.all())
        done = False
        if pending:
            self._flag_event.synchronize()
            done = bool(self._flag[0])
        if not done:
            self._flag.copy_(self.hit_eos.all().view(1), non_blocking=True)
            self._flag_event.record()
        return done

    @torch.no_grad()
    def run(
        self, ids: torch.Tensor, mask: torch.Tensor, uniforms: torch.Tensor | None, check_every: int
    ) -> dict:
        """Decode B <= rows prompts: ids, mask (B, P) left-padded; uniforms (B, max_new_tokens)
        float64 or None (greedy). Returns tokens, action_mask, logprobs (B, T) and hit_eos (B,),
        T = the longest response."""
        B, P = ids.shape
        if self.rows < B or P + self.max_new_tokens > self.max_len:
            raise ValueError(
                f"StaticDecoder: {B} rows x {P} + {self.max_new_tokens} positions do not fit its "
                f"{self.rows} rows x {self.max_len} columns"
            )
        self._prefill(ids, mask, uniforms)
        t, pending = 1, False
        while t < self.max_new_tokens:
            if self.use_graph and self.graph is None and self.max_new_tokens - t > WARMUP_STEPS:
                # Warm-up steps are real steps, run eagerly on a side stream, then the capture.
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        self._decode()
                torch.cuda.current_stream(self.device).wait_stream(side)
                t += WARMUP_STEPS
                self._capture()
                continue
            self._advance()
            t += 1
            if t % check_every == 0:
                if self._all_finished(pending):
                    break
                pending = True
        n = int(self.alive[:B].sum(1).max()) if B else 0
        T = max(1, n)
        return {
            "tokens": self.tokens[:B, :T].clone(),
            "action_mask": self.alive[:B, :T].clone(),
            "logprobs": self.logprobs[:B, :T].clone(),
            "hit_eos": self.hit_eos[:B].clone(),
        }


def static_decoder(
    model,
    *,
    batch: int,
    prompt_len: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    cuda_graph: bool,
) -> StaticDecoder:
    """The decoder for this shape and these settings: reused when one was built before for the
    same weights (at most `MAX_DECODERS_PER_MODEL` per model, least recently used dropped)."""
    reason = model.static_decode_unsupported()
    if reason is not None:
        raise ValueError(f"rollout decode='static': {reason}")
    rows = batch_bucket(batch)
    need = prompt_len + max_new_tokens
    limit = model.block_size
    if limit is not None and need > limit:
        raise ValueError(f"generation needs {need} positions but the model supports {limit}")
    max_len = cache_bucket(need, limit)
    key = (
        _fingerprint(model),
        rows,
        max_len,
        max_new_tokens,
        float(temperature),
        int(top_k),
        float(top_p),
        int(eos_id),
        int(pad_id),
        str(device),
        bool(bf16),
        bool(cuda_graph),
    )
    kept = _DECODERS.setdefault(model, OrderedDict())
    dec = kept.get(key)
    if dec is None:
        dec = StaticDecoder(
            model,
            rows=rows,
            max_len=max_len,
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
        kept[key] = dec
        while len(kept) > MAX_DECODERS_PER_MODEL:
            kept.popitem(last=False)
    kept.move_to_end(key)
    return dec


def release_decoders(model) -> int:
    """Drop the graphs and static caches kept for `model` (e.g. before a memory-hungry stage);
    returns how many there were."""
    kept = _DECODERS.pop(model, None)
    return len(kept) if kept else 0


# ---------------------------------------------------------------------- batch sizing


def decode_row_bytes(
    *,
    kv_bytes_per_position: int,
    prompt_len: int,
    max_new_tokens: int,
    vocab_size: int,
    hidden_size: int,
) -> int:
    """Device bytes one rollout row needs, by the largest terms:

    - its decode cache: kv_bytes_per_position x (prompt + new tokens);
    - the sampling step: float32 logits and about six float64 (V,) temporaries of
      `gae.sampling.filter_probs` (probabilities, sorted copy and indices, cumulative sums);
    - a forward pass over the whole sequence (prefill, and the scoring passes that follow with
      the same rows): about 16 float32 activations of width H per token alive in one layer.
    """
    seq = prompt_len + max_new_tokens
    kv = kv_bytes_per_position * seq
    sampling = vocab_size * (2 * 4 + 6 * 8)
    activations = seq * hidden_size * 16 * 4
    return int(kv + sampling + activations)


def rollout_batch_size(free_bytes: int, row_bytes: int, *, fraction: float, max_rows: int) -> int:
    """Rows per rollout chunk: as many as `fraction` of `free_bytes` holds at `row_bytes` each,
    at most `max_rows` and at least 1, rounded down to a `batch_bucket` size (a power of two up
    to 16, then a multiple of 16) so the chunk fills its decode graph exactly."""
    if row_bytes <= 0:
        raise ValueError(f"rollout_batch_size: row_bytes must be positive, got {row_bytes}")
    if not 0 < fraction <= 1:
        raise ValueError(f"rollout_batch_size: fraction must be in (0, 1], got {fraction}")
    rows = int(max(free_bytes, 0) * fraction) // int(row_bytes)
    rows = max(1, min(rows, int(max_rows)))
    if rows >= 16:
        return rows // 16 * 16
    return 1 << (rows.bit_length() - 1)


def cuda_free_bytes(device: torch.device) -> int:
    """Memory a rollout can take on `device`: the driver's free memory plus what PyTorch's caching
    allocator holds reserved but unused (it hands that out again without asking the driver)."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))
