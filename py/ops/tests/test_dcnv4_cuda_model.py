"""The DCNv4 CUDA kernels' algorithm, checked on the CPU through a thread-by-thread model, and the
extension's launch checks (no GPU needed).

The kernels have not run on a GPU. `dcnv4_cuda_model` replays them (forward chunks, backward
units and lane tree, deterministic sort + segmented gather, atomic scatter) and stands in for the
extension under the real binding (py.ops.dcnv4_cuda), so the binding's params, buffers and
workspace run too. Each case compares the forward and both gradients with the float64
reference's autograd and checks that every output element is written exactly once. What this
cannot check: float32 rounding, vector-load faults, races, occupancy.
"""
import warnings

import pytest
import torch

from py.ops import _cuda_dispatch, _native, dcnv4_cuda
from py.ops.dcnv4 import _cfg, _out_size, dcnv4_reference
from py.ops.tests import dcnv4_cuda_model as model


@pytest.fixture
def fake(monkeypatch):
    """The model as cc.kernels.dcnv4_cuda; the real extension's checks and vector-path choice run
    first when it is built (wherever nvcc is found)."""
    ext = model.FakeExtension(real=_native.load(dcnv4_cuda.EXT))
    original = _native.require
    monkeypatch.setattr(_native, "require", lambda name: ext if name == dcnv4_cuda.EXT else original(name))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    _cuda_dispatch.reset_self_checks()
    yield ext
    _cuda_dispatch.reset_self_checks()


def _problem(seed, N, H, W, G, D, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, scale=1.0, rc=False,
             spread=2.0, om_extra=0, value_transposed=False):
    g = torch.Generator().manual_seed(seed)
    K = kh * kw - int(rc)
    Ho, Wo = _out_size(H, kh, sh, ph, dh), _out_size(W, kw, sw, pw, dw)
    P = -(-3 * G * K // 8) * 8
    if value_transposed:  # (N, H, W, C) with H and W strides swapped: channel stride 1, rows not dense
        value = torch.randn(N, W, H, G * D, generator=g).transpose(1, 2)
    else:
        value = torch.randn(N, H, W, G * D, generator=g)
    om = torch.randn(N, Ho, Wo, P + om_extra, generator=g)[..., :P] * spread
    gy = torch.randn(N, Ho, Wo, G * D, generator=g)
    return value, om, gy, (kh, kw, sh, sw, ph, pw, dh, dw, G, D, scale, rc)


def _reference(value, om, gy, conv):
    v, o = value.double().requires_grad_(), om.double().requires_grad_()
    out = dcnv4_reference(v, o, *conv)
    return (out.detach(),) + torch.autograd.grad(out, (v, o), gy.double())


def _close(name, got, want, tol=2e-6):
    scale = want.abs().max().item() + 1e-30
    err = (got.double() - want).abs().max().item()
    assert err <= tol * scale + 1e-6, f"{name}: max |model - reference| = {err:.3g} (max |reference| {scale:.3g})"


def _written_once(ext, names):
    for name in names:
        w = ext.last_writes[name]
        assert bool((w == 1).all()), f"{name}: {int((w == 0).sum())} never written, {int((w > 1).sum())} more than once"


CASES = {  # N, H, W, G, D and keyword overrides
    "vector path, 3x3 pad 1": ((2, 6, 7, 2, 16), {}),
    "vector path, D 8 (one chunk per lane)": ((1, 5, 5, 3, 8), {}),
    "vector path, D 264 (33 chunks > 32 lanes: lanes loop)": ((1, 3, 4, 1, 264), dict(spread=1.0)),
    "scalar path, D 5, remove_center, stride 2": ((2, 7, 6, 2, 5), dict(sh=2, rc=True)),
    "scalar path, D 12 (not % 8), dilation 2, 5x3": ((1, 8, 9, 1, 12), dict(kh=5, kw=3, ph=2, pw=1, dh=2)),
    "offset_scale 0.5, far offsets (many outside)": ((2, 4, 5, 2, 16), dict(scale=0.5, spread=6.0)),
    "1x1 kernel, no padding": ((3, 4, 4, 2, 8), dict(kh=1, kw=1, ph=0, pw=0)),
    "strided offset_mask, transposed value rows": ((2, 5, 6, 2, 16), dict(om_extra=8, value_transposed=True)),
}


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
@pytest.mark.parametrize("case", list(CASES))
def test_model_matches_reference(fake, case, deterministic):
    shape, kw = CASES[case]
    value, om, gy, conv = _problem(7, *shape, **kw)
    cfg = _cfg(value, om, *conv)
    out = dcnv4_cuda.kernel_forward(value, om, cfg)
    _written_once(fake, ["out"])
    gv, gom = dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic=deterministic)
    _written_once(fake, ["grad_offset_mask"] + (["grad_value"] if deterministic else []))
    want = _reference(value, om, gy, conv)
    for name, got, ref in zip(("out", "grad_value", "grad_offset_mask"), (out, gv, gom), want):
        _close(name, got, ref)
    vec = model.vector_width(fake.calls[0][1], False)
    assert vec == (model.VEC if shape[4] % 8 == 0 else 1), f"{case}: chunk width {vec}"


