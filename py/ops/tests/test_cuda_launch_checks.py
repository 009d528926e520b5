"""The CUDA launch code's argument checks, without a GPU: the extensions import on any machine, so
their checks run with fake device pointers, and py.ops' CUDA dispatch is checked on tensors'
metadata. The kernels themselves have not run here (README, "CUDA kernels")."""
import types
import warnings

import pytest
import torch

from py.ops import _cuda_dispatch, _native, selective_scan


def _module(name):
    mod = _native.load(name)
    if mod is None:
        pytest.skip(_native.unavailable_reason(name))
    return mod


def _params(**over):
    """Launch parameters of a (2, 8, 300) float32 problem, N = 16, 2 groups, at fake addresses."""
    p = dict(dtype="float32", batch=2, dim=8, seqlen=300, dstate=16, groups=2, softplus=True,
             u=0x10000, u_batch_stride=2400, u_dim_stride=300, delta=0x20000, delta_batch_stride=2400,
             delta_dim_stride=300, A=0x30000, B=0x40000, B_batch_stride=9600, B_group_stride=4800,
             B_state_stride=300, C=0x50000, C_batch_stride=9600, C_group_stride=4800, C_state_stride=300,
             y=0x60000)
    p.update(over)
    return p


def test_chunking_and_slices():
    mod = _module("selective_scan_cuda")
    assert mod.chunk_len() == 256
    assert mod.bwd_slices(96 * 4, 4, 1) == 12      # 96 channels per group, 8 per CTA on the N = 1 path
    assert mod.bwd_slices(1536, 1, 16) == 384      # 4 per CTA on the tiled path
    assert mod.fwd_blocks(_params()) == 2 * 2 * 1  # batch x groups x ceil(4 channels / 4 rows)
    assert mod.fwd_blocks(_params(dim=10)) == 2 * 2 * 2


def test_valid_parameters_pass():
    _module("selective_scan_cuda").check(_params(), False)


@pytest.mark.parametrize("over, message", [
    (dict(dstate=257), r"d_state \(A.shape\[1\]\) must be in \[1, 256\], got 257"),
    (dict(dstate=0), r"d_state"),
    (dict(groups=3), r"groups must divide dim, got dim=8 groups=3"),
    (dict(u=0x10002), r"u must be 4-byte aligned"),
    (dict(dtype="bfloat16", B=0x40001), r"B must be 2-byte aligned"),
    (dict(y=0), r"y is required"),
    (dict(seqlen=0), r"batch, dim and L must be >= 1"),
    (dict(cross2d=True, groups=4, height=10, width=20), r"cross-2D needs H \* W == L"),
    (dict(cross2d=True, groups=2, height=10, width=30), r"cross-2D needs groups == 4"),
    (dict(dtype="float64"), r"dtype must be float32, float16 or bfloat16, got float64"),
    (dict(bogus=1), r"unknown parameter 'bogus'"),
])
def test_forward_argument_errors(over, message):
    mod = _module("selective_scan_cuda")
    with pytest.raises(ValueError, match=message):
        mod.check(_params(**over), False)
    with pytest.raises(ValueError, match=message):  # the launch checks before touching the device
        mod.forward(_params(**over), 0)


