"""The fused whole-row lerp (:mod:`lwmm_lab.engine.fused`): the real Triton kernel on a GPU,
Triton's interpreter on CPU tensors elsewhere, against torch's own lerp."""

from __future__ import annotations

import warnings

import pytest
import torch

from lwmm_lab.engine import fused

from .conftest import TRITON_ON_CPU


@pytest.fixture
def kernel_on(device: str, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """``device``, with the fused kernel enabled there (skipped where it cannot run)."""
    if device == "cpu" and not TRITON_ON_CPU:
        pytest.skip("Triton runs on CPU tensors only under its interpreter")
    monkeypatch.setitem(fused.FUSED, "cpu", True)
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.delenv("LWMM_TRITON", raising=False)
    return torch.device(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # a float64 input: a float64 pool
def test_the_fused_lerp_is_torch_s_lerp_with_each_column_s_weight_by_row(kernel_on, dtype) -> None:
    """Over a length that is no multiple of the block, with the weights a strided column of a
    table: torch's lerp to rounding, the ends exact at weights 0 and 1, in place too."""
    g = torch.Generator().manual_seed(0)
    n = 3 * fused.BLOCK + 17
    start, end = torch.randn(2, n, generator=g, dtype=dtype).to(kernel_on)
    table = torch.rand(9, 3, generator=g, dtype=dtype)
    table[:3, 1] = torch.tensor([0.0, 0.5, 1.0])
    table, weights = table.to(kernel_on), table[:, 1].to(kernel_on)
    rows = torch.randint(0, 9, (n,), generator=g, dtype=torch.int32).to(kernel_on)
    out = torch.empty_like(start)
    assert fused.fused_enabled(kernel_on)
    assert fused.lerp_by_row(start, end, table[:, 1], rows, out) is out
    expected = torch.lerp(start, end, weights.index_select(0, rows))
    # A few units in the last place of the largest value (a fused multiply-add rounds once where
    # two operations round twice), so a float64 value that passed through float32 fails it.
    ulp = torch.finfo(dtype).eps * float(torch.maximum(start.abs(), end.abs()).max())
    torch.testing.assert_close(out, expected, rtol=0, atol=4 * ulp)
    assert torch.equal(out[rows == 0], start[rows == 0]), "weight 0: the start exactly"
    assert torch.equal(out[rows == 2], end[rows == 2]), "weight 1: the end exactly"
    assert fused._failed is None, "the kernel ran: no fallback"
    fused.lerp_by_row(start, end, table[:, 1], rows, out=start)
    assert torch.equal(start, out), "in place, as the chain of lerps runs"


class _Unlaunchable:
    """A kernel whose every launch fails, as a missing compiler makes Triton's first launch."""

    def __getitem__(self, grid: tuple[int, ...]) -> None:
        raise RuntimeError("Failed to find C compiler.\nPlease specify via CC")


@pytest.mark.skipif(fused.triton is None, reason="no Triton")
def test_a_kernel_that_fails_warns_once_and_the_torch_ops_serve(monkeypatch) -> None:
    monkeypatch.setitem(fused.FUSED, "cpu", True)
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.setattr(fused, "_lerp_by_row", _Unlaunchable())
    start, end, weights = torch.randn(5), torch.randn(5), torch.tensor([0.25, 0.75])
    rows = torch.tensor([0, 1, 1, 0, 1], dtype=torch.int32)
    expected = torch.lerp(start, end, weights[rows.long()])
    with pytest.warns(UserWarning, match=r"fused re-merge kernel failed \(Failed to find C comp"):
        assert torch.equal(fused.lerp_by_row(start, end, weights, rows, torch.empty(5)), expected)
    assert not fused.fused_enabled(torch.device("cpu")), "torch ops from then on"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no second warning
        assert torch.equal(fused.lerp_by_row(start, end, weights, rows, torch.empty(5)), expected)
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.setenv("LWMM_TRITON", "0")
    assert not fused.fused_enabled(torch.device("cpu"))
