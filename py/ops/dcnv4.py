"""DCNv4: deformable convolution with unnormalised modulation (OpenGVLab DCNv4 operator semantics).

Three layers, like the other ops:
  * `dcnv4_reference`: plain PyTorch built on F.grid_sample (any floating dtype, autograd for free);
  * the `cc.kernels.dcnv4_cpu` kernels (float32/float64 forward and deterministic backward);
  * `DCNv4Function`, the autograd Function around them.
`dcnv4(...)` validates the inputs and dispatches on `backend`.
"""
import math
import numbers

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from py.ops import _common, _native
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
    kx = torch.tensor([p[0] for p in pts], dtype=dt, device=dev)
    ky = torch.tensor([p[1] for p in pts], dtype=dt, device=dev)
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

def _cfg_lists(cfg):
    (N, H, W, Ho, Wo, P, kh, kw, sh, sw, ph, pw, dh, dw, G, D, s, rc) = cfg
    return [N, H, W, Ho, Wo, P], [kh, kw, sh, sw, ph, pw, dh, dw], G, D, s, rc


def _channels_unit_stride(t):
    # Not .contiguous(): it keeps any stride of a size-1 dim (C = 1) and every stride of an empty
    # tensor (the stride-0 gradient of an empty output's sum), which the kernel rejects.
    return t if t.stride(-1) == 1 else t.clone(memory_format=torch.contiguous_format)


def _cpu_forward(value, offset_mask, cfg):
    shape, conv, G, D, s, rc = _cfg_lists(cfg)
    value = _channels_unit_stride(value)
    out = torch.empty(shape[0], shape[3], shape[4], G * D, dtype=value.dtype)
    _native.require("dcnv4_cpu").forward(
        _common.dtype_name(value), value.data_ptr(), list(value.stride()), offset_mask.data_ptr(),
        list(offset_mask.stride()), out.data_ptr(), shape, conv, G, D, float(s), bool(rc),
        torch.get_num_threads())
    return out


def _cpu_backward(value, offset_mask, grad_out, cfg):
    shape, conv, G, D, s, rc = _cfg_lists(cfg)
    value = _channels_unit_stride(value)
    grad_out = _channels_unit_stride(grad_out)
    grad_value = torch.empty(value.shape, dtype=value.dtype)
    grad_om = torch.empty(offset_mask.shape, dtype=offset_mask.dtype)
    _native.require("dcnv4_cpu").backward(
        _common.dtype_name(value), value.data_ptr(), list(value.stride()), offset_mask.data_ptr(),
        list(offset_mask.stride()), grad_out.data_ptr(), list(grad_out.stride()),
        grad_value.data_ptr(), grad_om.data_ptr(), shape, conv, G, D, float(s), bool(rc),
        torch.get_num_threads())
    return grad_value, grad_om


class DCNv4Function(torch.autograd.Function):
    """Autograd around the CPU kernel; gradients for value and offset_mask (padding channels get 0).

    apply(value, offset_mask, cfg) with cfg = (N, H, W, Ho, Wo, P, kh, kw, sh, sw, ph, pw, dh, dw,
    group, group_channels, offset_scale, remove_center); inputs already validated by `dcnv4`.
    """

    @staticmethod
    def forward(ctx, value, offset_mask, cfg):
        ctx.save_for_backward(value, offset_mask)
        ctx.cfg = cfg
        return _cpu_forward(value, offset_mask, cfg)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, offset_mask = ctx.saved_tensors
        grad_value, grad_om = _cpu_backward(value, offset_mask, grad_out, ctx.cfg)
        return (grad_value if ctx.needs_input_grad[0] else None,
                grad_om if ctx.needs_input_grad[1] else None, None)


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
    "cpu" = the C++ kernel (float32/float64 CPU tensors, deterministic backward); "auto" = "cpu" for
    float32/float64 CPU tensors, the reference otherwise (CUDA tensors warn once); "cuda" is not
    implemented yet.
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
    if not math.isfinite(offset_scale):
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
                                      cpu_dtype_ok=native_dtype and value.device.type == "cpu")
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center)
    if backend == "cuda":
        raise NotImplementedError("dcnv4: backend='cuda' has no CUDA kernel yet; use backend='reference'")
    # FLOP convention (py.models.flops): 4 MACs of bilinear sampling + 1 of modulation per output
    # channel and sampling point, 5*N*H_out*W_out*group*group_channels*K (InternImage's DCNv3 rule).
    with _common.op_scope("dcnv4", lambda: 5 * N * Ho * Wo * group * group_channels * K):
        if backend == "reference":
            return dcnv4_reference(value, offset_mask, *args)
        cfg = (N, H, W, Ho, Wo, P, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
               dilation_w, group, group_channels, offset_scale, remove_center)
        return DCNv4Function.apply(value, offset_mask, cfg)
