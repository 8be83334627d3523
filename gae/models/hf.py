"""Any local Hugging Face causal LM behind the backbone interface (optional `hf` extra).

Loaded with `AutoModelForCausalLM.from_pretrained(path, local_files_only=True)`: nothing is
ever downloaded. Position ids are passed explicitly from the attention mask, so left
padding behaves as in the GPT backbone whatever the model's own default is. The cache is
the model's own `past_key_values` object.

Static decoding (`gae.decode`) uses transformers' own `StaticCache` (keys and values
preallocated to a fixed length, written in place at a column the cache keeps in a device
tensor) with a 4-D mask built here, which the model takes as it is (transformers'
`masking_utils` returns a 4-D mask unchanged): every shape is fixed and no step reads a host
value, so a decode step can be captured as a CUDA graph. Sliding-window layers keep a host
counter in their static cache, so models with them decode with the dynamic cache.
"""

from __future__ import annotations

import inspect
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


# Output transforms that some architectures apply after the LM head inside their own forward:
# part of the model, so leaving them out samples and scores from other logits. Each is read from
# the HF config, by model_type family (transformers 5.x modeling files):
#   Granite*, MiniCPM3: logits / logits_scaling (MiniCPM3 divides the hidden state; its head has no bias)
#   HyperCLOVA X:       logits * logits_scaling
#   Cohere*:            logits * logit_scale
#   Gemma 2/3/4, ...:   final_logit_softcapping c: c * tanh(logits / c)  (Gemma 2 report, 2024)
_DIVIDE_BY_LOGITS_SCALING = ("granite", "minicpm3")  # model_type prefixes
_MULTIPLY_BY_LOGITS_SCALING = ("hyperclovax",)
_MULTIPLY_BY_LOGIT_SCALE = ("cohere",)
# Fields of other architectures that change the output logits in ways not replicated here.
_UNSUPPORTED_LOGIT_FIELDS = (
    "output_multiplier",
    "output_logit_soft_cap",
    "logits_soft_cap",
    "logits_mup_width_multiplier",
    "lm_head_multiplier",
)