def test_backward_needs_its_buffers():
    mod = _module("selective_scan_cuda")
    with pytest.raises(ValueError, match="dout is required"):
        mod.check(_params(), True)
    full = _params(dout=0x70000, ckpt=0x80000, du=0x90000, ddelta=0xa0000, dA_part=0xb0000, dB_part=0xc0000,
                   dC_part=0xd0000)
    mod.check(full, True)
    with pytest.raises(ValueError, match="dz is required"):
        mod.check(dict(full, z=0xe0000, z_batch_stride=2400, z_dim_stride=300), True)
    with pytest.raises(ValueError, match="dD_part is required"):
        mod.check(dict(full, D=0xf0000), True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a usable GPU")
def test_launch_without_a_gpu_is_a_clear_error():
    mod = _module("selective_scan_cuda")
    with pytest.raises(RuntimeError, match=r"selective_scan_cuda.forward: CUDA error: "):
        mod.forward(_params(), 0)
    cs = _module("cross_scan_cuda")
    with pytest.raises(RuntimeError, match=r"cross_scan_cuda.scan: CUDA error: "):
        cs.scan(_cs_params(batch=1, channels=3, height=4, width=5, input_strides=[60, 20, 5, 1]))


def _cs_params(**changes):
    """A cross_scan kernel_params dict (cc/kernels/cross_scan/cross_scan_params.h) with fake pointers."""
    return dict(dict(dtype="float32", batch=1, channels=1, height=2, width=5, input=0x10000,
                     input_strides=[10, 10, 5, 1], output=0x20000, stream=0), **changes)


def test_cross_scan_cuda_argument_errors():
    cs = _module("cross_scan_cuda")
    with pytest.raises(ValueError, match="B, C, H, W must be >= 1"):
        cs.scan(_cs_params(height=0, input_strides=[0, 0, 0, 1]))
    with pytest.raises(ValueError, match="input_strides must have 4 entries"):
        cs.scan(_cs_params(input_strides=[1, 1]))
    with pytest.raises(ValueError, match="dtype must be"):
        cs.merge(_cs_params(dtype="int8", input_strides=[40, 10, 10, 5, 1]))
    with pytest.raises(ValueError, match="params lack 'output'"):
        cs.scan({k: v for k, v in _cs_params().items() if k != "output"})
    with pytest.raises(ValueError, match="y must be contiguous"):
        cs.merge(_cs_params(batch=2, input_strides=[40, 10, 10, 1, 2]))
    assert cs.num_blocks(2, 3, 33, 31) == 2 * 3 * 2 * 1


# ---- py.ops dispatch (tensor metadata only)

def _fake(device, dtype=torch.float32):
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype)


def test_dispatch_checks_device_and_dtype():
    with pytest.raises(ValueError, match=r"op: backend='cuda' needs CUDA tensors, got u on cpu"):
        _cuda_dispatch.check_cuda_tensors("op", (torch.float32,), u=_fake("cpu"))
    with pytest.raises(ValueError, match=r"op: B must be on the same device as u \(cuda:0\), got cuda:1"):
        _cuda_dispatch.check_cuda_tensors("op", (torch.float32,), u=_fake("cuda:0"), B=_fake("cuda:1"))
    with pytest.raises(TypeError, match=r"takes u with dtype in \(float32\), got torch.float64"):
        _cuda_dispatch.check_cuda_tensors("op", (torch.float32,), u=_fake("cuda:0", torch.float64))


def test_selective_scan_backend_cuda_rejects_cpu_tensors():
    u = torch.randn(1, 2, 5)
    args = (u, u, -torch.ones(2, 1), torch.randn(1, 1, 5), torch.randn(1, 1, 5))
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        selective_scan(*args, backend="cuda")


def test_self_check_falls_back_with_one_warning():
    _cuda_dispatch.reset_self_checks()
    wrong = lambda: [torch.ones(3)]
    right = lambda: [torch.zeros(3)]
    with pytest.warns(RuntimeWarning, match=r"op: the CUDA kernel failed its self-check .*differ from the float64"):
        assert not _cuda_dispatch.self_check("op", torch.float32, "cuda:0", wrong, right, 1e-3, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call remembers, silently
        assert not _cuda_dispatch.self_check("op", torch.float32, "cuda:0", wrong, right, 1e-3, 1e-3)
        assert _cuda_dispatch.self_check("op2", torch.float32, "cuda:0", right, right, 1e-3, 1e-3)

    def boom():
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    with pytest.warns(RuntimeWarning, match="RuntimeError: CUDA error: no CUDA-capable device"):
        assert not _cuda_dispatch.self_check("op3", torch.bfloat16, "cuda:0", boom, right, 1e-3, 1e-3)
    _cuda_dispatch.reset_self_checks()
