"""ActorCritic: a policy backbone with an LM head, and a value function on the same or a separate trunk.

Every backbone (GPT, GRU, HF) offers the same three calls, so this module, scoring and
rollouts never branch on the architecture:

    hidden, cache = backbone(input_ids (B, L), attention_mask (B, S), cache)   # S = cached + L
    logits = backbone.logits(hidden)                                           # (B, L, V)
    cache = backbone.new_cache(B, max_len)

The value head is a Linear(H, 1) with zero weight and bias, so V = 0 everywhere before
training: the first advantages are then plain discounted rewards rather than noise from a
random head (cf. the zero-initialised value heads of TRL and OpenRLHF). With
`critic="separate"` the critic trunk starts as a copy of the policy trunk.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from gae.models.config import ModelConfig


def build_backbone(cfg: ModelConfig, vocab_size: int, *, hf_config_dir=None) -> nn.Module:
    if cfg.arch == "gpt":
        from gae.models.gpt import GPT

        return GPT(cfg, vocab_size)
    if cfg.arch == "gru":
        from gae.models.gru import GRULM

        return GRULM(cfg, vocab_size)
    if cfg.arch == "hf":
        from gae.models.hf import HFCausalLM

        return HFCausalLM(cfg, vocab_size, hf_config_dir=hf_config_dir)
    raise ValueError(f"ModelConfig.arch={cfg.arch!r}; choose gpt, gru or hf")


class ActorCritic(nn.Module):
    def __init__(self, cfg: ModelConfig, actor: nn.Module, critic_trunk: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.actor = actor
        self.critic_trunk = critic_trunk  # None: the value head reads the actor's hidden states
        trunk = critic_trunk if critic_trunk is not None else actor
        self.n_time = int(cfg.value_time_features)
        self.value_head = nn.Linear(trunk.hidden_size + 2 * self.n_time, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def vocab_size(self) -> int:
        return int(self.cfg.vocab_size)

    @property
    def block_size(self) -> int | None:
        return getattr(self.actor, "block_size", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        logits_slice: slice | None = None,
        response_start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask: (B, L) -> logits (B, L, V), values (B, L) (no cache).

        `logits_slice` projects only those positions to the vocabulary (B, len(slice), V): scoring
        needs the response positions only, and with a 50k vocabulary the prompt's logits would
        dominate memory. `response_start`: the column of the state before the first response
        token (prompts are left-padded, so it is the same for every row); the time-aware value
        head counts response steps from there (None: from each row's first real token).
        """
        hidden, values = self.hidden_and_values(
            input_ids, attention_mask, window=logits_slice, response_start=response_start
        )
        return self.actor.logits(hidden), values  # (B, L', V), (B, L)

    def hidden_and_values(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        window: slice | None = None,
        response_start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's last hidden states at the `window` positions (B, L', H), not yet projected
        to the vocabulary (`gae.models.scoring` projects them a chunk at a time), and the values
        (B, L) float32. Arguments as in `forward`."""
        hidden, _ = self.actor(input_ids, attention_mask, None)  # (B, L, H)
        policy_hidden = hidden if window is None else hidden[:, window]  # (B, L', H)
        if self.critic_trunk is not None:
            hidden, _ = self.critic_trunk(input_ids, attention_mask, None)
        if self.n_time:
            hidden = torch.cat([hidden, self.time_features(hidden, attention_mask, response_start)], -1)
        values = self.value_head(hidden).squeeze(-1)  # (B, L)
        return policy_hidden, values.to(torch.float32)

    def time_features(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, response_start: int | None
    ) -> torch.Tensor:
        """(B, L, 2 * n_time): sin and cos of pi * k * step / block_size, k = 1..n_time, where
        step = response steps taken (0 up to and at `response_start`), or without it the real
        tokens before this one. Fixed features, so the value head learns a smooth function of
        the step with 2 * n_time weights; left padding does not move them."""
        B, L, _ = hidden.shape
        if response_start is None:
            step = attention_mask.long().cumsum(1) - 1  # (B, L)
        else:
            step = (torch.arange(L, device=hidden.device) - response_start).expand(B, L)
        # the features repeat every 2 * block_size steps: later steps saturate at the last
        # distinct one (only GRU and HF models, not capped at block_size, can get there), so
        # a late state never looks like an early one
        top = 2 * int(self.cfg.block_size) - 1
        x = step.clamp(min=0, max=top).to(torch.float32) / float(self.cfg.block_size)
        k = torch.arange(1, self.n_time + 1, device=hidden.device, dtype=torch.float32)
        ang = torch.pi * x[..., None] * k  # (B, L, n_time)
        return torch.cat([ang.sin(), ang.cos()], -1).to(hidden.dtype)

    def new_cache(self, batch_size: int, max_len: int):
        """A decode cache for the actor (generation does not need the critic)."""
        return self.actor.new_cache(batch_size, max_len)

    def decode_step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, *, last_only: bool = False
    ):
        """Policy logits of new positions given a cache: input_ids (B, L), attention_mask (B, cached + L)
        -> logits (B, L, V) (B, 1, V with `last_only`: a prompt's prefill needs only its last
        position, and (B, P, V) logits of a 150k vocabulary would dwarf the cache), cache (updated
        in place and returned)."""
        hidden, cache = self.actor(input_ids, attention_mask, cache)
        return self.actor.logits(hidden[:, -1:] if last_only else hidden), cache

    # ------------------------------------------------------------- static decoding (gae.decode)

    def static_decode_unsupported(self) -> str | None:
        """Why the policy cannot decode with a static cache (a CUDA-graph-capturable step), or None."""
        if not hasattr(self.actor, "forward_static"):
            return f"arch {self.cfg.arch!r} has no static cache (its decode state is not a KV cache)"
        check = getattr(self.actor, "static_decode_unsupported", None)
        return check() if check is not None else None

    def new_static_cache(self, batch_size: int, max_len: int):
        return self.actor.new_static_cache(batch_size, max_len)

    def static_step(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn_mask: torch.Tensor, cache
    ) -> torch.Tensor:
        """Logits of the last of L new positions written into a static cache: input_ids,
        position_ids (B, L), attn_mask (B, 1, L, max_len) bool -> (B, V)."""
        hidden = self.actor.forward_static(input_ids, position_ids, attn_mask, cache)  # (B, L, H)
        return self.actor.logits(hidden[:, -1:])[:, -1]  # (B, V)

    def kv_bytes_per_position(self) -> int:
        """Decode-cache bytes per row and position (0 for a recurrent state of fixed size)."""
        f = getattr(self.actor, "kv_bytes_per_position", None)
        return int(f()) if f is not None else 0

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        """Value head (+ critic trunk when separate). With a head critic the trunk is shared and
        is counted in `actor_parameters` only."""
        params = list(self.value_head.parameters())
        if self.critic_trunk is not None:
            params += list(self.critic_trunk.parameters())
        return params

    def sync_critic_from_actor(self) -> None:
        """Copy the policy trunk into the separate critic trunk (after pretraining the policy)."""
        if self.critic_trunk is not None:
            self.critic_trunk.load_state_dict(self.actor.state_dict())


def build_model(cfg: ModelConfig, vocab_size: int, *, hf_config_dir=None) -> ActorCritic:
    """A fresh ActorCritic (an HF arch loads its pretrained weights from `cfg.hf_path`)."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    cfg = cfg.model_copy(update={"vocab_size": int(vocab_size)})
    actor = build_backbone(cfg, vocab_size, hf_config_dir=hf_config_dir)
    critic = copy.deepcopy(actor) if cfg.critic == "separate" else None
    return ActorCritic(cfg, actor, critic)
