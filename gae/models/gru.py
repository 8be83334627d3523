"""The seed generator: Embedding -> GRU -> Linear, behind the same backbone interface as the GPT.

A recurrent net has no positions to fix, but left padding would still run pad tokens
through the recurrence and change the state. So each row is first rotated so that its real
tokens start at column 0, run through `pack_padded_sequence` (which stops each row at its
length, giving the right final state), and rotated back. This requires padding to be on
the left only (`[pad..., real...]` per row), which is how prompts are batched here.
The "cache" is the GRU's hidden state (n_layer, B, H).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gae.models.config import ModelConfig, check_step_shapes


class GRUCache:
    def __init__(self):
        self.h: torch.Tensor | None = None  # (n_layer, B, H)
        self.length = 0

    def select(self, rows: torch.Tensor) -> None:
        if self.h is not None:
            self.h = self.h.index_select(1, rows)


class GRULM(nn.Module):
    """Backbone interface: see `gae.models.gpt.GPT`."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = cfg.n_embd
        self.embed = nn.Embedding(vocab_size, cfg.n_embd)
        self.gru = nn.GRU(
            cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, batch_first=True, dropout=cfg.dropout
        )
        self.head = nn.Linear(cfg.n_embd, vocab_size)

    def new_cache(self, batch_size: int, max_len: int) -> GRUCache:
        return GRUCache()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: GRUCache | None = None):
        B, L = input_ids.shape
        start = check_step_shapes(input_ids, attention_mask, cache)
        mask = attention_mask[:, -L:].bool()  # (B, L)
        n_real = mask.sum(1)  # (B,)
        n_pad = L - n_real
        # left padding only: row b must be n_pad[b] pads then real tokens
        expected = torch.arange(L, device=mask.device)[None, :] >= n_pad[:, None]
        if not torch.equal(mask, expected):
            raise ValueError(
                "GRU backbone needs left padding only: each attention_mask row must be [0...0, 1...1]"
            )
        h0 = cache.h if cache is not None else None
        x = self.embed(input_ids)  # (B, L, H)
        if bool(mask.all()):
            out, h = self.gru(x, h0)
        else:
            if start > 0 or bool((n_real == 0).any()):
                raise ValueError(
                    "GRU backbone: padding is only allowed in the first chunk, and no row may be empty"
                )
            idx = (
                torch.arange(L, device=x.device)[None, :] + n_pad[:, None]
            ) % L  # rotate real tokens to the front
            x_left = x.gather(1, idx[..., None].expand_as(x))
            packed = pack_padded_sequence(x_left, n_real.cpu(), batch_first=True, enforce_sorted=False)
            out_packed, h = self.gru(packed, h0)
            out_left, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=L)
            back = (torch.arange(L, device=x.device)[None, :] - n_pad[:, None]) % L  # rotate back
            out = out_left.gather(1, back[..., None].expand_as(out_left))  # pads hold zeros/garbage: unused
        if cache is not None:
            cache.h = h
            cache.length = start + L
        return out, cache  # (B, L, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # (B, L, V)
