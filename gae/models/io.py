"""Save and load an ActorCritic as `model.safetensors` + `config.json` (never a pickle).

safetensors holds only tensors, so loading a user-supplied file cannot run code (unlike
`torch.load`). `safetensors.torch.save_model` drops tied duplicates (the GPT's lm_head is
the embedding) and `load_model` restores them. An HF arch also keeps its HF config in
`hf_config/`, so loading needs neither the original directory nor the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gae.fsutil import atomic_path, atomic_write_json
from gae.models.actor_critic import ActorCritic, build_model
from gae.models.config import ModelConfig

FORMAT_VERSION = 1


def save_model(model: ActorCritic, out_dir: str | Path, *, extra: dict | None = None) -> Path:
    """Write `<out_dir>/model.safetensors` and `<out_dir>/config.json` atomically; return out_dir.

    `extra`: JSON-able facts stored under "extra" in config.json (e.g. pretraining metrics).
    """
    from safetensors.torch import save_model as st_save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model.cfg.arch == "hf":
        model.actor.save_hf_config(out_dir / "hf_config")
    with atomic_path(out_dir / "model.safetensors") as tmp:
        st_save(model, str(tmp))
    atomic_write_json(
        out_dir / "config.json",
        {"format": FORMAT_VERSION, "model": model.cfg.model_dump(), "extra": extra or {}},
    )
    return out_dir


def read_model_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no model at {model_dir} (config.json missing)")
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT_VERSION or "model" not in raw:
        raise ValueError(f"{path}: not a gaeflow model config (format {raw.get('format')!r})")
    # models saved before the time-aware value head existed have a plain one
    return ModelConfig(**{"value_time_features": 0, **raw["model"]})


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> ActorCritic:
    """Rebuild from config.json and load the weights strictly (a missing or extra tensor raises)."""
    from safetensors.torch import load_model as st_load

    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}")
    hf_dir = model_dir / "hf_config" if cfg.arch == "hf" else None
    model = build_model(cfg, cfg.vocab_size, hf_config_dir=hf_dir)
    missing, unexpected = st_load(model, str(weights), strict=True, device="cpu")
    return model.to(device).eval()
