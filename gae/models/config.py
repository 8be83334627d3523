"""Model configuration: one pydantic model saved as `config.json` next to every set of weights."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Sizes chosen for a 2-core CPU (see bench/RESULTS.md): `tiny` pretrains in seconds for the
# smoke pipeline, `small` reaches a clearly-better-than-unigram perplexity in about a minute.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256},
    "base": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 512},
}


class ModelConfig(BaseModel):
    """Architecture of the policy (and critic). Saved with the weights; `load_model` rebuilds from it."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["gpt", "gru", "hf"] = Field(
        "gpt",
        description="gpt: compact decoder (default); gru: Embedding->GRU->Linear; hf: a local HF causal LM.",
    )
    n_layer: int = Field(4, ge=1, description="Transformer blocks (gpt) or stacked GRU layers (gru).")
    n_head: int = Field(4, ge=1, description="Attention heads (gpt); must divide n_embd.")
    n_embd: int = Field(128, ge=8, description="Embedding / hidden width (gpt and gru).")
    block_size: int = Field(
        256, ge=8, description="Longest sequence (prompt + response) in tokens (gpt positions)."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout in pretraining only; keep 0 so PPO ratios start at exactly 1.",
    )
    bias: bool = Field(True, description="Bias terms in Linear and LayerNorm layers (gpt).")
    critic: Literal["head", "separate"] = Field(
        "head",
        description="head: value head on the policy trunk; separate: a critic trunk of the same arch, "
        "initialised from the policy's weights.",
    )
    value_time_features: int = Field(
        8,
        ge=0,
        le=64,
        description="Frequency pairs (sin, cos) of the response step given to the value head beside the "
        "hidden state: a time-aware critic (Pardo et al. 2018, 'Time Limits in Reinforcement Learning'), "
        "since with a token budget the value of a state depends on how much of it is left. 0: off.",
    )
    hf_path: str | None = Field(
        None, description="Local Hugging Face model directory for arch=hf (never downloaded)."
    )
    vocab_size: int | None = Field(
        None, description="Vocabulary size; filled by build_model and saved so load_model needs no tokenizer."
    )

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named size ("tiny", "small", "base") with optional field overrides."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
        return cls(**{**MODEL_PRESETS[name], **overrides})


def check_step_shapes(input_ids, attention_mask, cache) -> int:
    """Every architecture's forward takes L new positions after `cache.length` cached ones, with an
    attention mask over all of them. Returns the number of cached positions."""
    B, L = input_ids.shape
    start = cache.length if cache is not None else 0
    if tuple(attention_mask.shape) != (B, start + L):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, start + L)} "
            f"({start} cached + {L} new positions)"
        )
    return start
