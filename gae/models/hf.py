"""Any local Hugging Face causal LM behind the backbone interface (optional `hf` extra).

Loaded with `AutoModelForCausalLM.from_pretrained(path, local_files_only=True)`: nothing is
ever downloaded. Position ids are passed explicitly from the attention mask, so left
padding behaves as in the GPT backbone whatever the model's own default is. The cache is
the model's own `past_key_values` object.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from gae.models.config import ModelConfig, check_step_shapes


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "ModelConfig.arch='hf' needs the optional extra: pip install 'gaeflow[hf]' (transformers)"
        ) from e
    return transformers


class HFCache:
    def __init__(self):
        self.past = None
        self.length = 0

    def select(self, rows: torch.Tensor) -> None:
        if self.past is not None:
            self.past.batch_select_indices(rows)  # transformers Cache API (in place)


class HFCausalLM(nn.Module):
    """Backbone interface: see `gae.models.gpt.GPT`. `hf_config_dir` rebuilds the architecture
    without the original weights (used by `load_model`, which then loads our safetensors)."""

    def __init__(
        self, cfg: ModelConfig, vocab_size: int | None = None, *, hf_config_dir: str | Path | None = None
    ):
        super().__init__()
        transformers = _require_transformers()
        if hf_config_dir is not None:
            hf_cfg = transformers.AutoConfig.from_pretrained(str(hf_config_dir), local_files_only=True)
            self.lm = transformers.AutoModelForCausalLM.from_config(hf_cfg)
        else:
            if not cfg.hf_path:
                raise ValueError(
                    "ModelConfig.hf_path must name a local Hugging Face model directory for arch='hf'"
                )
            path = Path(cfg.hf_path).expanduser()
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"ModelConfig.hf_path={cfg.hf_path!r} has no config.json (must be a local dir)"
                )
            self.lm = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        self.lm.config.use_cache = True
        self.cfg = cfg
        self.hidden_size = (
            self.lm.config.hidden_size if hasattr(self.lm.config, "hidden_size") else self.lm.config.n_embd
        )
        n_vocab = self.lm.get_output_embeddings().weight.shape[0]
        if vocab_size is not None and vocab_size > n_vocab:
            raise ValueError(
                f"tokenizer has {vocab_size} tokens but the HF model's output layer has {n_vocab}"
            )
        self.block_size = getattr(self.lm.config, "max_position_embeddings", None) or getattr(
            self.lm.config, "n_positions", None
        )

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        if self.block_size is not None and max_len > self.block_size:
            raise ValueError(
                f"generation needs {max_len} positions but the HF model supports {self.block_size}"
            )
        return HFCache()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: HFCache | None = None):
        B, L = input_ids.shape
        start = check_step_shapes(input_ids, attention_mask, cache)
        pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, -L:]  # (B, L)
        out = self.lm.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=pos,
            past_key_values=cache.past if cache is not None else None,
            use_cache=cache is not None,
        )
        if cache is not None:
            cache.past = out.past_key_values
            cache.length = start + L
        return out.last_hidden_state, cache  # (B, L, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden)  # (B, L, V)

    def save_hf_config(self, out_dir: Path) -> None:
        self.lm.config.save_pretrained(str(out_dir))
