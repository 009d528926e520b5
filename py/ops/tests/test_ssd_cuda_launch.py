"""The SSD CUDA binding without a GPU: the extension imports on any machine where it was built, so
its geometry and argument checks run on the dict that py.ops.ssd.kernel_params fills (the one the
CPU module reads too), at CPU addresses. The kernels themselves have not run here (README, "CUDA
kernels")."""
import math

import pytest
import torch

from py.ops import _native, ssd_cuda
from py.ops.ssd import kernel_params


def _module(name):
    mod = _native.load(name)
    if mod is None:
        pytest.skip(_native.unavailable_reason(name))
    return mod


def _inputs(dtype=torch.float32, b=2, L=150, h=4, p=16, g=2, n=24, causal=True):
    mk = lambda *s: torch.zeros(*s, dtype=dtype)
    f32 = lambda *s: torch.zeros(*s)
    return dict(x=mk(b, L, h, p), dt=mk(b, L, h), A=f32(h), B=mk(b, L, g, n), C=mk(b, L, g, n), D=f32(h),
                z=mk(b, L, h, p), dt_bias=f32(h), initial_states=f32(b, h, p, n) if causal else None)


def _params(over=None, tensor_dtype=torch.float32, causal=True):
    """The dict of a (2, 150, 4, 16) problem, 2 groups, dstate 24, chunk 64, with `over` applied."""
    t = _inputs(tensor_dtype, causal=causal)
    p = kernel_params(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, t["D"], t["z"], t["dt_bias"], True, causal,
                      t["initial_states"])
    fake = dict(y=0x10000, final_states=0x20000, ws_dt=0x30000, ws_cumsum=0x40000, ws_states=0x50000)
    p.update(fake)
    p.update(over or {})
    return p, t  # t keeps the tensors (and their addresses) alive


def test_layout():
    mod = _module("ssd_cuda")
    params, _ = _params()
    lay = mod.layout(params)
    assert (lay["chunk"], lay["chunks"], lay["qblocks"], lay["pblocks"], lay["nblocks"]) == (64, 3, 1, 1, 1)
    assert lay["ws_dt"] == 2 * 4 * 3 * 64 and lay["ws_states"] == 2 * 3 * 4 * 16 * 24
    assert lay["state_blocks"] == 2  # 16 * 24 = 384 (p, n) elements over 256 threads
    nc, _ = _params(causal=False)
    assert mod.layout(nc)["chunk"] == 256 and mod.layout(nc)["chunks"] == 1  # non-causal: 256-token blocks
    assert mod.max_chunk == ssd_cuda.MAX_CHUNK


def test_valid_parameters_pass():
    mod = _module("ssd_cuda")
    for dtype in ssd_cuda.DTYPES:
        params, _keep = _params(tensor_dtype=dtype)
        mod.check(params, False)


@pytest.mark.parametrize("over, message", [
    (dict(chunk_size=257), r"chunk_size must be in \[1, 256\] for the causal kernels, got 257"),
    (dict(groups=3), r"groups must divide heads, got heads=4 groups=3"),
    (dict(y=0), r"y is required"),
    (dict(ws_states=0), r"ws_states is required"),
    (dict(x=0x10002), r"x must be 4-byte aligned"),
    (dict(seqlen=0), r"batch, L, heads, headdim and dstate must be >= 1"),
    (dict(dt_min=0.5, dt_max=0.1), r"dt_limit must satisfy dt_min <= dt_max"),
    (dict(causal=False, initial_states=0x60000), r"initial_states is only valid with causal=true"),
    (dict(dtype="float64"), r"dtype must be float32, float16 or bfloat16, got float64"),
    (dict(bogus=1), r"unknown parameter 'bogus'"),
    (dict(x_strides=[1, 2, 3]), r"x_strides must have 4 entries, got 3"),
])
def test_forward_argument_errors(over, message):
    mod = _module("ssd_cuda")
    params, _keep = _params(over)
    with pytest.raises(ValueError, match=message):
        mod.check(params, False)


