"""VMamba cross-scan / cross-merge: the four traversal orders of SS2D and their exact adjoint.

Three layers, like the other ops:
  * `cross_scan_reference` / `cross_merge_reference`: plain PyTorch (transpose/flip), any dtype/device;
  * the `cc.kernels.cross_scan_cpu` kernels (fused gather / scatter-add, float32 and float64);
  * the custom ops torch.ops.visionssm.cross_scan / cross_merge over the CPU kernels and the CUDA ones
    (py/ops/cross_scan_cuda.py), with autograd where backward(scan) = merge and vice versa.
"""
import torch

from py.ops import _common, _library, _native
from py.ops.observe import observable

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def cross_scan_reference(x):
    """(B, C, H, W) -> (B, 4, C, H*W) in plain PyTorch; see `cross_scan`."""
    # Functional (no slice writes), so it can also serve as the op's decomposition in an exported graph.
    y = torch.stack((x.flatten(2), x.transpose(2, 3).flatten(2)), dim=1)
    return torch.cat((y, y.flip(-1)), dim=1)


def cross_merge_reference(y):
    """(B, 4, C, H, W) -> (B, C, H*W) in plain PyTorch; see `cross_merge`."""
    B, _, C, H, W = y.shape
    y = y.reshape(B, 4, C, H * W)
    pairs = y[:, 0:2] + y[:, 2:4].flip(-1)  # (y0 + rev y2, y1 + rev y3)
    return pairs[:, 0] + pairs[:, 1].reshape(B, C, W, H).transpose(2, 3).reshape(B, C, H * W)


# ------------------------------------------------------------------------------------------------
# Kernel binding

def kernel_params(inp, out, B, C, H, W):
    """The one argument set of both backends' kernels (cc/kernels/cross_scan/cross_scan_params.h): the
    input (x for scan, y for merge) with its strides in elements, the contiguous output, the sizes."""
    return dict(dtype=_common.dtype_name(inp), batch=B, channels=C, height=H, width=W, input=inp.data_ptr(),
                input_strides=list(inp.stride()), output=out.data_ptr())


def _cpu_scan(x):
    B, C, H, W = x.shape
    out = torch.empty((B, 4, C, H * W), dtype=x.dtype)
    if out.numel():
        _native.require("cross_scan_cpu").scan(kernel_params(x, out, B, C, H, W), torch.get_num_threads())
    return out


def _cpu_merge(y):
    B, _, C, H, W = y.shape
    out = torch.empty((B, C, H * W), dtype=y.dtype)
    if out.numel():
        _native.require("cross_scan_cpu").merge(kernel_params(y, out, B, C, H, W), torch.get_num_threads())
    return out


# ------------------------------------------------------------------------------------------------
# Custom ops torch.ops.visionssm.cross_scan / cross_merge (py/ops/_library.py): each is the other's
# backward, so gradients of any order go through the kernels.

def _check_native(op, t):
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"visionssm::{op} on the CPU takes float32/float64, got {t.dtype}")


@_library.custom_op("cross_scan")
def cross_scan_op(x: torch.Tensor) -> torch.Tensor:
    """`cross_scan_reference(x)`: (B, C, H, W) -> (B, 4, C, H*W)."""
    _check_native("cross_scan", x)
    return _cpu_scan(x)


@_library.custom_op("cross_merge")
def cross_merge_op(y: torch.Tensor) -> torch.Tensor:
    """`cross_merge_reference(y)`: (B, 4, C, H, W) -> (B, C, H*W)."""
    _check_native("cross_merge", y)
    return _cpu_merge(y)


@cross_scan_op.register_fake
def _(x):
    B, C, H, W = x.shape
    return x.new_empty((B, 4, C, H * W))


@cross_merge_op.register_fake
def _(y):
    B, _, C, H, W = y.shape
    return y.new_empty((B, C, H * W))


def _setup_context(ctx, inputs, output):
    ctx.hw = tuple(inputs[0].shape[-2:])


cross_scan_op.register_autograd(lambda ctx, grad: cross_merge_op(grad.unflatten(-1, ctx.hw)).unflatten(-1, ctx.hw),
                                setup_context=_setup_context)
