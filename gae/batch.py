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
    # Host copies already made (e.g. the response tokens, copied to decode the text): `save`
    # reuses them, so each tensor crosses from the device to the host once.
    host_copies: dict = field(default_factory=dict, repr=False, compare=False)

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
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "host_copies"}
        for name in TENSOR_FIELDS:
            kw[name] = kw[name].to(device)
        return RolloutBatch(**kw)

    def host_tensors(self) -> dict[str, torch.Tensor]:
        """All tensor fields on the host, copying (in one asynchronous batch) only those not
        copied yet; the copies are kept for the next call."""
        from gae.device import to_host

        missing = {n: getattr(self, n) for n in TENSOR_FIELDS if n not in self.host_copies}
        if missing:
            self.host_copies.update(to_host(missing).wait())
        return {n: self.host_copies[n].contiguous() for n in TENSOR_FIELDS}

    def save(self, path: str | Path) -> Path:
        """Write `<path>/batch.safetensors` and `<path>/batch.json` (each atomically).

        On an accelerator the device tensors are also left in `gae.handoff` for the next
        task in this process (see `load`)."""
        from safetensors.torch import save_file

        from gae import handoff

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "batch.safetensors") as tmp:
            save_file(self.host_tensors(), str(tmp))
        device = self.response_tokens.device
        if handoff.enabled_for(device):
            handoff.put(path / "batch.safetensors", {n: getattr(self, n) for n in TENSOR_FIELDS})
        atomic_write_json(
            path / "batch.json", {**{n: getattr(self, n) for n in LIST_FIELDS}, "meta": self.meta}
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> RolloutBatch:
        """Read a saved batch onto `device`; on an accelerator, the tensors this process saved
        there (unchanged file) come back from `gae.handoff` without a host round trip."""
        from safetensors.torch import load_file

        from gae import handoff

        path = Path(path)
        if not (path / "batch.safetensors").exists():
            raise FileNotFoundError(f"no rollout batch at {path} (batch.safetensors missing)")
        tensors = None
        if handoff.enabled_for(device):
            tensors = handoff.get(path / "batch.safetensors", device)
        if tensors is None:
            tensors = load_file(str(path / "batch.safetensors"), device=str(device))
        lists = json.loads((path / "batch.json").read_text())
        return cls(**tensors, **{n: lists[n] for n in LIST_FIELDS}, meta=lists.get("meta", {}))
