"""The build chain end to end: C++ and CUDA extensions built, loaded and agreeing with PyTorch."""
import pytest
import torch

from py.ops import _native, hello


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 100_003])
def test_cpu_matches_reference_on_strided_input(dtype, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n, generator=g, dtype=dtype)[::2]  # non-contiguous
    y = torch.randn(n, generator=g, dtype=dtype)
    want = hello.axpy_reference(y.clone(), x, -0.75)
    got = hello.axpy_(y, x, -0.75, backend="cpu")
    assert got is y
    # The kernel may fuse multiply-add (one rounding instead of two): allow an ulp or so.
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_cpu_extension_is_loaded_and_threaded():
    module = _native.require("hello_cpu")
    assert module.max_threads() >= 1


def test_bad_input_names_the_argument():
    y = torch.zeros(3)
    with pytest.raises(ValueError, match="x must have shape"):
        hello.axpy_(y, torch.zeros(4))
    with pytest.raises(TypeError, match="x must have dtype in"):
        hello.axpy_(y, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must be 1-D"):
        hello.axpy_(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="backend must be one of"):
        hello.axpy_(y, y, backend="tpu")
    with pytest.raises(TypeError, match="y must have dtype in"):
        hello.axpy_(torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32), backend="cpu")
