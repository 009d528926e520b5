"""Cross-scan / cross-merge on CUDA: binding of `cc.kernels.cross_scan_cuda` (not yet run on a GPU), with
the first-call self-check: `cross_scan`/`cross_merge` are the CUDA kernels of the custom ops
torch.ops.visionssm.cross_scan/cross_merge (whose autograd is in py.ops.cross_scan); `CrossScanCudaFn`/
`CrossMergeCudaFn` are autograd over the bare kernels (tools/gpu_check.py calls them)."""
import torch

from py.ops import _cuda_dispatch, _native
from py.ops.cross_scan import kernel_params

EXT = "cross_scan_cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _scan(x):
    B, C, H, W = x.shape
    out = torch.empty((B, 4, C, H * W), dtype=x.dtype, device=x.device)
    if out.numel():
        _native.require(EXT).scan(dict(kernel_params(x, out, B, C, H, W), stream=_cuda_dispatch.stream_of(x)))
    return out


def _merge(y):
    B, _, C, H, W = y.shape
    y = y.contiguous()  # the merge kernel reads y densely
    out = torch.empty((B, C, H * W), dtype=y.dtype, device=y.device)
    if out.numel():
        _native.require(EXT).merge(dict(kernel_params(y, out, B, C, H, W), stream=_cuda_dispatch.stream_of(y)))
    return out


class CrossScanCudaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.hw = x.shape[2:]
        return _scan(x)

    @staticmethod
    def backward(ctx, grad):
        return CrossMergeCudaFn.apply(grad.unflatten(-1, tuple(ctx.hw))).unflatten(-1, tuple(ctx.hw))


class CrossMergeCudaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.hw = y.shape[3:]
        return _merge(y)

    @staticmethod
    def backward(ctx, grad):
        return CrossScanCudaFn.apply(grad.unflatten(-1, tuple(ctx.hw))).unflatten(-1, tuple(ctx.hw))


def _verified(op, t):
    from py.ops.cross_scan import cross_merge_reference, cross_scan_reference
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 37, 35, generator=g).to(device=t.device, dtype=t.dtype)  # odd, > one 32x32 tile
    y = torch.randn(2, 4, 3, 37, 35, generator=g).to(device=t.device, dtype=t.dtype)
    run = lambda: [_scan(x), _merge(y)]
    ref = lambda: [cross_scan_reference(x.double()), cross_merge_reference(y.double())]
    tol = 1e-6 if t.dtype in (torch.float32, torch.float64) else 2e-2
    return _cuda_dispatch.self_check("cross_scan/cross_merge", t.dtype, t.device, run, ref, tol, tol)


def check_launch(op, **tensors):
    """What backend='cuda' needs beyond py.ops.cross_scan's own checks."""
    _cuda_dispatch.check_cuda_tensors(op, DTYPES, **tensors)


def cross_scan(x):
    """CUDA kernel of torch.ops.visionssm.cross_scan (registered in py.ops.cross_scan); the reference
    where the kernels failed their self-check."""
    if not _verified("cross_scan", x):
        from py.ops.cross_scan import cross_scan_reference
        return cross_scan_reference(x)
    return _scan(x)


def cross_merge(y):
    """CUDA kernel of torch.ops.visionssm.cross_merge, the same choice as `cross_scan`."""
    if not _verified("cross_merge", y):
        from py.ops.cross_scan import cross_merge_reference
        return cross_merge_reference(y)
    return _merge(y)
