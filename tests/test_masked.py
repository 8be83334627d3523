"""Masked reductions: statistics over action tokens only; whitening's compiled path
against the plain torch one."""

from __future__ import annotations

import pytest
import torch

from gae.masked import masked_mean, masked_var, masked_whiten, masked_whiten_torch


def test_masked_mean_and_var_ignore_padding_garbage():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    m = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_mean(x, m).item() == pytest.approx(11 / 4)
    # unbiased variance of [1, 2, 3, 5]: mean 2.75, squares 3.0625+0.5625+0.0625+5.0625 = 8.75, /3
    assert masked_var(x, m).item() == pytest.approx(8.75 / 3)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_of_empty_row_is_zero_not_nan():
    x = torch.randn(2, 4)
    m = torch.tensor([[False] * 4, [True] * 4])
    assert masked_mean(x, m, dim=1)[0].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whiten_compiled_matches_torch(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 100, generator=g) * 3 + 7).to(dtype)
    m = torch.rand(64, 100, generator=g) < 0.6
    x_garbage = torch.where(m, x, torch.tensor(float("nan"), dtype=dtype))
    w = masked_whiten(x_garbage, m)
    ref = masked_whiten_torch(x, m)
    torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-5)
    assert bool((w[~m] == 0).all())
    assert masked_mean(w, m).abs().item() < 1e-5
    assert masked_var(w, m).item() == pytest.approx(1.0, rel=1e-4)
    kept = masked_whiten(x, m, shift_mean=False)
    assert masked_mean(kept, m).item() == pytest.approx(masked_mean(x, m).item(), rel=1e-4)


@pytest.mark.parametrize("n_actions", [0, 1])
def test_whiten_with_fewer_than_two_tokens_is_a_clear_error(n_actions):
    x = torch.randn(2, 3)
    m = torch.zeros(2, 3, dtype=torch.bool)
    m.view(-1)[:n_actions] = True
    with pytest.raises(ValueError, match="at least 2 action tokens"):
        masked_whiten(x, m)
    with pytest.raises(ValueError, match="at least 2 action tokens"):
        masked_whiten_torch(x, m)