def logit_transform(hf_cfg) -> tuple[float, float | None]:
    """(scale, softcap) such that the model's own logits = softcap(scale * head(hidden)), softcap
    c * tanh(x / c) when not None. Refuses a config with a logit field of unknown meaning."""
    kind = str(getattr(hf_cfg, "model_type", "") or "")
    where = f"HF config (model_type={kind!r})"
    for name in _UNSUPPORTED_LOGIT_FIELDS:
        if getattr(hf_cfg, name, None) is not None:
            raise ValueError(
                f"{where} sets {name}={getattr(hf_cfg, name)!r}, an output-logit transform arch='hf' "
                "does not replicate; its log-probs would not be the model's"
            )
    scale = 1.0
    scaling = getattr(hf_cfg, "logits_scaling", None)
    if scaling is not None:
        if kind.startswith(_DIVIDE_BY_LOGITS_SCALING):
            scale /= float(scaling)
        elif kind.startswith(_MULTIPLY_BY_LOGITS_SCALING):
            scale *= float(scaling)
        elif float(scaling) != 1.0:
            raise ValueError(
                f"{where} sets logits_scaling={scaling!r}, but whether this architecture divides or "
                "multiplies its logits by it is unknown to arch='hf'"
            )
    logit_scale = getattr(hf_cfg, "logit_scale", None)
    if logit_scale is not None:
        if kind.startswith(_MULTIPLY_BY_LOGIT_SCALE):
            scale *= float(logit_scale)
        elif float(logit_scale) != 1.0:
            raise ValueError(
                f"{where} sets logit_scale={logit_scale!r}, an output-logit transform arch='hf' "
                "does not know for this architecture"
            )
    cap = getattr(hf_cfg, "final_logit_softcapping", None)
    return scale, (float(cap) if cap else None)


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
        # transformers 5.18+ names the cache argument `cache` (`past_key_values` is deprecated)
        params = inspect.signature(self.lm.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cfg = cfg
        self.hidden_size = (
            self.lm.config.hidden_size if hasattr(self.lm.config, "hidden_size") else self.lm.config.n_embd
        )
        n_vocab = self.lm.get_output_embeddings().weight.shape[0]
        if vocab_size is not None and vocab_size > n_vocab:
            raise ValueError(
                f"tokenizer has {vocab_size} tokens but the HF model's output layer has {n_vocab}"
            )
        # Output layers are often padded past the tokenizer (to a multiple of 64 or 128): ids from
        # `vocab_size` on have no token, so `logits` cuts them off, giving (B, L, vocab_size) like
        # the other backbones. Cutting (not a -inf fill) keeps them at probability exactly 0 for
        # sampling and scoring while entropy stays finite (0 * -inf would be NaN).
        self.vocab_size = int(vocab_size) if vocab_size is not None else n_vocab
        self.logit_scale, self.logit_softcap = logit_transform(self.lm.config)
        self.block_size = getattr(self.lm.config, "max_position_embeddings", None) or getattr(
            self.lm.config, "n_positions", None
        )

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        if self.block_size is not None and max_len > self.block_size:
            raise ValueError(
                f"generation needs {max_len} positions but the HF model supports {self.block_size}"
            )
        return HFCache()

    def _text_config(self):
        cfg = self.lm.config
        return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg

    def kv_bytes_per_position(self) -> int:
        """Bytes one row's cache holds per position (keys and values of every layer), read from the
        config: num_key_value_heads x head_dim per layer (grouped-query attention shares heads)."""
        c = self._text_config()
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 1)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", 1)
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or self.hidden_size // heads
        item = next(self.lm.parameters()).element_size()
        return 2 * int(layers) * int(kv_heads) * int(head_dim) * item

    def static_decode_unsupported(self) -> str | None:
        """Why this model cannot decode with a static cache, or None when it can."""
        transformers = _require_transformers()
        if not hasattr(transformers, "StaticCache"):
            return f"transformers {transformers.__version__} has no StaticCache"
        c = self._text_config()
        types = set(getattr(c, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            return (
                f"layer types {sorted(types)}: only full-attention layers have a device-side cache position"
            )
        impl = getattr(self.lm.config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            return f"attention implementation {impl!r} does not take a 4-D mask"
        return None

    def new_static_cache(self, batch_size: int, max_len: int):
        reason = self.static_decode_unsupported()
        if reason is not None:
            raise ValueError(f"static decoding of this HF model ({self.lm.config.model_type}): {reason}")
        transformers = _require_transformers()
        cache = transformers.StaticCache(config=self.lm.config, max_cache_len=max_len)
        if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", [])):
            raise ValueError(
                f"static decoding of this HF model ({self.lm.config.model_type}): its StaticCache has "
                "sliding-window layers, which count positions on the host"
            )
        return cache

    def forward_static(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn_mask: torch.Tensor, cache
    ) -> torch.Tensor:
        """See `gae.models.gpt.GPT.forward_static`; the cache is a transformers `StaticCache`, whose
        layers keep their write column in a device tensor. attn_mask (B, 1, L, max_len) bool."""
        mask = attn_mask
        if getattr(self.lm.config, "_attn_implementation", None) != "sdpa":
            # eager attention adds the mask to the scores: 0 where seen, the dtype's minimum elsewhere
            dtype = next(self.lm.parameters()).dtype
            mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
                ~attn_mask, torch.finfo(dtype).min
            )
        out = self.lm.base_model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return out.last_hidden_state  # (B, L, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: HFCache | None = None):
        B, L = input_ids.shape
        start = check_step_shapes(input_ids, attention_mask, cache)
        pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, -L:]  # (B, L)
        out = self.lm.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=pos,
            use_cache=cache is not None,
            **{self._cache_kw: cache.past if cache is not None else None},
        )
        if cache is not None:
            cache.past = getattr(out, self._cache_kw)
            cache.length = start + L
        return out.last_hidden_state, cache  # (B, L, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, V), V the tokenizer's size: the output layer, then the post-processing
        the model's own forward applies (see `logit_transform`), in the same order."""
        logits = self.lm.get_output_embeddings()(hidden)  # (B, L, n_vocab)
        if logits.shape[-1] > self.vocab_size:
            logits = logits[..., : self.vocab_size]  # (B, L, V)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def save_hf_config(self, out_dir: Path) -> None:
        self.lm.config.save_pretrained(str(out_dir))
