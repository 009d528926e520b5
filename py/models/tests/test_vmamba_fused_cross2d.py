"""SS2D's fused cross-2D path: on CUDA (extension built) `forward_core` calls
`selective_scan_cross2d` in place of cross_scan -> selective_scan -> cross_merge. No GPU here, so the
fused op is substituted on the CPU, once by the unfused plain-PyTorch composition and once by the
Python binding over the step-by-step CPU model of the CUDA kernels, and the layer's output and
every gradient must equal the unfused path's."""
import types
import warnings

import pytest
import torch

from py.models import vmamba
from py.ops import _common, _cuda_dispatch, _native, selective_scan_cuda
from py.ops.tests import selective_scan_cuda_model as kernel_model


def _unfused_reference(x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto"):
    return selective_scan_cuda.selective_scan_cross2d_reference(x, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _binding_over_kernel_model(x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               backend="auto"):
    return selective_scan_cuda._apply(x, delta, A, B, C, D, z, delta_bias, delta_softplus, False, tuple(x.shape[2:]))


def _layer_and_grads(layer, x, weight):
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weight).sum(), [x] + params)
    return [out] + list(grads)


@pytest.mark.parametrize("substitute", ["unfused reference", "binding over the kernel model"])
@pytest.mark.parametrize("d_state", [1, 2])
def test_fused_path_equals_unfused_path(monkeypatch, substitute, d_state):
    torch.manual_seed(0)
    layer = vmamba.SS2D(8, d_state=d_state, ssm_ratio=1.5, dt_rank=3, backend="auto")
    x, weight = torch.randn(2, 8, 9, 7), torch.randn(2, 8, 9, 7)
    unfused = _layer_and_grads(layer, x, weight)  # CPU: cross_scan -> selective_scan -> cross_merge kernels

    calls = []
    impl = _unfused_reference if substitute == "unfused reference" else _binding_over_kernel_model

    def fused(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return impl(x, *args, **kwargs)

    if impl is _binding_over_kernel_model:  # the kernel model stands in for the CUDA extension
        ext = kernel_model.FakeExtension()
        original = _native.require
        monkeypatch.setattr(_native, "require", lambda n: ext if n == selective_scan_cuda.EXT else original(n))
        monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    monkeypatch.setattr(selective_scan_cuda, "fused_cross2d_applies", lambda x, d_state, backend: True)
    monkeypatch.setattr(selective_scan_cuda, "selective_scan_cross2d", fused)
    got = _layer_and_grads(layer, x, weight)
    assert calls == [(2, 12, 9, 7)], "forward_core did not take the fused path"
    names = ["output", "dx"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    for name, g, u in zip(names, got, unfused):
        torch.testing.assert_close(g, u, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def _map(dtype=torch.float32, device="cuda"):
    """Just the attributes fused_cross2d_applies reads (no CUDA tensor can exist here)."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype)


@pytest.mark.parametrize("x, d_state, backend, built, expected", [
    (_map(), 1, "auto", True, True),
    (_map(torch.bfloat16), 16, "cuda", True, True),
    (_map(), 256, "auto", True, True),
    (_map(), 257, "auto", True, False),        # beyond the kernels' d_state
    (_map(torch.float64), 1, "auto", True, False),  # no float64 CUDA kernel
    (_map(), 1, "reference", True, False),
    (_map(), 1, "cpu", True, False),           # the unfused ops raise their own error
    (_map(), 1, "auto", False, False),         # extension not built: the unfused fallback
    (_map(device="cpu"), 1, "auto", True, False),
])
def test_fused_cross2d_applies_only_to_the_built_cuda_kernels(monkeypatch, x, d_state, backend, built, expected):
    load = _native.load  # the extension is stubbed as built or not, whatever this machine built
    stub = lambda n: (object() if built else None) if n == selective_scan_cuda.EXT else load(n)
    monkeypatch.setattr(_native, "load", stub)
    monkeypatch.setattr(_native, "unavailable_reason", lambda n: "stubbed as not built")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the unbuilt-extension fallback warns once
        assert selective_scan_cuda.fused_cross2d_applies(x, d_state, backend) is expected


def test_force_backend_reference_keeps_the_unfused_path(monkeypatch):
    monkeypatch.setattr(_native, "load", lambda n: object())
    with _common.force_backend("reference"):
        assert not selective_scan_cuda.fused_cross2d_applies(_map(), 1, "auto")
