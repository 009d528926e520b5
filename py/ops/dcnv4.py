"""DCNv4: deformable convolution with unnormalised modulation (OpenGVLab DCNv4 operator semantics).

Three layers, like the other ops:
  * `dcnv4_reference`: plain PyTorch built on F.grid_sample (any floating dtype, autograd for free);
  * the `cc.kernels.dcnv4_cpu` kernels (float32/float64 forward and deterministic backward);
  * the custom ops torch.ops.visionssm.dcnv4 / dcnv4_backward over them, with their fake
    implementation and autograd, so torch.compile and torch.export keep them in the graph.
`dcnv4(...)` validates the inputs and dispatches on `backend`.
"""
import math
import numbers
from typing import Tuple

import torch
import torch.nn.functional as F

from py.ops import _common, _library, _native
from py.ops.observe import observable

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _points(kernel_h, kernel_w, dilation_h, dilation_w, remove_center):
    """Kernel-point displacements (i*dw - half_w, j*dh - half_h) in DCNv4 point order (i outer)."""
    half_w, half_h = dilation_w * (kernel_w - 1) // 2, dilation_h * (kernel_h - 1) // 2
    pts = [(i * dilation_w - half_w, j * dilation_h - half_h)
           for i in range(kernel_w) for j in range(kernel_h)
           if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]
    return pts