cross_merge_op.register_autograd(lambda ctx, grad: cross_scan_op(grad.unflatten(-1, ctx.hw)).unflatten(-1, ctx.hw),
                                 setup_context=_setup_context)


# ---- CUDA kernel registration ----  (the kernels and their first-call self-check: py/ops/cross_scan_cuda.py)
@cross_scan_op.register_kernel("cuda")
def _(x):
    from py.ops import cross_scan_cuda
    return cross_scan_cuda.cross_scan(x)


@cross_merge_op.register_kernel("cuda")
def _(y):
    from py.ops import cross_scan_cuda
    return cross_scan_cuda.cross_merge(y)


# ------------------------------------------------------------------------------------------------
# Public ops

def _backend(op, t, backend):
    native = t.dtype in (torch.float32, torch.float64) and t.device.type == "cpu"
    return _common.resolve_backend(op, backend, t.device, cpu_dtype_ok=native, cuda_extension="cross_scan_cuda")


@observable("cross_scan")
def cross_scan(x, backend="auto"):
    """VMamba CrossScan: x (B, C, H, W) -> ys (B, 4, C, L), L = H*W.

    ys[b, k, c, l_k(h, w)] = x[b, c, h, w] with the four traversals
      k=0 row-major          l0 = h*W + w
      k=1 column-major       l1 = w*H + h
      k=2 reversed row-major L-1-l0
      k=3 reversed column-major L-1-l1.
    The backward is `cross_merge` (its exact adjoint). Any strides are accepted; empty sizes
    (H or W = 0 included) give empty results.

    Backends: "reference" (PyTorch transpose/flip, any floating dtype and device); "cpu" (fused C++
    gather, float32/float64 CPU tensors); "auto" picks "cpu" for float32/float64 CPU tensors and the
    reference otherwise (CUDA tensors warn once); "cuda" runs the standalone CUDA kernels
    (float16/bfloat16/float32/float64; not yet run on a GPU: the first call per dtype/device
    self-checks against the reference and falls back to it with a warning if they disagree).
    """
    _common.check_tensor("x", x, ndim=4, dtypes=_FLOATS, shape_doc="(B, C, H, W)")
    backend = _backend("cross_scan", x, backend)
    with _common.op_scope("cross_scan", lambda: 0):  # data movement: 0 FLOPs (py.models.flops)
        if backend == "reference":
            return cross_scan_reference(x)
        if backend == "cuda":
            from py.ops import cross_scan_cuda
            cross_scan_cuda.check_launch("cross_scan", x=x)
        return cross_scan_op(x)


@observable("cross_merge")
def cross_merge(y, backend="auto"):
    """VMamba CrossMerge, the exact adjoint of `cross_scan`: y (B, 4, C, H, W) -> (B, C, L), L = H*W.

    y[b, k, c] holds a sequence of length L (its (H, W) dims only carry the map size, read in
    row-major order as l = h'*W + w'). With l0 = h*W + w and l1 = w*H + h:
      out[b, c, l0] = (y[b,0,c,l0] + y[b,2,c,L-1-l0]) + (y[b,1,c,l1] + y[b,3,c,L-1-l1])
    so cross_merge(cross_scan(x)) = 4*x and <cross_scan(x), y> = <x, cross_merge(y)>.
    The backward is `cross_scan`. Any strides are accepted.

    Backends: as for `cross_scan`.
    """
    _common.check_tensor("y", y, ndim=5, dtypes=_FLOATS, shape_doc="(B, 4, C, H, W)")
    _common.check_shape("y", y, (None, 4, None, None, None), shape_doc="(B, 4, C, H, W)")
    backend = _backend("cross_merge", y, backend)
    with _common.op_scope("cross_merge", lambda: 0):  # data movement: 0 FLOPs (py.models.flops)
        if backend == "reference":
            return cross_merge_reference(y)
        if backend == "cuda":
            from py.ops import cross_scan_cuda
            cross_scan_cuda.check_launch("cross_merge", y=y)
        return cross_merge_op(y)
