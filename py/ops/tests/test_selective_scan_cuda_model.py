"""The selective-scan CUDA kernels' algorithm, checked on the CPU through a step-by-step model.

The kernels have not run on a GPU. `selective_scan_cuda_model` replays them (chunks, lane
composition, warp shuffle scans, carried state, checkpoints, reverse adjoint scan, dB/dC slices,
cross-2D index maps) and stands in for the extension under the real Python binding
(py.ops.selective_scan_cuda), so the binding's strides, buffers and reductions run too. Each case
compares the forward, the last state and every gradient with the float64 reference's autograd, and
checks that every output element is written exactly once. What this cannot check: float32
rounding, the CUDA memory model (races, __syncwarp placement), vector loads, occupancy.
"""
import pytest
import torch

from py.ops import _cuda_dispatch, _native, selective_scan_cuda
from py.ops.selective_scan import selective_scan_reference
from py.ops.tests import selective_scan_cuda_model as model

_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def fake(monkeypatch):
    """The model as cc.kernels.selective_scan_cuda; the real extension's parameter checks run first
    when it is built (Bazel builds it wherever nvcc is found)."""
    real = _native.load("selective_scan_cuda")
    ext = model.FakeExtension(check=real.check if real is not None else None)
    original = _native.require
    monkeypatch.setattr(_native, "require", lambda name: ext if name == selective_scan_cuda.EXT else original(name))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    return ext