def test_backward_needs_its_buffers():
    mod = _module("ssd_cuda")
    params, _keep = _params()
    with pytest.raises(ValueError, match=r"dout is required"):
        mod.check(params, True)
    grads = dict(dout=0x60000, pregate=0x70000, ws_dY=0x80000, dz=0x90000, ws_dstates=0xa0000, ws_extra=0xb0000,
                 ws_xz=0xc0000, ws_dcumsum=0xd0000, dx=0xe0000, ddt=0xf0000, dB=0x100000, dC=0x110000,
                 dA=0x120000, dbias=0x130000, dD=0x140000)
    mod.check(dict(params, **grads), True)
    with pytest.raises(ValueError, match=r"pregate is required"):  # z is given
        mod.check(dict(params, **dict(grads, pregate=0)), True)
    with pytest.raises(ValueError, match=r"dD is required"):
        mod.check(dict(params, **dict(grads, dD=0)), True)


def test_half_alignment():
    mod = _module("ssd_cuda")
    params, _keep = _params(dict(B=0x40001), torch.bfloat16)
    with pytest.raises(ValueError, match=r"B must be 2-byte aligned"):
        mod.check(params, False)


def test_cpu_module_reads_the_same_dict_and_refuses_dt_limit():
    """One dict format for both modules; dt_limit is a CUDA-only feature."""
    cpu = _module("ssd_cpu")
    t = _inputs()
    params = kernel_params(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, t["D"], t["z"], t["dt_bias"], True, True,
                           t["initial_states"])
    y, final = torch.empty_like(t["x"]), torch.empty(2, 4, 16, 24)
    cpu.fwd(dict(params, y=y.data_ptr(), final_states=final.data_ptr(), threads=1))
    assert torch.equal(y, torch.zeros_like(y))  # zero inputs: y = 0
    with pytest.raises(ValueError, match=r"dt_limit is not supported by the CPU kernel"):
        cpu.fwd(dict(params, y=y.data_ptr(), final_states=final.data_ptr(), dt_min=0.1, dt_max=math.inf))
    with pytest.raises(ValueError, match=r"unknown parameter 'ws_dtt'"):
        cpu.fwd(dict(params, ws_dtt=1))


def test_check_launch_names_the_problem():
    t = _inputs()
    with pytest.raises(ValueError, match=r"ssd: backend='cuda' needs CUDA tensors, got x on cpu"):
        ssd_cuda.check_launch(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, t["D"], t["z"], t["dt_bias"], True,
                              t["initial_states"])


def test_the_ops_have_cuda_kernels_and_auto_picks_them_only_where_they_apply(monkeypatch):
    """torch.ops.visionssm.ssd(_backward) have CUDA kernels (py.ops.ssd registers ssd_cuda's); the
    public op's "auto" names the extension for the dtypes and chunk sizes the kernels take."""
    for op in ("visionssm::ssd", "visionssm::ssd_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
    import importlib
    ssd_mod = importlib.import_module("py.ops.ssd")
    seen = []

    def resolve(op, backend, device, cpu_dtype_ok=True, cuda_extension=None):
        seen.append(cuda_extension)
        return "reference"

    monkeypatch.setattr(ssd_mod._common, "resolve_backend", resolve)
    t = _inputs(b=1, L=20, h=2, p=4, g=1, n=4)
    call = lambda chunk, causal, x=t["x"]: ssd_mod.ssd(x, t["dt"], t["A"], t["B"], t["C"], chunk, causal=causal,
                                                      initial_states=t["initial_states"][:1] if causal else None)
    call(64, True)
    call(512, True)                   # causal chunk past the kernels' 256: the reference
    call(512, False)                  # non-causal ignores chunk_size
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    ssd_mod.ssd(t64["x"], t64["dt"], t64["A"], t64["B"], t64["C"], 64)  # float64: no CUDA kernel
    assert seen == ["ssd_cuda", None, "ssd_cuda", None]
