"""Checkpoints after every iteration, so a run resumes exactly where it stopped.

A checkpoint is a directory `runs/<run_id>/checkpoints/iter-NNNNN/` holding

    policy/             the ActorCritic (gae.models.save_model: safetensors + config.json),
                        loadable on its own by `gae.models.load_model` and the registry
                        (modules that are not an ActorCritic: policy/model.safetensors)
    optimizer.pt        optimizer state_dict (tensors and numbers only: torch.load with
                        weights_only=True, which cannot execute code)
    rng.pt              torch CPU (and CUDA) generator states
    state.json          iteration, numpy and Python RNG states, KL-controller state,
                        config, free-form extras

It is built under a temporary name and renamed into place (gae.fsutil.atomic_dir), then
`checkpoints/latest.json` is replaced atomically: a crash leaves the previous checkpoint
as the resume point. Resume exactness (same weights bit for bit as an uninterrupted run)
needs the optimizer moments and step counts, every RNG the loop draws from, and the KL
coefficient; the learning-rate schedule and minibatch permutations are pure functions of
the iteration (gae.train), so they need no state.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from gae.fsutil import atomic_dir, atomic_write_json

LATEST = "latest.json"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_dir(run_dir: str | Path, iteration: int) -> Path:
    return checkpoints_dir(run_dir) / f"iter-{iteration:05d}"


def rng_state() -> tuple[dict, dict]:
    """(tensors, json-able) snapshot of the torch, CUDA, numpy and Python generators."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    js = {
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, js


def set_rng_state(tensors: dict, js: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = js["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    v, state, g = js["python"]
    random.setstate((v, tuple(state), g))


def _is_actor_critic(model: torch.nn.Module) -> bool:
    return hasattr(model, "cfg") and hasattr(model, "actor_parameters") and hasattr(model, "value_head")


def save_weights(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """The model's weights in `out_dir` (gae.models.save_model for an ActorCritic)."""
    out_dir = Path(out_dir)
    if _is_actor_critic(model):
        from gae.models import save_model

        save_model(model, out_dir)
    else:
        from safetensors.torch import save_model as st_save

        out_dir.mkdir(parents=True, exist_ok=True)
        st_save(model, str(out_dir / "model.safetensors"))  # handles tied weights
    return out_dir


def load_weights_into(model: torch.nn.Module, weights_dir: str | Path) -> None:
    weights_dir = Path(weights_dir)
    if (weights_dir / "config.json").exists() and _is_actor_critic(model):
        from gae.models import load_model

        src = load_model(weights_dir, device="cpu")
        model.load_state_dict(src.state_dict(), strict=True)
    else:
        from safetensors.torch import load_model as st_load

        st_load(model, str(weights_dir / "model.safetensors"), strict=True, device=str(_device_of(model)))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    kl_controller=None,
    config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically and point `latest.json` beside it at it.

    `path` is the checkpoint directory (see `checkpoint_dir`); an existing one for the same
    iteration is replaced (a rerun of the same iteration writes the same thing).
    """
    path = Path(path)
    tensors, js = rng_state()
    with atomic_dir(path) as tmp:
        save_weights(model, tmp / "policy")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(tensors, tmp / "rng.pt")
        state = {
            "iteration": int(iteration),
            "rng": js,
            "kl_controller": kl_controller.state_dict() if kl_controller is not None else None,
            "config": config,
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(state, default=str))
    atomic_write_json(path.parent / LATEST, {"iteration": int(iteration), "path": path.name})
    return path


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    kl_controller=None,
    restore_rng: bool = True,
) -> dict:
    """Restore what was saved into the given objects (in place); returns state.json's dict
    (iteration, config, extra, kl_controller)."""
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (state.json missing)")
    state = json.loads(state_file.read_text())
    if model is not None:
        load_weights_into(model, path / "policy")
    if optimizer is not None:
        opt_file = path / "optimizer.pt"
        if not opt_file.exists():
            raise FileNotFoundError(f"checkpoint {path} holds no optimizer state (optimizer.pt missing)")
        optimizer.load_state_dict(torch.load(opt_file, map_location="cpu", weights_only=True))
    if kl_controller is not None and state.get("kl_controller") is not None:
        kl_controller.load_state_dict(state["kl_controller"])
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True), state["rng"])
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    cdir = checkpoints_dir(run_dir)
    pointer = cdir / LATEST
    if pointer.exists():
        p = cdir / json.loads(pointer.read_text())["path"]
        if (p / "state.json").exists():
            return p
    done = sorted(p for p in cdir.glob("iter-*") if (p / "state.json").exists())
    return done[-1] if done else None


def prune_checkpoints(run_dir: str | Path, keep: int = 2) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (never the one latest.json names)."""
    cdir = checkpoints_dir(run_dir)
    done = sorted(p for p in cdir.glob("iter-*") if (p / "state.json").exists())
    latest = latest_checkpoint(run_dir)
    removed = []
    for p in done[: max(0, len(done) - keep)]:
        if p != latest:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