def _problem(seed, batch, dim, groups, N, L, z, D, bias, softplus, delta_scale=0.5, a_scale=0.02, hw=None):
    """|A| small by default, so the state outlives a chunk (256 steps) and a wrong carry shows."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)
    # Without softplus dt must stay positive, or exp(dt*A) > 1 grows without bound over L.
    delta = mk(batch, dim, L) * delta_scale if softplus else torch.rand(batch, dim, L, generator=g) * 0.5
    return dict(u=mk(batch, dim // 4, *hw) if hw else mk(batch, dim, L), delta=delta,
                A=(-torch.rand(dim, N, generator=g) - 0.5) * a_scale, B=mk(batch, groups, N, L), C=mk(batch, groups, N, L),
                D=mk(dim) if D else None, z=mk(batch, dim, L) if z else None,
                delta_bias=mk(dim) * 0.1 if bias else None)


def _grads(fn, inputs, dy):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    outs = fn(**leaves)
    y, last = outs if isinstance(outs, tuple) else (outs, None)
    names = [k for k in _INPUTS if leaves[k] is not None]
    grads = torch.autograd.grad(y, [leaves[k] for k in names], dy.to(y.dtype))
    return y, last, dict(zip(names, grads))


def _close(name, got, want):
    scale = want.abs().max().item() + 1e-30
    err = (got.double() - want).abs().max().item()
    assert err <= 2e-5 * scale + 1e-6, f"{name}: max |model - reference| = {err:.3g} (max |reference| {scale:.3g})"


def _assert_written_once(ext, names):
    for name in names:
        writes = ext.last_writes[name]
        assert bool((writes == 1).all()), (f"{name}: {int((writes == 0).sum())} elements never written, "
                                           f"{int((writes > 1).sum())} written more than once")


SCAN_CASES = {  # batch, dim, groups, N, L, z, D, delta_bias, softplus[, delta_scale]
    "N1 L300 (2 chunks, ragged), 3 channels per group (padding warps)": (2, 12, 4, 1, 300, False, True, True, True),
    "N1 L5 (lane 0 only), 9 channels (2 backward slices, padding)": (1, 9, 1, 1, 5, True, True, False, True),
    "N1 L17 (< one warp's span), no softplus": (2, 8, 2, 1, 17, False, False, True, False),
    "N1 L512 (exact chunks), z": (1, 16, 2, 1, 512, True, True, True, True),
    "N2 L513 (3 chunks, last has 1 position)": (1, 4, 2, 2, 513, False, True, True, True),
    "N3 L256 (odd N: half-empty tile), z": (2, 5, 1, 3, 256, True, True, False, True),
    "N16 L700 groups 2, z, D, bias": (1, 6, 2, 16, 700, True, True, True, True),
    "N16 L40 plain (no z/D/bias/softplus)": (2, 4, 1, 16, 40, False, False, False, False),
    "N5 L300 softplus past its threshold (dt > 20)": (1, 4, 1, 5, 300, False, True, True, True, 30.0),
    "N4 L300 fast decay (|A| ~ 1)": (2, 4, 2, 4, 300, True, True, True, True, 0.5, 1.0),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_model_matches_reference(fake, case):
    batch, dim, groups, N, L, z, D, bias, softplus, *scale = SCAN_CASES[case]
    inputs = _problem(len(case), batch, dim, groups, N, L, z, D, bias, softplus, *scale)
    dy = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(5))
    y, last, grads = _grads(lambda **q: selective_scan_cuda._apply(**q, softplus=softplus, return_last_state=True,
                                                                    hw=None), inputs, dy)
    ref = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, last_ref, grads_ref = _grads(lambda **q: selective_scan_reference(
        **q, delta_softplus=softplus, return_last_state=True), ref, dy.double())
    _close("y", y, y_ref)
    _close("last_state", last, last_ref)
    for name in grads_ref:
        _close("d" + name, grads[name], grads_ref[name])
    assert [c for c, _ in fake.calls] == ["forward", "backward"]
    _assert_written_once(fake, ["du", "ddelta", "dA_part", "dB_part", "dC_part"] + ["dz"] * z + ["dD_part"] * D
                         + ["dbias_part"] * bias)


CROSS2D_CASES = {  # batch, di, H, W, N, z, D, delta_bias, softplus, x layout
    "7x9 (L63 < one chunk), N1": (1, 3, 7, 9, 1, False, True, True, True, "contiguous"),
    "17x19 (L323, 2 chunks), N1, channels-last x": (2, 2, 17, 19, 1, False, True, True, True, "channels_last"),
    "5x6 N16, z": (1, 2, 5, 6, 16, True, True, False, True, "contiguous"),
    "16x32 (L512, H != W), N2, channels-last x": (1, 1, 16, 32, 2, True, False, True, True, "channels_last"),
}


@pytest.mark.parametrize("case", list(CROSS2D_CASES))
def test_cross2d_model_matches_cross_scan_scan_merge(fake, case):
    batch, di, H, W, N, z, D, bias, softplus, layout = CROSS2D_CASES[case]
    inputs = _problem(len(case), batch, 4 * di, 4, N, H * W, z, D, bias, softplus, hw=(H, W))
    if layout == "channels_last":  # strided h/w: u_h_stride, u_w_stride != (W, 1)
        inputs["u"] = inputs["u"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    dy = torch.randn(batch, H, W, di, generator=torch.Generator().manual_seed(6)).permute(0, 3, 1, 2)

    def kernel(u, **q):
        return selective_scan_cuda._apply(u, softplus=softplus, return_last_state=False, hw=(H, W), **q)

    y, _, grads = _grads(kernel, inputs, dy)
    ref = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, _, grads_ref = _grads(lambda u, **q: selective_scan_cuda.selective_scan_cross2d_reference(
        u, **q, delta_softplus=softplus), ref, dy.double())
    assert y.shape == (batch, di, H, W)
    _close("y", y, y_ref)
    for name in grads_ref:
        _close("d" + name, grads[name], grads_ref[name])
    _assert_written_once(fake, ["du", "ddelta", "dA_part", "dB_part", "dC_part"])


def test_forward_writes_y_ckpt_and_last_state_once(fake):
    inputs = _problem(3, 2, 12, 4, 3, 600, True, True, True, True)
    for t in inputs.values():
        if t is not None:
            t.requires_grad_(True)
    selective_scan_cuda._apply(**inputs, softplus=True, return_last_state=True, hw=None)
    _assert_written_once(fake, ["y", "last_state", "ckpt"])


def test_warp_scans_compose_lanes_in_order():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, 32, generator=g,
                                                                                   dtype=torch.float64)
    fa, fb = model.warp_inclusive_scan(a, b)
    ra, rb = model.warp_reverse_inclusive_scan(a, b)
    h0 = torch.randn(3, dtype=torch.float64, generator=g)
    h = h0.clone()
    for lane in range(32):  # lane's inclusive map applied to h0 = the sequential recurrence
        h = a[:, lane] * h + b[:, lane]
        torch.testing.assert_close(fa[:, lane] * h0 + fb[:, lane], h)
    x = h0.clone()
    for lane in range(31, -1, -1):
        x = a[:, lane] * x + b[:, lane]
        torch.testing.assert_close(ra[:, lane] * h0 + rb[:, lane], x)
    torch.testing.assert_close(model.warp_sum(b), b.sum(-1, keepdim=True).expand(3, 32))


def test_a_wrong_warp_scan_is_caught(fake, monkeypatch):
    """The comparison is sharp enough to see a one-step slip in the lane scan."""
    def short_scan(a, b):  # drops the offset-16 step: lanes >= 16 miss lanes 0..(lane-16)
        for offset in (1, 2, 4, 8):
            pa, pb = model.shfl_up(a, offset), model.shfl_up(b, offset)
            on = model._LANE >= offset
            b, a = torch.where(on, a * pb + b, b), torch.where(on, a * pa, a)
        return a, b
    monkeypatch.setattr(model, "warp_inclusive_scan", short_scan)
    inputs = _problem(4, 1, 4, 1, 1, 300, False, True, False, True)
    y = selective_scan_cuda._apply(**inputs, softplus=True, return_last_state=False, hw=None)
    ref = {k: None if v is None else v.double() for k, v in inputs.items()}
    with pytest.raises(AssertionError, match="max"):
        _close("y", y, selective_scan_reference(**ref, delta_softplus=True))


def test_geometries_chunk_identically_and_match_the_extension():
    assert {g.items * model.LANES for g in model.GEOS.values()} == {model.CHUNK_LEN}
    assert set(model.GEOS) == {"FwdN1", "FwdTiled", "BwdN1", "BwdTiled"}
    real = _native.load("selective_scan_cuda")
    if real is None:
        pytest.skip(_native.unavailable_reason("selective_scan_cuda"))
    assert real.chunk_len() == model.CHUNK_LEN
    for dim, groups, N in ((384, 4, 1), (1536, 1, 16), (12, 4, 3), (9, 1, 1)):
        assert real.bwd_slices(dim, groups, N) == model.FakeExtension.bwd_slices(dim, groups, N)