@pytest.mark.parametrize("seed", range(8))
def test_model_fuzz(fake, seed):
    """Random sizes, kernels, strides, paddings, dilations, scales and chunk paths (seeded)."""
    r = torch.Generator().manual_seed(100 + seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=r))
    kh, kw = pick(1, 2) * 2 - 1, pick(1, 3)
    rc = kw % 2 == 1 and kh * kw > 1 and pick(0, 1) == 1
    kw_ = dict(kh=kh, kw=kw, sh=pick(1, 2), sw=pick(1, 2), ph=pick(0, 2), pw=pick(0, 2), dh=pick(1, 2), dw=pick(1, 2),
               scale=[1.0, 0.5, 1.7][pick(0, 2)], rc=rc, spread=[0.5, 2.0, 5.0][pick(0, 2)],
               om_extra=8 * pick(0, 1), value_transposed=pick(0, 1) == 1)
    H = pick(kw_["dh"] * (kh - 1) + 1, 9)
    W = pick(kw_["dw"] * (kw - 1) + 1, 9)
    value, om, gy, conv = _problem(seed, pick(1, 3), H, W, pick(1, 3), [3, 8, 16, 40][pick(0, 3)], **kw_)
    cfg = _cfg(value, om, *conv)
    deterministic = pick(0, 1) == 1
    got = (dcnv4_cuda.kernel_forward(value, om, cfg),) + dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic)
    for name, g, ref in zip(("out", "grad_value", "grad_offset_mask"), got, _reference(value, om, gy, conv)):
        _close(name, g, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_16bit(fake, dtype):
    """16-bit tensors through the binding (the reference sees the same rounded inputs)."""
    value, om, gy, conv = (t.to(dtype) if torch.is_tensor(t) else t for t in _problem(9, 1, 5, 6, 2, 16))
    cfg = _cfg(value, om, *conv)
    got = (dcnv4_cuda.kernel_forward(value, om, cfg),) + dcnv4_cuda.kernel_backward(gy, value, om, cfg)
    for name, g, ref in zip(("out", "grad_value", "grad_offset_mask"), got, _reference(value, om, gy, conv)):
        assert g.dtype == dtype
        _close(name, g, ref, tol=1e-2)


def test_deterministic_segments_are_sorted_stably(fake):
    """Keys ascend, and within one destination the entry ids ascend (a stable sort of ids in order)."""
    value, om, gy, conv = _problem(3, 1, 4, 4, 1, 8, spread=0.7)
    cfg = _cfg(value, om, *conv)
    dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic=True)
    keys = fake.sorted_keys
    assert bool((keys[1:] >= keys[:-1]).all())
    geo = model.Geometry(fake.calls[-1][1], 8)
    assert int((keys < geo.dests).sum()) > 0 and int(keys.max()) <= geo.dests


