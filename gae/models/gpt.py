"""A compact GPT decoder (nanoGPT-style) with a KV cache and left-padding-aware positions.

Pre-LayerNorm blocks, GELU MLP, learned positions, `F.scaled_dot_product_attention`, and
the output projection tied to the token embedding (Press & Wolf 2017). Two additions over
nanoGPT, both needed by batched RL rollouts:

- position ids come from the attention mask (`cumsum(mask) - 1`), so a left-padded prompt
  sees positions 0..n-1 exactly as it would unpadded;
- `KVCache` holds keys/values preallocated for the whole generation, so a decode step
  attends over the cache instead of recomputing the prefix.

`StaticKVCache` + `forward_static` are the same model with every shape fixed: keys and values
are written at a column held in a device tensor and each step attends over the whole buffer
under a mask, so one decode step can be captured as a CUDA graph and replayed (`gae.decode`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gae.models.config import ModelConfig, check_step_shapes


class KVCache:
    """Keys and values of every layer, preallocated to `max_len` positions: (B, nh, max_len, hs) each."""

    def __init__(
        self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int, device, dtype
    ):
        shape = (batch_size, n_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled so far (same for every row: padding is part of the cache)
        self.max_len = max_len

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (drop finished sequences so later steps skip them)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


class StaticKVCache:
    """Keys and values of every layer, (B, nh, max_len, hs) each, written at `position`, a 0-d
    long tensor on the device (the next free column), so no step reads a Python counter."""

    def __init__(
        self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int, device, dtype
    ):
        shape = (batch_size, n_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.write_index: torch.Tensor | None = None  # (L,) columns of the forward in progress
        self.max_len = max_len

    def reset(self) -> None:
        """Start over at column 0 (in place: a captured graph keeps these addresses)."""
        self.position.zero_()


def position_ids_from_mask(attention_mask: torch.Tensor, L: int) -> torch.Tensor:
    """(B, S) bool mask -> (B, L) positions of its last L columns; pads get 0 (their output is unused)."""
    pos = attention_mask.long().cumsum(1) - 1
    return pos[:, -L:].clamp(min=0)


def attention_bias(attention_mask: torch.Tensor, L: int, causal_start: int) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, L, S): query i (at absolute position causal_start + i) sees key j
    when j is a real token and j <= causal_start + i. Every query also sees itself, so a pad
    query never has an empty row (softmax of all -inf is NaN); real queries never see pads.
    Returns None when plain causal attention is exact (no padding, no cache offset).
    """
    B, S = attention_mask.shape
    if bool(attention_mask.all()) and (L == 1 or (causal_start == 0 and L == S)):
        return None  # one query over a full cache, or a plain causal square: SDPA's fast paths
    dev = attention_mask.device
    q_pos = torch.arange(L, device=dev)[:, None] + causal_start  # (L, 1)
    k_pos = torch.arange(S, device=dev)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (L, S)
    mask = causal[None] & attention_mask[:, None, :].bool()  # (B, L, S)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]  # (B, 1, L, S)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"ModelConfig.n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, bias, cache: KVCache | None, layer: int):
        B, L, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (
            t.view(B, L, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, L, hs)
        if isinstance(cache, StaticKVCache):
            # the cache keeps the weights' dtype, as KVCache does (bf16 autocast makes k, v bf16)
            cache.k[layer].index_copy_(2, cache.write_index, k.to(cache.k[layer].dtype))
            cache.v[layer].index_copy_(2, cache.write_index, v.to(cache.v[layer].dtype))
            k, v = cache.k[layer], cache.v[layer]  # (B, nh, max_len, hs): unwritten columns are masked
        elif cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + L] = k
            cache.v[layer][:, :, start : start + L] = v
            k = cache.k[layer][:, :, : start + L]  # (B, nh, S, hs)
            v = cache.v[layer][:, :, : start + L]
        drop = self.dropout if self.training else 0.0
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=L > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, L, C)  # (B, L, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, bias, cache, layer):
        x = x + self.attn(self.ln_1(x), bias, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Backbone interface shared by every arch (see `gae.models.actor_critic`):
    `forward(input_ids (B, L), attention_mask (B, S), cache) -> (hidden (B, L, H), cache)` where
    S = cached positions + L, `logits(hidden) -> (B, L, V)`, `new_cache(B, max_len)`.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = cfg.n_embd
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        if max_len > self.block_size:
            raise ValueError(
                f"generation needs {max_len} positions but ModelConfig.block_size={self.block_size}"
            )
        p = self.wte.weight
        hs = self.cfg.n_embd // self.cfg.n_head
        return KVCache(self.cfg.n_layer, batch_size, self.cfg.n_head, max_len, hs, p.device, p.dtype)

    def kv_bytes_per_position(self) -> int:
        """Bytes one row's cache holds per position (keys and values of every layer)."""
        p = self.wte.weight
        return 2 * self.cfg.n_layer * self.cfg.n_embd * p.element_size()

    def new_static_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        p = self.wte.weight
        hs = self.cfg.n_embd // self.cfg.n_head
        return StaticKVCache(self.cfg.n_layer, batch_size, self.cfg.n_head, max_len, hs, p.device, p.dtype)

    def forward_static(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        cache: StaticKVCache,
    ) -> torch.Tensor:
        """L new positions written at `cache.position`: input_ids, position_ids (B, L), attn_mask
        (B, 1, L, max_len) bool (query i sees cache column j) -> hidden (B, L, C). No host reads:
        capturable in a CUDA graph; positions past block_size are the caller's to refuse."""
        L = input_ids.shape[1]
        cache.write_index = cache.position + torch.arange(L, device=input_ids.device)  # (L,)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, L, C)
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, cache, i)
        cache.position.add_(L)
        return self.ln_f(x)  # (B, L, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None = None):
        B, L = input_ids.shape
        start = check_step_shapes(input_ids, attention_mask, cache)
        if start + L > self.block_size:
            raise ValueError(
                f"sequence of {start + L} tokens exceeds ModelConfig.block_size={self.block_size}"
            )
        pos = position_ids_from_mask(attention_mask, L)  # (B, L)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, L, C)
        bias = attention_bias(attention_mask, L, start)
        for i, block in enumerate(self.h):
            x = block(x, bias, cache, i)
        if cache is not None:
            cache.length = start + L
        return self.ln_f(x), cache  # (B, L, C)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # (B, L, V)
