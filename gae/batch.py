"""The rollout batch: what generation hands to rewards, advantages, the store and PPO.

Shapes: `B` rows (prompts x samples), `P` prompt positions (left-padded), `T` response
positions (right-padded). Position `t` of a response is the `t`-th generated token;
`values[:, t]` is the critic's V of the state just before it was emitted and
`logprobs[:, t]` its log-probability under the behaviour policy.

Tasks pass batches between each other as files, never as objects: `save` writes the
tensors as safetensors and the text fields as JSON, atomically, and `load` reads them
back (no pickle: safetensors cannot execute code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from gae.fsutil import atomic_path, atomic_write_json

TENSOR_FIELDS = (
    "group_ids",
    "prompt_tokens",
    "prompt_mask",
    "response_tokens",
    "action_mask",
    "logprobs",
    "ref_logprobs",
    "values",
    "last_values",
)
LIST_FIELDS = ("rollout_ids", "prompt_ids", "prompts", "responses", "references", "finish_reasons")


@dataclass
class RolloutBatch:
    """One iteration's rollouts.

    Attributes:
        rollout_ids: (B,) str, unique within a run and iteration, e.g. "<prompt_id>/<sample>".
        prompt_ids: (B,) str, the `prompts.prompt_id` in DuckDB each row answers.
        group_ids: (B,) int64; rows sampled from the same prompt share one (group estimators).
        prompt_tokens: (B, P) int64, left-padded with the pad id.
        prompt_mask: (B, P) bool, True on real prompt tokens.
        response_tokens: (B, T) int64, right-padded with the pad id after EOS or the limit.
        action_mask: (B, T) bool, True on generated tokens (EOS included), False on padding.
        logprobs: (B, T) float32, behaviour policy log-prob of each response token under the
            unmodified distribution (temperature 1, no top-k/top-p), which is what PPO's
            ratio needs; 0 off the mask.
        ref_logprobs: (B, T) float32, the frozen reference policy's log-probs; 0 off the mask.
        values: (B, T) float32, critic V(s_t); 0 off the mask.
        last_values: (B,) float32, V after the last response token (bootstrap for rows cut at
            the length limit; the caller decides whether to use it from finish_reasons).
        prompts, responses: (B,) decoded text (responses without the EOS token).
        references: (B,) the prompt's reference text, or None.
        finish_reasons: (B,) "eos" or "length".
        meta: free-form JSON-able facts (sampling settings, model ids, seed).
    """

    rollout_ids: list[str]
    prompt_ids: list[str]
    group_ids: torch.Tensor
    prompt_tokens: torch.Tensor
    prompt_mask: torch.Tensor
    response_tokens: torch.Tensor
    action_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    last_values: torch.Tensor
    prompts: list[str]
    responses: list[str]
    references: list[str | None]
    finish_reasons: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        B, T = self.response_tokens.shape
        for name in TENSOR_FIELDS:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"RolloutBatch.{name} must be a tensor, got {type(t).__name__}")
            if t.shape[0] != B:
                raise ValueError(f"RolloutBatch.{name} has {t.shape[0]} rows, response_tokens has {B}")
        for name in ("action_mask", "logprobs", "ref_logprobs", "values"):
            if tuple(getattr(self, name).shape) != (B, T):
                raise ValueError(
                    f"RolloutBatch.{name} has shape {tuple(getattr(self, name).shape)}, expected {(B, T)}"
                )
        if self.prompt_mask.shape != self.prompt_tokens.shape:
            raise ValueError(
                f"RolloutBatch.prompt_mask has shape {tuple(self.prompt_mask.shape)}, "
                f"prompt_tokens has {tuple(self.prompt_tokens.shape)}"
            )
        for name in LIST_FIELDS:
            if len(getattr(self, name)) != B:
                raise ValueError(f"RolloutBatch.{name} has {len(getattr(self, name))} items, expected {B}")
        bad = set(self.finish_reasons) - {"eos", "length"}
        if bad:
            raise ValueError(f"RolloutBatch.finish_reasons must be 'eos' or 'length', got {sorted(bad)}")

    @property
    def batch_size(self) -> int:
        return int(self.response_tokens.shape[0])

    @property
    def response_length(self) -> torch.Tensor:
        """(B,) number of generated tokens per row."""
        return self.action_mask.sum(1)

    def to(self, device: torch.device | str) -> RolloutBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in TENSOR_FIELDS:
            kw[name] = kw[name].to(device)
        return RolloutBatch(**kw)

    def save(self, path: str | Path) -> Path:
        """Write `<path>/batch.safetensors` and `<path>/batch.json` (each atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in TENSOR_FIELDS}
        with atomic_path(path / "batch.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(
            path / "batch.json", {**{n: getattr(self, n) for n in LIST_FIELDS}, "meta": self.meta}
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> RolloutBatch:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "batch.safetensors").exists():
            raise FileNotFoundError(f"no rollout batch at {path} (batch.safetensors missing)")
        tensors = load_file(str(path / "batch.safetensors"), device=str(device))
        lists = json.loads((path / "batch.json").read_text())
        return cls(**tensors, **{n: lists[n] for n in LIST_FIELDS}, meta=lists.get("meta", {}))
