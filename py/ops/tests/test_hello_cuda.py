"""The CUDA half of the build chain. Tagged `gpu`: skips, saying why, without a usable device."""
import pytest
import torch

from py.ops import _native, hello


def _cuda_module_or_skip():
    module = _native.load("hello_cuda")
    if module is None:
        pytest.skip(_native.unavailable_reason("hello_cuda"))
    return module


def test_cuda_extension_imports_without_a_gpu():
    module = _cuda_module_or_skip()
    count, error = module.device_count()
    assert count >= 0 or error  # a GPU-less machine reports an error string instead of crashing
    assert module.cutlass_version().startswith("4.")


@pytest.mark.parametrize("n", [1, 1000, 1 << 20])
def test_cuda_matches_reference(n):
    _cuda_module_or_skip()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    x = torch.randn(2 * n, device="cuda")[::2]
    y = torch.full((n,), float("nan"), device="cuda")  # poisoned: unwritten elements stay NaN
    y.copy_(torch.randn(n, device="cuda"))
    want = hello.axpy_reference(y.double().cpu(), x.double().cpu(), 1.5)
    got = hello.axpy_(y, x, 1.5, backend="cuda")
    torch.cuda.synchronize()
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-6, atol=1e-6)
