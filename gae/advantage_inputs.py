"""Input checks of the advantage estimators: shapes, dtypes, ranges, per-row lambdas, and the
messages that name the first bad `[b, t]` (advantages-spec.md: bad input is one clear line).

Shape and range checks are O(1) Python work done before any kernel runs; the value checks
(non-finite numbers on action tokens, stray rewards off them) ride inside the kernels and
come back as an error code and position, which `value_error` turns into the message, or,
on the deferred path (issue 14), as a check record that stays on the device until the host
next waits (`record_torch`, `error_from_record`; gae/deferred.py holds them until then).
"""

from __future__ import annotations

import struct

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
    if dtypes[0] in (torch.float32, torch.float64) and all(d == dtypes[0] for d in dtypes):
        return dtypes[0], dtypes[0]  # the common case, without torch calls: this runs per call
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
        same = last_value.dtype == dtype and last_value.device == device
        lv = last_value if same else last_value.to(device=device, dtype=dtype)
    else:
        raise AdvantageInputError(
            f"last_value must be None, a float or a (B,) tensor, got {type(last_value).__name__}"
        )
    return lv


def _check_lam_tensor(name: str, lam: torch.Tensor, B: int, *, sync: bool = True) -> torch.Tensor:
    """A per-row lambda: shape (B,), floating, every entry in [0, 1]. Returned as float64 on its
    device, so `gamma * lam` rounds to the compute dtype exactly as a Python float lambda does.
    sync False: the range is left to the kernel's check record (reading it here is a host sync)."""
    if lam.shape != (B,):
        raise AdvantageInputError(f"{name} must be a float or a ({B},) tensor, got shape {tuple(lam.shape)}")
    if not torch.is_floating_point(lam):
        raise AdvantageInputError(f"{name} must have a floating-point dtype, got {lam.dtype}")
    lam = lam.detach().double()
    if not sync:
        return lam
    bad = ~((lam >= 0) & (lam <= 1))  # also NaN
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise AdvantageInputError(f"{name}[{b}] is {lam[b].item()} (must be in [0, 1])")
    return lam


