"""cross_scan / cross_merge: index maps, adjointness, CPU kernel == PyTorch reference, autograd, bad input."""
import pytest
import torch

from py.ops import _native
from py.ops.cross_scan import (cross_merge, cross_merge_op, cross_merge_reference, cross_scan, cross_scan_op,
                               cross_scan_reference)

BACKENDS = ["reference", "cpu"]
SHAPES = [(2, 3, 5, 7), (1, 2, 7, 5), (1, 1, 1, 1), (2, 3, 1, 9), (1, 2, 9, 1), (1, 2, 56, 57),
          (3, 5, 13, 11), (1, 4, 17, 33)]


def _index_maps(H, W):
    """l_k(h, w) for k = 0..3 as (4, H, W) integer tensors, straight from the spec formulas."""
    h = torch.arange(H).view(H, 1).expand(H, W)
    w = torch.arange(W).view(1, W).expand(H, W)
    L = H * W
    l0 = h * W + w
    l1 = w * H + h
    return torch.stack([l0, l1, L - 1 - l0, L - 1 - l1])


def test_kernel_is_built():
    assert _native.require("cross_scan_cpu").max_threads() >= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_index_maps(backend, shape):
    B, C, H, W = shape
    x = torch.arange(B * C * H * W, dtype=torch.float64).view(B, C, H, W)
    ys = cross_scan(x, backend=backend)
    assert ys.shape == (B, 4, C, H * W)
    maps = _index_maps(H, W)
    for k in range(4):
        # ys[b, k, c, l_k(h, w)] == x[b, c, h, w] for every (h, w)
        got = ys[:, k].gather(2, maps[k].flatten().expand(B, C, H * W))
        assert torch.equal(got, x.flatten(2)), k
    if H * W <= 64:  # the formulas once more, element by element
        for h in range(H):
            for w in range(W):
                L = H * W
                for k, l in enumerate((h * W + w, w * H + h, L - 1 - (h * W + w), L - 1 - (w * H + h))):
                    assert torch.equal(ys[:, k, :, l], x[:, :, h, w])
    # merge: y[b, c, h*W + w] = sum_k ys[b, k, c, l_k(h, w)]
    y = torch.randn(B, 4, C, H * W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = sum(y[:, k].gather(2, maps[k].flatten().expand(B, C, H * W)) for k in range(4))
    got = cross_merge(y.view(B, 4, C, H, W), backend=backend)
    assert got.shape == (B, C, H * W)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference_bitwise(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    B, C, H, W = shape
    x = torch.randn(shape, generator=g, dtype=dtype)
    y = torch.randn(B, 4, C, H, W, generator=g, dtype=dtype)
    assert torch.equal(cross_scan(x, backend="cpu"), cross_scan_reference(x))
    # Same summation order as the reference: bitwise equal, float32 included.
    assert torch.equal(cross_merge(y, backend="cpu"), cross_merge_reference(y))
    assert torch.equal(cross_scan(x), cross_scan(x, backend="cpu"))  # auto -> cpu


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_merge_of_scan_is_4x_and_adjoint(backend, shape):
    g = torch.Generator().manual_seed(7)
    B, C, H, W = shape
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(B, 4, C, H, W, generator=g, dtype=torch.float64)
    ys = cross_scan(x, backend=backend)
    torch.testing.assert_close(cross_merge(ys.view(B, 4, C, H, W), backend=backend), 4 * x.flatten(2),
                               rtol=0, atol=0)
    lhs = (ys * y.flatten(3)).sum()
    rhs = (x.flatten(2) * cross_merge(y, backend=backend)).sum()
    assert abs(lhs.item() - rhs.item()) <= 1e-12 * max(1.0, abs(lhs.item()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision(dtype):
    x = torch.randn(2, 3, 5, 7).to(dtype)
    ys = cross_scan(x)  # auto -> reference for these dtypes
    assert ys.dtype == dtype
    assert torch.equal(ys.float(), cross_scan(x.float(), backend="cpu"))
    y = torch.randn(2, 4, 3, 5, 7).to(dtype)
    torch.testing.assert_close(cross_merge(y).float(), cross_merge(y.float(), backend="cpu"),
                               rtol=2e-2, atol=2e-2)


def _noncontiguous_x(g):
    base = torch.randn(2, 6, 9, 4, generator=g, dtype=torch.float64)  # (B, H, W, C): channel-last
    return {
        "channel_last": base.permute(0, 3, 1, 2),
        "strided": torch.randn(2, 4, 9, 14, generator=g, dtype=torch.float64)[:, :, :, ::2],
        "transposed_hw": torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64).transpose(2, 3),
        "expanded": torch.randn(1, 3, 1, 5, generator=g, dtype=torch.float64).expand(2, 3, 4, 5),
    }


@pytest.mark.parametrize("kind", ["channel_last", "strided", "transposed_hw", "expanded"])
def test_noncontiguous_inputs(kind):
    g = torch.Generator().manual_seed(3)
    x = _noncontiguous_x(g)[kind]
    assert not x.is_contiguous()
    assert torch.equal(cross_scan(x, backend="cpu"), cross_scan_reference(x.contiguous()))
    B, C, H, W = x.shape
    ybig = torch.randn(B, C, 4, W, H + 1, generator=g, dtype=torch.float64)
    y = ybig[..., :H].permute(0, 2, 1, 4, 3)  # (B, 4, C, H, W), every dim strided
    assert not y.is_contiguous()
    assert torch.equal(cross_merge(y, backend="cpu"), cross_merge_reference(y.contiguous()))


def test_autograd_function_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cross_scan_op, (x,))
    assert torch.autograd.gradcheck(cross_merge_op, (y,))
    assert torch.autograd.gradgradcheck(cross_scan_op, (x,))
    assert torch.autograd.gradgradcheck(cross_merge_op, (y,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 8, 56, 57), (3, 5, 1, 9), (2, 16, 7, 7)])
def test_gradients_are_the_adjoint_and_match_reference(dtype, shape):
    g = torch.Generator().manual_seed(11)
    B, C, H, W = shape
    x = torch.randn(shape, generator=g, dtype=dtype)
    gy = torch.randn(B, 4, C, H * W, generator=g, dtype=dtype)
    grads = {}
    for backend in BACKENDS:
        xr = x.clone().requires_grad_()
        cross_scan(xr, backend=backend).backward(gy)
        grads[backend] = xr.grad
    assert torch.equal(grads["cpu"], cross_merge_reference(gy.view(B, 4, C, H, W)).view(B, C, H, W))
    assert torch.equal(grads["cpu"], grads["reference"])
    y = torch.randn(B, 4, C, H, W, generator=g, dtype=dtype)
    gx = torch.randn(B, C, H * W, generator=g, dtype=dtype)
    grads = {}
    for backend in BACKENDS:
        yr = y.clone().requires_grad_()
        cross_merge(yr, backend=backend).backward(gx)
        grads[backend] = yr.grad
    assert torch.equal(grads["cpu"], cross_scan_reference(gx.view(B, C, H, W)).view(B, 4, C, H, W))
    assert torch.equal(grads["cpu"], grads["reference"])


def test_noncontiguous_grad_output():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 3, 30, 4, dtype=torch.float64).permute(0, 3, 1, 2)  # (B, 4, C, L), strided
    cross_scan(x, backend="cpu").backward(gy)
    assert torch.equal(x.grad, cross_merge_reference(gy.reshape(2, 4, 3, 5, 6)).view(2, 3, 5, 6))


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)])
def test_empty_sizes_give_empty_results_and_gradients(shape, backend):
    """Each of B, C, H, W = 0 (regression: H or W = 0 was a ValueError), forward and backward; the
    empty sum's gradient reaches the op as a stride-0 tensor."""
    B, C, H, W = shape
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    ys = cross_scan(x, backend=backend)
    assert ys.shape == (B, 4, C, H * W)
    ys.sum().backward()
    assert x.grad.shape == x.shape
    y = torch.zeros(B, 4, C, H, W, dtype=torch.float64, requires_grad=True)
    out = cross_merge(y, backend=backend)
    assert out.shape == (B, C, H * W)
    out.sum().backward()
    assert y.grad.shape == y.shape


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="x must be 4-D"):
        cross_scan(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="x must have dtype in"):
        cross_scan(torch.zeros(1, 2, 3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        cross_scan([[1.0]])
    with pytest.raises(ValueError, match="y must be 5-D"):
        cross_merge(torch.zeros(1, 4, 2, 12))
    with pytest.raises(ValueError, match="y must have shape"):
        cross_merge(torch.zeros(1, 3, 2, 3, 4))
    with pytest.raises(TypeError, match="y must have dtype in"):
        cross_merge(torch.zeros(1, 4, 2, 3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="backend must be one of"):
        cross_scan(torch.zeros(1, 2, 3, 4), backend="tpu")
    with pytest.raises(TypeError, match="float32/float64"):
        cross_scan(torch.zeros(1, 2, 3, 4, dtype=torch.float16), backend="cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cross_merge(torch.zeros(1, 4, 2, 3, 4), backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reports_zero_flops(backend):
    from py.ops import _common
    with _common.flop_recording() as rec:
        cross_merge(cross_scan(torch.randn(1, 2, 3, 4), backend=backend).view(1, 4, 2, 3, 4), backend=backend)
    assert rec.by_op == {"cross_scan": 0, "cross_merge": 0}