def test_a_wrong_lane_tree_is_caught(fake, monkeypatch):
    """The check can fail: a tree that skips its first level loses half the lanes' sums."""
    monkeypatch.setattr(model, "first_tree_stride", lambda lanes: max(1, (lanes - 1).bit_length() - 1) // 2)
    value, om, gy, conv = _problem(5, 1, 4, 5, 1, 64)  # 8 lanes
    cfg = _cfg(value, om, *conv)
    _, gom = dcnv4_cuda.kernel_backward(gy, value, om, cfg)
    _, _, want = _reference(value, om, gy, conv)
    with pytest.raises(AssertionError, match="grad_offset_mask"):
        _close("grad_offset_mask", gom, want)


def test_op_path_self_checks_then_uses_the_kernel(fake):
    value, om, gy, conv = _problem(11, 2, 5, 5, 2, 16)
    out = dcnv4_cuda.op_forward(value, om, *conv)
    gv, gom = dcnv4_cuda.op_backward(gy, value, om, *conv)
    want = _reference(value, om, gy, conv)
    for name, got, ref in zip(("out", "grad_value", "grad_offset_mask"), (out, gv, gom), want):
        _close(name, got, ref)
    assert [c[0] for c in fake.calls].count("forward") == 2  # the self-check's and the call's


def test_a_failed_self_check_warns_once_and_falls_back(fake, monkeypatch):
    monkeypatch.setattr(model, "kernel_point", lambda k, kh, kw, rc: (k % kw, k // kw))  # transposed points
    value, om, gy, conv = _problem(13, 1, 5, 6, 2, 16)
    with pytest.warns(RuntimeWarning, match=r"dcnv4\[vec8, deterministic\].*self-check"):
        out = dcnv4_cuda.op_forward(value, om, *conv)
    _close("out", out, _reference(value, om, gy, conv)[0])  # the reference's answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcnv4_cuda.op_forward(value, om, *conv)  # decided once


def test_empty_problems_skip_the_kernels(fake):
    value, om, gy, conv = _problem(1, 2, 4, 4, 2, 8)
    conv0 = conv[:8] + (0, 8) + conv[10:]
    v0 = value[..., :0]
    cfg = _cfg(v0, om, *conv0)
    assert dcnv4_cuda.kernel_forward(v0, om, cfg).shape == (2, 4, 4, 0)
    gv, gom = dcnv4_cuda.kernel_backward(gy[..., :0], v0, om, cfg)
    assert gv.shape == v0.shape and bool((gom == 0).all())
    assert fake.calls == []


def test_backward_mode_switch():
    assert dcnv4_cuda.set_backward_mode("atomic") == "deterministic"
    try:
        assert not dcnv4_cuda._deterministic()
        torch.use_deterministic_algorithms(True)
        try:
            assert dcnv4_cuda._deterministic()  # torch's flag wins
        finally:
            torch.use_deterministic_algorithms(False)
    finally:
        dcnv4_cuda.set_backward_mode("deterministic")
    with pytest.raises(ValueError, match="backward mode must be one of"):
        dcnv4_cuda.set_backward_mode("fast")


def test_check_launch_needs_cuda_tensors():
    value, om, _, _ = _problem(1, 1, 3, 3, 1, 8)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors, got value on cpu"):
        dcnv4_cuda.check_launch(value, om)


# ---- the real extension's argument checks (fake device addresses; nothing is launched) ----

def _real():
    mod = _native.load(dcnv4_cuda.EXT)
    if mod is None:
        pytest.skip(_native.unavailable_reason(dcnv4_cuda.EXT))
    return mod


def _params(**over):
    """A (2, 8, 8, 2*16) float16 problem, 3x3 pad 1, at fake 256-byte aligned addresses."""
    p = dict(dtype="float16", batch=2, height=8, width=8, out_height=8, out_width=8, offset_channels=56,
             kernel_h=3, kernel_w=3, pad_h=1, pad_w=1, group=2, group_channels=16,
             value=0x10000, value_strides=[2048, 256, 32, 1], offset_mask=0x20000,
             offset_mask_strides=[3584, 448, 56, 1], out=0x30000, grad_output=0x40000,
             grad_output_strides=[2048, 256, 32, 1], grad_value=0x50000, grad_offset_mask=0x60000)
    p.update(over)
    return p


def test_valid_parameters_pass_and_pick_the_vector_path():
    mod = _real()
    mod.check(_params(), False)
    mod.check(_params(), True)
    assert mod.vector_width(_params(), False) == 8 and mod.vector_width(_params(), True) == 8
    assert mod.vector_width(_params(group_channels=12, value_strides=[1536, 192, 24, 1]), False) == 1
    assert mod.vector_width(_params(value=0x10008), False) == 1  # 8-byte aligned only
    assert mod.vector_width(_params(grad_value=0x50002), True) == 1
    assert mod.vector_width(_params(dtype="float32", value_strides=[2080, 260, 32, 1]), False) == 8  # 1040 B rows
    assert mod.vector_width(_params(dtype="float32", value_strides=[2072, 258, 32, 1]), False) == 1  # 1032 B rows
    assert model.vector_width(_params(), True) == 8


@pytest.mark.parametrize("over, backward, message", [
    (dict(dtype="float64"), False, r"dtype must be float32, float16 or bfloat16, got float64"),
    (dict(bogus=1), False, r"unknown parameter 'bogus'"),
    (dict(offset_channels=48), False, r"P=48 < 3\*group\*K=54"),
    (dict(value_strides=[2048, 256, 32, 2]), False, r"value must have channel stride 1"),
    (dict(value_strides=[1, 2, 3]), False, r"value_strides must have 4 entries"),
    (dict(value=0x10001), False, r"value must be a non-null 2-byte aligned pointer"),
    (dict(out=0), False, r"out must be a non-null aligned pointer"),
    (dict(remove_center=True, kernel_h=2), False, r"remove_center needs odd kernels"),
    (dict(height=0), False, r"height, width >= 1"),
    (dict(grad_output_strides=[2048, 256, 32, 3]), True, r"grad_output must have channel stride 1"),
    (dict(grad_value=0), True, r"grad_value must be a non-null 2-byte aligned pointer"),
    (dict(workspace=0x70010), True, r"workspace must be 256-byte aligned"),
    (dict(batch=1 << 20, height=64, width=64, out_height=64, out_width=64), False, r"too large for 32-bit"),
])
def test_argument_errors(over, backward, message):
    with pytest.raises(ValueError, match=message):
        _real().check(_params(**over), backward)
