"""Input checks of the advantage estimators: shapes, dtypes, ranges, per-row lambdas, and the
messages that name the first bad `[b, t]` (advantages-spec.md: bad input is one clear line).

Shape and range checks are O(1) Python work done before any kernel runs; the value checks
(non-finite numbers on action tokens, stray rewards off them) ride inside the kernels and
come back as an error code and position, which `value_error` turns into the message.
"""

from __future__ import annotations

import torch


class AdvantageInputError(ValueError, TypeError):
    """Bad input to an estimator. A ValueError (and a TypeError, for wrong dtypes)."""


# --------------------------------------------------------------------------- validation


def check_unit(name: str, x: float) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise AdvantageInputError(f"{name} must be a number in [0, 1], got {x!r}") from None
    if not (0.0 <= x <= 1.0):  # also refuses NaN
        raise AdvantageInputError(f"{name} must be in [0, 1], got {x}")
    return x


def check_float_2d(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise AdvantageInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise AdvantageInputError(f"{name} must be 2-D (B, T), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise AdvantageInputError(f"{name} must have a floating-point dtype, got {x.dtype}")
    return x


def check_mask(mask: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise AdvantageInputError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != shape:
        raise AdvantageInputError(f"mask has shape {tuple(mask.shape)} but rewards has shape {tuple(shape)}")
    if mask.device != device:
        raise AdvantageInputError(f"mask is on {mask.device} but rewards is on {device}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise AdvantageInputError(f"mask must be bool, integer or float, got {mask.dtype}")
    return mask != 0


def _compute_dtype(*dtypes: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the kernels compute in, dtype of the outputs)."""
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return (out if out in (torch.float32, torch.float64) else torch.float32), out


def _check_last_value(last_value: object, B: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if last_value is None:
        return torch.zeros(B, dtype=dtype, device=device)
    if isinstance(last_value, int | float):
        lv = torch.full((B,), float(last_value), dtype=dtype, device=device)
    elif isinstance(last_value, torch.Tensor):
        if last_value.shape != (B,):
            raise AdvantageInputError(f"last_value must have shape ({B},), got {tuple(last_value.shape)}")
        if not torch.is_floating_point(last_value):
            raise AdvantageInputError(f"last_value must have a floating-point dtype, got {last_value.dtype}")
        lv = last_value.to(device=device, dtype=dtype)
    else:
        raise AdvantageInputError(
            f"last_value must be None, a float or a (B,) tensor, got {type(last_value).__name__}"
        )
    return lv


def _check_lam_tensor(name: str, lam: torch.Tensor, B: int) -> torch.Tensor:
    """A per-row lambda: shape (B,), floating, every entry in [0, 1]. Returned as float64 on its
    device, so `gamma * lam` rounds to the compute dtype exactly as a Python float lambda does."""
    if lam.shape != (B,):
        raise AdvantageInputError(f"{name} must be a float or a ({B},) tensor, got shape {tuple(lam.shape)}")
    if not torch.is_floating_point(lam):
        raise AdvantageInputError(f"{name} must have a floating-point dtype, got {lam.dtype}")
    lam = lam.detach().double()
    bad = ~((lam >= 0) & (lam <= 1))  # also NaN
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise AdvantageInputError(f"{name}[{b}] is {lam[b].item()} (must be in [0, 1])")
    return lam


def lambdas(lam, lam_critic, B: int, device: torch.device):
    """(lam_a, lam_c): each a float, or a float64 (B,) tensor on `device`; lam_c is None when the
    critic's targets use the actor's lambda (the single-accumulator path)."""
    lam_a = (
        _check_lam_tensor("lam", lam, B).to(device)
        if isinstance(lam, torch.Tensor)
        else check_unit("lam", lam)
    )
    if lam_critic is None:
        return lam_a, None
    if isinstance(lam_critic, torch.Tensor):
        lam_c = _check_lam_tensor("lam_critic", lam_critic, B).to(device)
    else:
        lam_c = check_unit("lam_critic", lam_critic)
    same = (
        torch.equal(lam_a, lam_c)
        if isinstance(lam_a, torch.Tensor) and isinstance(lam_c, torch.Tensor)
        else lam_a == lam_c
        if not isinstance(lam_a, torch.Tensor) and not isinstance(lam_c, torch.Tensor)
        else False
    )
    return lam_a, None if same else lam_c


def row_lams(lam, B: int, device: torch.device) -> torch.Tensor:
    """A float or (B,) lambda as a float64 (B,) tensor on `device`."""
    if isinstance(lam, torch.Tensor):
        return lam.to(device=device, dtype=torch.float64)
    return torch.full((B,), float(lam), dtype=torch.float64, device=device)


def validated(rewards, values, mask, gamma, lam, last_value):
    """Shape, dtype and range checks: O(1) work, done in Python before any kernel runs."""
    rewards = check_float_2d("rewards", rewards)
    values = check_float_2d("values", values)
    if values.shape != rewards.shape:
        raise AdvantageInputError(
            f"values has shape {tuple(values.shape)} but rewards has shape {tuple(rewards.shape)}"
        )
    if values.device != rewards.device:
        raise AdvantageInputError(f"values is on {values.device} but rewards is on {rewards.device}")
    m = check_mask(mask, rewards.shape, rewards.device)
    gamma = check_unit("gamma", gamma)
    if not isinstance(lam, torch.Tensor):
        lam = check_unit("lam", lam)
    cdt, odt = _compute_dtype(rewards.dtype, values.dtype)
    lv = _check_last_value(last_value, rewards.shape[0], rewards.device, cdt)
    return rewards.to(cdt), values.to(cdt), m, gamma, lam, lv, odt


def value_error(code: int, b: int, t: int, rewards: torch.Tensor, values: torch.Tensor, lv: torch.Tensor):
    if code == 1:
        return AdvantageInputError(
            f"rewards[{b}, {t}] is {rewards[b, t].item()} at an action position (must be finite)"
        )
    if code == 2:
        return AdvantageInputError(
            f"values[{b}, {t}] is {values[b, t].item()} at an action position (must be finite)"
        )
    if code == 3:
        return AdvantageInputError(
            f"rewards[{b}, {t}] = {rewards[b, t].item()} at a non-action position (mask is False there); "
            "rewards must sit on action tokens, or the final reward of an episode ending on an "
            "observation token would be lost"
        )
    if code == 4:
        return AdvantageInputError(f"last_value[{b}] is {lv[b].item()} (must be finite)")
    raise AssertionError(f"unknown kernel error code {code}")


def first_bad_torch(rewards: torch.Tensor, values: torch.Tensor, m: torch.Tensor, lv: torch.Tensor):
    """The value checks as torch passes (used by the torch and reference backends)."""
    bad_lv = ~torch.isfinite(lv)
    if bool(bad_lv.any()):
        return 4, int(bad_lv.nonzero()[0, 0]), -1
    codes = torch.zeros(rewards.shape, dtype=torch.int8, device=rewards.device)
    codes[~m & (rewards != 0)] = 3
    codes[m & ~torch.isfinite(values)] = 2
    codes[m & ~torch.isfinite(rewards)] = 1
    bad = (codes != 0).nonzero()
    if bad.numel() == 0:
        return 0, -1, -1
    b, t = int(bad[0, 0]), int(bad[0, 1])
    return int(codes[b, t]), b, t
