"""Synthetic rollouts for the demo and the benchmarks: variable-length responses with
observation spans (multi-turn), a sequence score on the last action token, KL noise."""

from __future__ import annotations

import time

import torch


def synthetic_batch(
    B: int, T: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, obs_spans: bool = True
):
    """`(rewards, values, mask)` shaped `(B, T)`: rows of random length, a few observation
    spans masked out, garbage (NaN) in values at non-action positions to prove it is ignored."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)
    pos = torch.arange(T).unsqueeze(0)
    mask = pos < lengths.unsqueeze(1)
    if obs_spans and T >= 16:
        starts = torch.randint(0, T, (B,), generator=g)
        width = torch.randint(1, max(2, T // 16), (B,), generator=g)
        obs = (pos >= starts.unsqueeze(1)) & (pos < (starts + width).unsqueeze(1))
        mask &= ~obs
    values = torch.randn(B, T, generator=g, dtype=dtype) * 0.5
    values = torch.where(mask, values, torch.full((), float("nan"), dtype=dtype))
    rewards = torch.randn(B, T, generator=g, dtype=dtype) * 0.01  # a KL penalty per token
    rewards = torch.where(mask, rewards, torch.zeros((), dtype=dtype))
    # The score lands on each row's last action token.
    last = torch.where(mask.any(1), T - 1 - mask.flip(1).to(torch.int8).argmax(1), torch.zeros_like(lengths))
    score = torch.rand(B, generator=g, dtype=dtype)
    rows = torch.nonzero(mask.any(1)).flatten()
    rewards[rows, last[rows]] += score[rows]
    return rewards, values, mask


def _best_of(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_demo(*, batch: int, length: int, gamma: float, lam: float, seed: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from gae.advantages import compute_gae
    from gae.masked import masked_mean, masked_whiten

    console = Console()
    r, v, m = synthetic_batch(batch, length, seed=seed)
    adv, ret = compute_gae(r, v, m, gamma=gamma, lam=lam)
    white = masked_whiten(adv, m)
    n_tok = int(m.sum())
    console.print(
        f"[bold]GAE[/bold] on {batch} x {length} synthetic rollouts ({n_tok:,} action tokens, "
        f"gamma={gamma}, lam={lam}): mean advantage {masked_mean(adv, m).item():+.4f}, "
        f"mean return {masked_mean(ret, m).item():+.4f}, whitened mean {masked_mean(white, m).item():+.2e}"
    )
    tokens = batch * length
    rows = [
        ("numba (one pass, checked)", lambda: compute_gae(r, v, m, gamma=gamma, lam=lam, backend="numba")),
        ("torch loop over T", lambda: compute_gae(r, v, m, gamma=gamma, lam=lam, backend="torch")),
        ("memory copy of the same bytes", lambda: (r.clone(), v.clone(), m.clone())),
    ]
    table = Table(title="advantage backends (median of 5, this machine, this run)")
    table.add_column("path")
    table.add_column("ms", justify="right")
    table.add_column("M tokens/s", justify="right")
    for name, fn in rows:
        s = _best_of(fn)
        table.add_row(name, f"{s * 1e3:.2f}", f"{tokens / s / 1e6:,.0f}")
    console.print(table)
    console.print(
        "Full benchmark: [bold]make bench[/bold] (bench/advantages.py); results in bench/RESULTS.md."
    )