def lambdas(lam, lam_critic, B: int, device: torch.device, *, sync: bool = True):
    """(lam_a, lam_c): each a float, or a float64 (B,) tensor on `device`; lam_c is None when the
    critic's targets use the actor's lambda (the single-accumulator path).

    sync False (deferred checks): tensor lambdas are neither range-checked nor compared here,
    both host syncs; the kernel records a bad entry, and two equal tensors take the
    two-accumulator path, whose outputs are bit-identical to the single one's."""
    lam_a = (
        _check_lam_tensor("lam", lam, B, sync=sync).to(device)
        if isinstance(lam, torch.Tensor)
        else check_unit("lam", lam)
    )
    if lam_critic is None:
        return lam_a, None
    if isinstance(lam_critic, torch.Tensor):
        lam_c = _check_lam_tensor("lam_critic", lam_critic, B, sync=sync).to(device)
    else:
        lam_c = check_unit("lam_critic", lam_critic)
    both = isinstance(lam_a, torch.Tensor) and isinstance(lam_c, torch.Tensor)
    same = (
        (sync and torch.equal(lam_a, lam_c))
        if both
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


def validated(rewards, values, mask, gamma, lam, last_value, *, zeros_for_none: bool = True):
    """Shape, dtype and range checks: O(1) work, done in Python before any kernel runs.
    `last_value` None comes back as zeros, or as None with `zeros_for_none=False` (a kernel
    that treats None as terminal saves the launch that fills them)."""
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
    lv = (
        None
        if last_value is None and not zeros_for_none
        else _check_last_value(last_value, rewards.shape[0], rewards.device, cdt)
    )
    # `.to` of a tensor already in cdt is a no-op that still costs microseconds a call
    r = rewards if rewards.dtype == cdt else rewards.to(cdt)
    v = values if values.dtype == cdt else values.to(cdt)
    return r, v, m, gamma, lam, lv, odt


def value_error(code: int, b: int, t: int, rewards: torch.Tensor, values: torch.Tensor, lv: torch.Tensor):
    if code == 4:
        return value_message(code, b, t, lv[b].item())
    if code in (1, 3):
        return value_message(code, b, t, rewards[b, t].item())
    if code == 2:
        return value_message(code, b, t, values[b, t].item())
    raise AssertionError(f"unknown kernel error code {code}")


def value_message(code: int, b: int, t: int, value: float) -> AdvantageInputError:
    """The error for kernel code `code` at `[b, t]` (t = -1 for last_value), holding `value`."""
    if code == 1:
        return AdvantageInputError(f"rewards[{b}, {t}] is {value} at an action position (must be finite)")
    if code == 2:
        return AdvantageInputError(f"values[{b}, {t}] is {value} at an action position (must be finite)")
    if code == 3:
        return AdvantageInputError(
            f"rewards[{b}, {t}] = {value} at a non-action position (mask is False there); "
            "rewards must sit on action tokens, or the final reward of an episode ending on an "
            "observation token would be lost"
        )
    if code == 4:
        return AdvantageInputError(f"last_value[{b}] is {value} (must be finite)")
    raise AssertionError(f"unknown kernel error code {code}")


# --------------------------------------------------------------------------- check records
#
# The value checks as a record that stays on the device (issue 14): one int64 key ordering
# every problem the way the eager checks report them, and the offending value's float64 bits.
# gae/kernels/triton_gae.py writes one record per row and documents the key; `record_torch`
# computes the reduced record with torch ops; both are read by `error_from_record`.

NO_ERROR = 2**63 - 1  # the key of a clean row


def reduce_records(rec: torch.Tensor) -> torch.Tensor:
    """(N, 2) records -> the (1, 2) record with the smallest key, on the device: no host sync."""
    return rec.index_select(0, rec[:, 0].argmin().view(1))


def record_torch(r, v, m, lv, lam_a=None, lam_c=None) -> torch.Tensor:
    """The (1, 2) int64 record of the first problem in r, v (B, T), m (B, T) bool, lv (B,) and
    the per-row lambdas (float64 (B,) tensors; floats are checked on the host and pass None),
    in torch ops on the inputs' device: what `_gae_kernel`'s records reduce to, with no sync."""
    B, T = r.shape
    dev = r.device
    S = 4 * T + 4
    pos = 4 * (torch.arange(T, device=dev, dtype=torch.int64) + 1)  # (T,)
    k = torch.where(m & ~torch.isfinite(r), pos, S)  # (B, T)
    k = torch.minimum(k, torch.where(m & ~torch.isfinite(v), pos + 1, S))
    k = torch.minimum(k, torch.where(~m & (r != 0), pos + 2, S))
    rk = torch.where(torch.isfinite(lv), k.amin(1), 0)  # (B,): last_value first in its row
    t = (rk // 4 - 1).clamp(0, T - 1).unsqueeze(1)
    val = torch.where(rk % 4 == 1, v.gather(1, t)[:, 0], r.gather(1, t)[:, 0]).double()
    val = torch.where(rk == 0, lv.double(), val)
    rows = torch.arange(B, device=dev, dtype=torch.int64)
    keys = [torch.where(rk < S, 2 * B + rows * S + rk, NO_ERROR)]
    vals = [val]
    for offset, lam in ((0, lam_a), (B, lam_c)):
        if isinstance(lam, torch.Tensor):
            lam = lam.to(device=dev, dtype=torch.float64)
            keys.append(torch.where((lam >= 0) & (lam <= 1), NO_ERROR, offset + rows))
            vals.append(lam)
    rec = torch.stack([torch.cat(keys), torch.cat(vals).view(torch.int64)], dim=1)  # (N, 2)
    return reduce_records(rec)


def error_from_record(key: int, bits: int, B: int, T: int) -> AdvantageInputError | None:
    """The error a record names (None for NO_ERROR): the eager check's message, word for word."""
    if key == NO_ERROR:
        return None
    value = struct.unpack("<d", struct.pack("<q", bits))[0]
    if key < B:
        return AdvantageInputError(f"lam[{key}] is {value} (must be in [0, 1])")
    if key < 2 * B:
        return AdvantageInputError(f"lam_critic[{key - B}] is {value} (must be in [0, 1])")
    b, rk = divmod(key - 2 * B, 4 * T + 4)
    if rk == 0:
        return value_message(4, b, -1, value)
    return value_message(rk % 4 + 1, b, rk // 4 - 1, value)


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
