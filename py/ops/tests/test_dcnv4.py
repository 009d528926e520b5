"""DCNv4: explicit-loop oracle == grid_sample reference == CPU kernel, gradients, invariants, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from py.ops import _native
from py.ops.dcnv4 import dcnv4, dcnv4_op, dcnv4_reference


def _out(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _make(N, H, W, G, D, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, s=1.0, rc=False,
          dtype=torch.float64, seed=0, offset_std=1.5, extra_pad=0):
    """Random value and offset_mask (P padded to a multiple of 8, plus extra_pad) and the conv args."""
    g = torch.Generator().manual_seed(seed)
    Ho, Wo = _out(H, kh, sh, ph, dh), _out(W, kw, sw, pw, dw)
    K = kh * kw - int(rc)
    P = math.ceil(3 * G * K / 8) * 8 + extra_pad
    value = torch.randn(N, H, W, G * D, generator=g, dtype=dtype)
    om = torch.randn(N, Ho, Wo, P, generator=g, dtype=dtype)
    om4 = om[..., :3 * G * K].view(N, Ho, Wo, G, 3 * K)
    om4[..., :2 * K] *= offset_std
    args = (kh, kw, sh, sw, ph, pw, dh, dw, G, D, s, rc)
    return value, om, args


def dcnv4_loop(value, offset_mask, kh, kw, sh, sw, ph, pw, dh, dw, G, D, s=1.0, rc=False):
    """Explicit-loop oracle, straight from the spec formula (pixel coordinates, zero outside)."""
    N, H, W, _ = value.shape
    Ho, Wo = offset_mask.shape[1:3]
    v = value.double()
    om = offset_mask.double()
    half_w, half_h = dw * (kw - 1) // 2, dh * (kh - 1) // 2
    pts = [(i, j) for i in range(kw) for j in range(kh) if not (rc and i == kw // 2 and j == kh // 2)]
    K = len(pts)
    out = torch.zeros(N, Ho, Wo, G * D, dtype=torch.float64)
    for n in range(N):
        for ho in range(Ho):
            for wo in range(Wo):
                for g in range(G):
                    blk = om[n, ho, wo, g * 3 * K:(g + 1) * 3 * K].tolist()
                    acc = torch.zeros(D, dtype=torch.float64)
                    for k, (i, j) in enumerate(pts):
                        dx, dy, m = blk[2 * k], blk[2 * k + 1], blk[2 * K + k]
                        w = wo * sw - pw + half_w + (i * dw - half_w + dx) * s
                        h = ho * sh - ph + half_h + (j * dh - half_h + dy) * s
                        if not (-1 < h < H and -1 < w < W):
                            continue
                        y0, x0 = math.floor(h), math.floor(w)
                        lh, lw = h - y0, w - x0
                        for y, x, wt in ((y0, x0, (1 - lh) * (1 - lw)), (y0, x0 + 1, (1 - lh) * lw),
                                         (y0 + 1, x0, lh * (1 - lw)), (y0 + 1, x0 + 1, lh * lw)):
                            if 0 <= y < H and 0 <= x < W:
                                acc += m * wt * v[n, y, x, g * D:(g + 1) * D]
                    out[n, ho, wo, g * D:(g + 1) * D] = acc
    return out


# (N, H, W, G, D, kh, kw, sh, sw, ph, pw, dh, dw, offset_scale, remove_center)
ORACLE_CASES = [
    (1, 5, 6, 1, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, False),
    (2, 4, 5, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 0.5, True),
    (1, 7, 5, 3, 1, 3, 3, 2, 1, 1, 0, 2, 1, 1.7, False),
    (1, 6, 7, 2, 2, 2, 4, 1, 2, 0, 2, 1, 2, 1.0, False),
    (1, 1, 1, 1, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1.0, False),
    (1, 5, 5, 1, 2, 5, 3, 1, 1, 2, 1, 1, 1, 0.3, True),
]


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_reference_matches_explicit_loop(case):
    N, H, W, G, D, *conv = case
    value, om, args = _make(N, H, W, G, D, *conv, seed=len(ORACLE_CASES) + H)
    want = dcnv4_loop(value, om, *args)
    torch.testing.assert_close(dcnv4_reference(value, om, *args), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dcnv4(value, om, *args, backend="cpu"), want, rtol=1e-12, atol=1e-12)


def test_kernel_is_built():
    assert _native.require("dcnv4_cpu").max_threads() >= 1


# Kernel vs reference over many shapes: odd/prime sizes, N=1, 1x1 maps, groups, channel tails
# (D not a multiple of 8), strides, dilations, remove_center, offset_scale, offsets pushing samples
# far outside the image (border paths).
KERNEL_CASES = [
    (1, 7, 11, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, False, 1.5),
    (2, 13, 5, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, True, 1.5),
    (3, 8, 8, 4, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, False, 1.0),
    (1, 9, 10, 2, 33, 3, 3, 2, 2, 1, 1, 1, 1, 0.6, False, 3.0),
    (2, 11, 7, 1, 8, 3, 5, 1, 2, 2, 0, 2, 1, 1.3, False, 2.0),
    (1, 6, 6, 2, 24, 1, 1, 1, 1, 0, 0, 1, 1, 1.0, False, 1.0),
    (1, 1, 1, 3, 7, 1, 1, 1, 1, 0, 0, 1, 1, 1.0, False, 0.4),
    (1, 1, 1, 1, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, True, 0.7),
    (9, 5, 4, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, False, 8.0),
    (2, 17, 3, 1, 40, 2, 2, 3, 1, 0, 1, 1, 3, 2.0, False, 1.0),
]


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_cpu_matches_reference(case):
    N, H, W, G, D, *conv, std = case
    value, om, args = _make(N, H, W, G, D, *conv, offset_std=std, seed=H * W + D)
    want = dcnv4_reference(value, om, *args)
    got64 = dcnv4(value, om, *args, backend="cpu")
    torch.testing.assert_close(got64, want, rtol=1e-12, atol=1e-12)
    got32 = dcnv4(value.float(), om.float(), *args, backend="cpu")
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(dcnv4(value, om, *args), got64)  # auto -> cpu


@pytest.mark.parametrize("case", KERNEL_CASES[:6])
def test_gradients_match_reference_autograd(case):
    N, H, W, G, D, *conv, std = case
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        value, om, args = _make(N, H, W, G, D, *conv, offset_std=std, seed=1 + H, dtype=torch.float64)
        gout = torch.randn(N, om.shape[1], om.shape[2], G * D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))
        v_ref, om_ref = value.clone().requires_grad_(), om.clone().requires_grad_()
        dcnv4_reference(v_ref, om_ref, *args).backward(gout)
        v, o = value.to(dtype).requires_grad_(), om.to(dtype).requires_grad_()
        dcnv4(v, o, *args, backend="cpu").backward(gout.to(dtype))
        scale_v = v_ref.grad.abs().max().item() + 1
        scale_o = om_ref.grad.abs().max().item() + 1
        torch.testing.assert_close(v.grad.double(), v_ref.grad, rtol=tol, atol=tol * scale_v)
        torch.testing.assert_close(o.grad.double(), om_ref.grad, rtol=tol, atol=tol * scale_o)
        K = args[0] * args[1] - int(args[-1])
        assert torch.all(o.grad[..., 3 * G * K:] == 0)  # padding channels


@pytest.mark.parametrize("case", [
    (1, 4, 5, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, False),
    (2, 5, 4, 1, 2, 3, 3, 2, 1, 1, 1, 1, 2, 0.7, True),
    (1, 3, 3, 1, 9, 2, 2, 1, 1, 0, 0, 1, 1, 1.0, False),
])
def test_gradcheck_kernel_function(case):
    N, H, W, G, D, *conv = case
    value, om, args = _make(N, H, W, G, D, *conv, seed=3, offset_std=0.8)
    value.requires_grad_()
    om.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, o: dcnv4_op(v, o, *args), (value, om),
                                    eps=1e-6, atol=1e-6)


def test_backward_is_deterministic_and_thread_count_independent():
    value, om, args = _make(2, 12, 11, 2, 13, seed=9, dtype=torch.float32, offset_std=2.0)
    gout = torch.randn(2, 12, 11, 26)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 2, 1):
            torch.set_num_threads(threads)
            v, o = value.clone().requires_grad_(), om.clone().requires_grad_()
            dcnv4(v, o, *args, backend="cpu").backward(gout)
            results.append((v.grad, o.grad))
    finally:
        torch.set_num_threads(old)
    for gv, go in results[1:]:
        assert torch.equal(gv, results[0][0]) and torch.equal(go, results[0][1])


def test_padding_channels_are_ignored():
    value, om, args = _make(2, 6, 7, 2, 4, seed=4, extra_pad=8)
    K = 9
    om2 = om.clone()
    om2[..., 3 * 2 * K:] = torch.randn_like(om2[..., 3 * 2 * K:]) * 100
    for backend in ("reference", "cpu"):
        assert torch.equal(dcnv4(value, om, *args, backend=backend), dcnv4(value, om2, *args, backend=backend))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_zero_offsets_invariants(backend):
    N, H, W, G, D = 2, 6, 7, 2, 3
    value = torch.randn(N, H, W, G * D, dtype=torch.float64)
    P = 56  # 3*G*9 = 54 -> 56
    # One-hot mask at the centre point (p = 4 for 3x3: i = 1 outer, j = 1 inner) -> identity.
    om = torch.zeros(N, H, W, P, dtype=torch.float64)
    for g in range(G):
        om[..., g * 27 + 18 + 4] = 1.0
    out = dcnv4(value, om, 3, 3, 1, 1, 1, 1, 1, 1, G, D, backend=backend)
    torch.testing.assert_close(out, value, rtol=1e-12, atol=1e-12)
    # All-ones mask -> 3x3 box sum with zero padding (a depthwise conv with ones).
    om.zero_()
    for g in range(G):
        om[..., g * 27 + 18:g * 27 + 27] = 1.0
    out = dcnv4(value, om, 3, 3, 1, 1, 1, 1, 1, 1, G, D, backend=backend)
    x = value.permute(0, 3, 1, 2)
    box = F.conv2d(x, torch.ones(G * D, 1, 3, 3, dtype=torch.float64), padding=1, groups=G * D)
    torch.testing.assert_close(out, box.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    # Per-group masks m_k -> depthwise conv whose weight at tap (row j, col i) is m_{i*3 + j}.
    m = torch.randn(G, 9, dtype=torch.float64)
    for g in range(G):
        om[..., g * 27 + 18:g * 27 + 27] = m[g]
    out = dcnv4(value, om, 3, 3, 1, 1, 1, 1, 1, 1, G, D, backend=backend)
    wgt = m.view(G, 3, 3).transpose(1, 2).repeat_interleave(D, 0).unsqueeze(1)  # [g, j(row), i(col)]
    conv = F.conv2d(x, wgt, padding=1, groups=G * D)
    torch.testing.assert_close(out, conv.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    # remove_center drops exactly the centre tap: 8 points, masks ones -> box sum minus the centre.
    P8 = 48
    om8 = torch.zeros(N, H, W, P8, dtype=torch.float64)
    for g in range(G):
        om8[..., g * 24 + 16:g * 24 + 24] = 1.0
    out = dcnv4(value, om8, 3, 3, 1, 1, 1, 1, 1, 1, G, D, remove_center=True, backend=backend)
    torch.testing.assert_close(out, box.permute(0, 2, 3, 1) - value, rtol=1e-12, atol=1e-12)


def test_noncontiguous_inputs():
    value, om, args = _make(2, 7, 9, 2, 5, seed=6, extra_pad=0)
    want = dcnv4_reference(value, om, *args)
    big = torch.cat([value, torch.randn_like(value)], dim=-1)[..., :10]  # channel slice
    assert not big.is_contiguous()
    torch.testing.assert_close(dcnv4(big, om, *args, backend="cpu"), want, rtol=1e-12, atol=1e-12)
    chan_first = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channel stride != 1
    om_wide = torch.cat([om, torch.randn_like(om)], dim=-1)
    om_sliced = om_wide[..., :om.shape[-1]]  # row stride 2P
    om_cf = om.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channel stride Ho*Wo
    for v, o in ((chan_first, om_sliced), (value, om_cf), (chan_first, om_cf)):
        assert not (v.is_contiguous() and o.is_contiguous())
        torch.testing.assert_close(dcnv4(v, o, *args, backend="cpu"), want, rtol=1e-12, atol=1e-12)
        vr, orr = v.clone().requires_grad_(), o.clone().requires_grad_()
        gout = torch.ones_like(want).transpose(1, 2).contiguous().transpose(1, 2)  # strided grad
        dcnv4(vr, orr, *args, backend="cpu").backward(gout)
        vr2, or2 = value.clone().requires_grad_(), om.clone().requires_grad_()
        dcnv4_reference(vr2, or2, *args).backward(torch.ones_like(want))
        torch.testing.assert_close(vr.grad, vr2.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(orr.grad, or2.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N, G, D", [(0, 2, 3), (2, 2, 0), (2, 0, 3)])
def test_empty_sizes_give_empty_results_and_gradients(N, G, D, dtype, backend):
    """N, group or group_channels = 0: empty output, empty value gradient, zero offset gradient.
    Regressions: the CPU backward rejected the stride-0 gradient of an empty output's sum, and
    group/group_channels = 0 were ValueErrors."""
    value, om, args = _make(N, 5, 6, G, D, dtype=dtype, extra_pad=8)
    v, o = value.clone().requires_grad_(), om.clone().requires_grad_()
    out = dcnv4(v, o, *args, backend=backend)
    assert out.shape == (N, 5, 6, G * D) and out.dtype == dtype
    out.sum().backward()
    assert v.grad.shape == v.shape and o.grad.shape == o.shape
    assert not o.grad.any()


def test_one_channel_with_any_channel_stride():
    """Regression: with one channel (group = group_channels = 1) .contiguous() keeps a channel stride
    != 1, which the kernel rejected for value and for the incoming gradient."""
    value, om, args = _make(2, 5, 6, 1, 1, seed=4)
    v_cf = torch.empty(2, 1, 5, 6, dtype=torch.float64).copy_(value.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    gout = torch.randn(2, 1, 5, 6, dtype=torch.float64).permute(0, 2, 3, 1)
    assert v_cf.stride(-1) != 1 and gout.stride(-1) != 1
    v1, o1 = v_cf.requires_grad_(), om.clone().requires_grad_()
    out = dcnv4(v1, o1, *args, backend="cpu")
    out.backward(gout)
    v2, o2 = value.clone().requires_grad_(), om.clone().requires_grad_()
    want = dcnv4_reference(v2, o2, *args)
    want.backward(gout)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o1.grad, o2.grad, rtol=1e-10, atol=1e-10)


def test_single_image_uses_row_slices():
    # N=1: the backward splits the rows into slices with private buffers; N=8: one task per image.
    for N in (1, 8):
        value, om, args = _make(N, 20, 9, 2, 8, seed=N, offset_std=2.5)
        v1, o1 = value.clone().requires_grad_(), om.clone().requires_grad_()
        dcnv4(v1, o1, *args, backend="cpu").sum().backward()
        v2, o2 = value.clone().requires_grad_(), om.clone().requires_grad_()
        dcnv4_reference(v2, o2, *args).sum().backward()
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(o1.grad, o2.grad, rtol=1e-10, atol=1e-10)


def test_only_value_or_only_offset_grad():
    value, om, args = _make(1, 5, 5, 1, 4, seed=2)
    v = value.clone().requires_grad_()
    dcnv4(v, om, *args, backend="cpu").sum().backward()
    assert v.grad is not None
    o = om.clone().requires_grad_()
    dcnv4(value, o, *args, backend="cpu").sum().backward()
    assert o.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision(dtype):
    value, om, args = _make(1, 6, 6, 2, 8, seed=8, dtype=torch.float32, offset_std=0.5)
    out = dcnv4(value.to(dtype), om.to(dtype), *args)  # auto -> reference for these dtypes
    assert out.dtype == dtype
    want = dcnv4(value.to(dtype).float(), om.to(dtype).float(), *args, backend="cpu")
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=2e-2)


def test_bad_input_names_the_argument():
    value, om, args = _make(2, 5, 5, 2, 4, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="value must be 4-D"):
        dcnv4(value[0], om, *args)
    with pytest.raises(ValueError, match="offset_mask must be 4-D"):
        dcnv4(value, om[0], *args)
    with pytest.raises(TypeError, match="offset_mask must have dtype in"):
        dcnv4(value, om.double(), *args)
    with pytest.raises(TypeError, match="value must have dtype in"):
        dcnv4(value.int(), om.int(), *args)
    with pytest.raises(ValueError, match="offset_mask must have shape"):
        dcnv4(value, om[:1], *args)  # batch mismatch
    with pytest.raises(ValueError, match="offset_mask must have shape"):
        dcnv4(value, om[:, :4], *args)  # H_out mismatch
    with pytest.raises(ValueError, match="offset_mask must have P"):
        dcnv4(value, om[..., :-1], *args)  # not a multiple of 8
    with pytest.raises(ValueError, match="offset_mask must have P"):
        dcnv4(value, om[..., :48], *args)  # < 3*G*K = 54
    with pytest.raises(ValueError, match="value must have shape"):
        dcnv4(value[..., :7], om, *args)  # C != group*group_channels
    with pytest.raises(ValueError, match="offset_mask must be on the same device"):
        dcnv4(value, om.to("meta"), *args)
    with pytest.raises(ValueError, match="remove_center needs odd"):
        dcnv4(value, om, 2, 2, 1, 1, 0, 0, 1, 1, 2, 4, remove_center=True)
    with pytest.raises(ValueError, match="too small"):
        dcnv4(value, om, 7, 7, 1, 1, 0, 0, 1, 1, 2, 4)
    with pytest.raises(ValueError, match="stride_h must be >= 1"):
        dcnv4(value, om, 3, 3, 0, 1, 1, 1, 1, 1, 2, 4)
    with pytest.raises(TypeError, match="group must be an int"):
        dcnv4(value, om, 3, 3, 1, 1, 1, 1, 1, 1, 2.0, 4)
    with pytest.raises(ValueError, match="offset_scale must be finite"):
        dcnv4(value, om, *args[:10], offset_scale=float("nan"))
    with pytest.raises(ValueError, match="backend must be one of"):
        dcnv4(value, om, *args, backend="tpu")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        dcnv4(value, om, *args, backend="cuda")
    with pytest.raises(TypeError, match="float32/float64"):
        dcnv4(value.half(), om.half(), *args, backend="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_reports_flops(backend):
    from py.ops import _common
    value, om, args = _make(2, 6, 7, 2, 4, seed=1, rc=True)  # K = 8
    with _common.flop_recording() as rec:
        dcnv4(value, om, *args, backend=backend)
    assert rec.by_op == {"dcnv4": 5 * 2 * 6 * 7 * 2 * 4 * 8}