def dcnv4_reference(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                    dilation_h, dilation_w, group, group_channels, offset_scale=1.0,
                    remove_center=False):
    """DCNv4 in plain PyTorch (F.grid_sample); any floating dtype and device. See `dcnv4` for the maths.

    float16/bfloat16 inputs are computed in float32 (sampling positions in half precision would be off
    by a large fraction of a pixel) and the output is cast back. No input validation beyond what the
    tensor ops do: call `dcnv4(..., backend="reference")` for that.
    """
    if value.dtype in (torch.float16, torch.bfloat16):
        return dcnv4_reference(value.float(), offset_mask.float(), kernel_h, kernel_w, stride_h, stride_w,
                               pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                               remove_center).to(value.dtype)
    N, H, W, _ = value.shape
    G, D = group, group_channels
    Ho, Wo = offset_mask.shape[1], offset_mask.shape[2]
    pts = _points(kernel_h, kernel_w, dilation_h, dilation_w, remove_center)
    K = len(pts)
    dev, dt = value.device, offset_mask.dtype
    om = offset_mask[..., :3 * G * K].reshape(N, Ho, Wo, G, 3 * K)
    off = om[..., :2 * K].unflatten(-1, (K, 2))  # (N, Ho, Wo, G, K, [dx, dy])
    mask = om[..., 2 * K:]  # (N, Ho, Wo, G, K)
    # Point k's displacement (as in _points) from an arange, not torch.tensor(list): the reference is
    # also the op's decomposition for ONNX export, whose retrace rejects such constants.
    k = torch.arange(K, device=dev)
    if remove_center:
        k = k + (k >= (kernel_w // 2) * kernel_h + kernel_h // 2).long()
    kx = ((k // kernel_h) * dilation_w - dilation_w * (kernel_w - 1) // 2).to(dt)
    ky = ((k % kernel_h) * dilation_h - dilation_h * (kernel_h - 1) // 2).to(dt)
    base_w = (torch.arange(Wo, device=dev) * stride_w - pad_w + dilation_w * (kernel_w - 1) // 2).to(dt)
    base_h = (torch.arange(Ho, device=dev) * stride_h - pad_h + dilation_h * (kernel_h - 1) // 2).to(dt)
    # Pixel coordinates (centres at integers) in the unpadded input.
    w = base_w.view(1, 1, Wo, 1, 1) + (kx + off[..., 0]) * offset_scale
    h = base_h.view(1, Ho, 1, 1, 1) + (ky + off[..., 1]) * offset_scale
    # align_corners=False normalisation: pixel p <-> (2p + 1)/size - 1; padding "zeros" gives the
    # zero-outside bilinear rule (a sample with h <= -1 or h >= H has no corner inside).
    grid = torch.stack(((2 * w + 1) / W - 1, (2 * h + 1) / H - 1), dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(N * G, Ho * Wo, K, 2)
    v = value.view(N, H, W, G, D).permute(0, 3, 4, 1, 2).reshape(N * G, D, H, W)
    sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = mask.permute(0, 3, 1, 2, 4).reshape(N * G, 1, Ho * Wo, K)
    out = (sampled * m).sum(-1)  # (N*G, D, Ho*Wo)
    return out.view(N, G, D, Ho, Wo).permute(0, 3, 4, 1, 2).reshape(N, Ho, Wo, G * D)


# ------------------------------------------------------------------------------------------------
# Kernel binding

def kernel_params(value, offset_mask, cfg):
    """The kernels' Params as a dict (cc/kernels/dcnv4/dcnv4_params.h), the same for the CPU and CUDA
    modules; callers add the output pointers (and, for the backward, grad_output)."""
    (N, H, W, Ho, Wo, P, kh, kw, sh, sw, ph, pw, dh, dw, G, D, s, rc) = cfg
    return dict(dtype=_common.dtype_name(value), batch=N, height=H, width=W, out_height=Ho, out_width=Wo,
                offset_channels=P, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw,
                dilation_h=dh, dilation_w=dw, group=G, group_channels=D, offset_scale=float(s),
                remove_center=bool(rc), value=value.data_ptr(), value_strides=list(value.stride()),
                offset_mask=offset_mask.data_ptr(), offset_mask_strides=list(offset_mask.stride()))


def _channels_unit_stride(t):
    # Not .contiguous(): it keeps any stride of a size-1 dim (C = 1) and every stride of an empty
    # tensor (the stride-0 gradient of an empty output's sum), which the kernel rejects.
    return t if t.stride(-1) == 1 else t.clone(memory_format=torch.contiguous_format)


def _cpu_forward(value, offset_mask, cfg):
    value = _channels_unit_stride(value)
    out = torch.empty(cfg[0], cfg[3], cfg[4], cfg[14] * cfg[15], dtype=value.dtype)
    _native.require("dcnv4_cpu").forward(dict(kernel_params(value, offset_mask, cfg), out=out.data_ptr(),
                                              threads=torch.get_num_threads()))
    return out


def _cpu_backward(value, offset_mask, grad_out, cfg):
    value = _channels_unit_stride(value)
    grad_out = _channels_unit_stride(grad_out)
    grad_value = torch.empty(value.shape, dtype=value.dtype)
    grad_om = torch.empty(offset_mask.shape, dtype=offset_mask.dtype)
    _native.require("dcnv4_cpu").backward(dict(
        kernel_params(value, offset_mask, cfg), grad_output=grad_out.data_ptr(),
        grad_output_strides=list(grad_out.stride()), grad_value=grad_value.data_ptr(),
        grad_offset_mask=grad_om.data_ptr(), threads=torch.get_num_threads()))
    return grad_value, grad_om


# ------------------------------------------------------------------------------------------------
# Custom ops torch.ops.visionssm.dcnv4 / dcnv4_backward (py/ops/_library.py), with autograd

def _cfg(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
         group, group_channels, offset_scale, remove_center):
    """The kernels' cfg tuple (N, H, W, Ho, Wo, P, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels,
    offset_scale, remove_center), the sizes read from the tensors."""
    N, H, W, _ = value.shape
    _, Ho, Wo, P = offset_mask.shape
    return (N, H, W, Ho, Wo, P, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, float(offset_scale), bool(remove_center))


def _check_native(op, value):
    if value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"visionssm::{op} on the CPU takes float32/float64 value, got {value.dtype}")


@_library.custom_op("dcnv4")
def dcnv4_op(value: torch.Tensor, offset_mask: torch.Tensor, kernel_h: int, kernel_w: int, stride_h: int,
             stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
             group_channels: int, offset_scale: float = 1.0, remove_center: bool = False) -> torch.Tensor:
    """`dcnv4_reference` of the same arguments (validated by `dcnv4`); CPU kernel: float32/float64."""
    _check_native("dcnv4", value)
    return _cpu_forward(value, offset_mask, _cfg(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                                 pad_w, dilation_h, dilation_w, group, group_channels,
                                                 offset_scale, remove_center))


@dcnv4_op.register_fake
def _(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
      group_channels, offset_scale=1.0, remove_center=False):
    return value.new_empty(offset_mask.shape[:3] + (group * group_channels,))


@_library.custom_op("dcnv4_backward")
def dcnv4_backward_op(grad_out: torch.Tensor, value: torch.Tensor, offset_mask: torch.Tensor, kernel_h: int,
                      kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                      dilation_w: int, group: int, group_channels: int, offset_scale: float, remove_center: bool
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_value, grad_offset_mask); deterministic (no atomics), padding channels of offset_mask get 0."""
    _check_native("dcnv4_backward", value)
    cfg = _cfg(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
               group, group_channels, offset_scale, remove_center)
    return _cpu_backward(value, offset_mask, grad_out.to(value.dtype), cfg)


@dcnv4_backward_op.register_fake
def _(grad_out, value, offset_mask, *conv):
    return value.new_empty(value.shape), offset_mask.new_empty(offset_mask.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.conv = inputs[2:]


def _backward(ctx, grad_out):
    value, offset_mask = ctx.saved_tensors
    grad_value, grad_om = dcnv4_backward_op(grad_out, value, offset_mask, *ctx.conv)
    return (grad_value, grad_om) + (None,) * len(ctx.conv)


dcnv4_op.register_autograd(_backward, setup_context=_setup_context)


# ---- CUDA kernel registration ----  (the kernels and their first-call self-check: py/ops/dcnv4_cuda.py)
@dcnv4_op.register_kernel("cuda")
def _(value, offset_mask, *conv):
    from py.ops import dcnv4_cuda
    return dcnv4_cuda.op_forward(value, offset_mask, *conv)


@dcnv4_backward_op.register_kernel("cuda")
def _(grad_out, value, offset_mask, *conv):
    from py.ops import dcnv4_cuda
    return dcnv4_cuda.op_backward(grad_out, value, offset_mask, *conv)


# ------------------------------------------------------------------------------------------------
# Public op

def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")


@observable("dcnv4")
def dcnv4(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
          dilation_w, group, group_channels, offset_scale=1.0, remove_center=False, backend="auto"):
    """DCNv4 deformable convolution (no softmax on the modulation), channel-last.

    Shapes:
      value:       (N, H, W, group*group_channels)
      offset_mask: (N, H_out, W_out, P), P a multiple of 8 with P >= 3*group*K,
                   K = kernel_h*kernel_w - remove_center; H_out = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1))
                   // stride_h + 1, likewise W_out.
      returns:     (N, H_out, W_out, group*group_channels), dtype of value.
    N, group and group_channels may be 0 (an empty result); H and W must be >= 1 (there is nothing
    to sample from otherwise), H_out and W_out >= 1.
    offset_mask layout: for group g a contiguous block of 3K values at channel g*3K,
    [dx_0, dy_0, ..., dx_{K-1}, dy_{K-1}, m_0, ..., m_{K-1}]; channels 3*group*K..P are ignored
    (they get zero gradient). Point order: kernel column i (width) outer, row j (height) inner, the
    centre (i, j) = (kernel_w//2, kernel_h//2) skipped when remove_center (which needs odd kernels).

    Formula, per output pixel (ho, wo), group g, point k = (i, j), half_w = dilation_w*(kernel_w-1)//2,
    half_h likewise, s = offset_scale:
      w = wo*stride_w - pad_w + half_w + (i*dilation_w - half_w + dx_k)*s
      h = ho*stride_h - pad_h + half_h + (j*dilation_h - half_h + dy_k)*s
      out[n, ho, wo, g*D + c] = sum_k m_k * bilinear(value[n, :, :, g*D + c], h, w)
    in pixel coordinates of the unpadded input (pixel centres at integers). Bilinear interpolation
    uses only corners inside [0, H) x [0, W) (zero outside), and the sample is taken only when
    -1 < h < H and -1 < w < W. The mask m is used as is (no softmax). Any kernel size and any
    group_channels (upstream CUDA only compiles K in {8, 9} and group_channels % 16 == 0).

    Gradients: value and offset_mask (on every backend). The CPU backward is deterministic (no
    atomics; bitwise the same for any thread count). At exactly integer sampling positions the offset
    gradient is the one-sided derivative (floor convention, like F.grid_sample).
    Non-finite values are not scanned for (these are large activations); the CPU kernel treats a NaN
    sampling position as outside the image.

    Backends: "reference" = `dcnv4_reference` (F.grid_sample; any floating dtype/device);
    "cpu" = the C++ kernel (float32/float64 CPU tensors, deterministic backward); "cuda" = the CUDA
    kernels (float32/float16/bfloat16; deterministic backward unless
    py.ops.dcnv4_cuda.set_backward_mode("atomic"); compiled, not yet run on a GPU: the first call per
    dtype/device self-checks against the reference and falls back to it with a warning if they
    disagree); "auto" = "cpu" for float32/float64 CPU tensors, "cuda" for CUDA tensors of those
    dtypes when the extension is built, the reference otherwise (CUDA tensors warn once).
    """
    _common.check_tensor("value", value, ndim=4, dtypes=_FLOATS, shape_doc="(N, H, W, group*group_channels)")
    _common.check_tensor("offset_mask", offset_mask, ndim=4, dtypes=(value.dtype,),
                         shape_doc="(N, H_out, W_out, P)")
    _common.check_same_device(value=value, offset_mask=offset_mask)
    for name, v, lo in (("kernel_h", kernel_h, 1), ("kernel_w", kernel_w, 1), ("stride_h", stride_h, 1),
                        ("stride_w", stride_w, 1), ("pad_h", pad_h, 0), ("pad_w", pad_w, 0),
                        ("dilation_h", dilation_h, 1), ("dilation_w", dilation_w, 1),
                        ("group", group, 0), ("group_channels", group_channels, 0)):  # 0: empty output
        _check_int(name, v, lo)
    (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
     group_channels) = (int(v) for v in (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                         dilation_h, dilation_w, group, group_channels))
    remove_center = bool(remove_center)
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError(f"remove_center needs odd kernel_h and kernel_w, got {kernel_h}x{kernel_w}")
    K = kernel_h * kernel_w - int(remove_center)
    if K < 1:
        raise ValueError("remove_center with a 1x1 kernel leaves no sampling point")
    offset_scale = float(offset_scale)
    # Not math.isfinite: torch.compile(dynamic=True) traces offset_scale as a symbolic float.
    if offset_scale != offset_scale or abs(offset_scale) == math.inf:
        raise ValueError(f"offset_scale must be finite, got {offset_scale}")
    N, H, W, C = value.shape
    if C != group * group_channels:
        raise ValueError(f"value must have shape (N, H, W, group*group_channels) = (*, *, *, "
                         f"{group * group_channels}), got {tuple(value.shape)}")
    if H < 1 or W < 1:
        raise ValueError(f"value must have H, W >= 1, got shape {tuple(value.shape)}")
    Ho = _out_size(H, kernel_h, stride_h, pad_h, dilation_h)
    Wo = _out_size(W, kernel_w, stride_w, pad_w, dilation_w)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"value of spatial size {H}x{W} is too small for the kernel/padding/dilation "
                         f"(output would be {Ho}x{Wo})")
    P = offset_mask.shape[-1]
    min_p = 3 * group * K
    _common.check_shape("offset_mask", offset_mask, (N, Ho, Wo, None),
                        shape_doc=f"(N, H_out, W_out, P) with P % 8 == 0 and P >= 3*group*K = {min_p}")
    if P % 8 != 0 or P < min_p:
        raise ValueError(f"offset_mask must have P = shape[-1] a multiple of 8 and >= 3*group*K = {min_p}, "
                         f"got shape {tuple(offset_mask.shape)}")
    native_dtype = value.dtype in (torch.float32, torch.float64)
    backend = _common.resolve_backend("dcnv4", backend, value.device,
                                      cpu_dtype_ok=native_dtype and value.device.type == "cpu",
                                      cuda_extension="dcnv4_cuda" if value.dtype != torch.float64 else None)
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center)
    if backend == "cuda":
        from py.ops import dcnv4_cuda
        dcnv4_cuda.check_launch(value, offset_mask)
    # FLOP convention (py.models.flops): 4 MACs of bilinear sampling + 1 of modulation per output
    # channel and sampling point, 5*N*H_out*W_out*group*group_channels*K (InternImage's DCNv3 rule).
    with _common.op_scope("dcnv4", lambda: 5 * N * Ho * Wo * group * group_channels * K):
        if backend == "reference":
            return dcnv4_reference(value, offset_mask, *args)
        return dcnv4_op(value, offset_mask, *args)
