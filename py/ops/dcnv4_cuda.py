"""DCNv4 on CUDA: binding of `cc.kernels.dcnv4_cuda` (compiled, not yet run on a GPU).

  * `op_forward` / `op_backward`: the CUDA kernels of torch.ops.visionssm.dcnv4 / dcnv4_backward
    (registered in py.ops.dcnv4, whose autograd they serve), with the first-call self-check: the
    first call per (dtype, vector path, backward mode, device) runs the kernels on a tiny random
    problem against the float64 reference and, if they disagree or fail, warns once and uses the
    reference from then on;
  * `set_backward_mode`: how grad_value is accumulated. "deterministic" (the default): a stable
    sort of the (destination, entry) pairs and a segmented sum, bitwise reproducible like the CPU
    kernel, so runs and backends compare exactly; "atomic": float32 atomicAdd, faster, with
    run-to-run rounding noise (ignored while torch.use_deterministic_algorithms(True) is on).
"""
import torch

from py.ops import _cuda_dispatch, _native

EXT = "dcnv4_cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Self-check tolerances against the float64 reference (fp32 accumulation; inputs rounded to the dtype).
_TOL = {torch.float32: (1e-3, 1e-3), torch.float16: (1e-2, 2e-2), torch.bfloat16: (5e-2, 1e-1)}
_MODES = ("deterministic", "atomic")
_ALIGN = 256  # dcnv4_layout.h kWorkspaceAlign
_mode = "deterministic"


def set_backward_mode(mode):
    """"deterministic" (default) or "atomic" value-gradient accumulation; returns the previous mode."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"dcnv4 backward mode must be one of {_MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


def _deterministic():
    return _mode == "deterministic" or torch.are_deterministic_algorithms_enabled()


def check_launch(value, offset_mask):
    """What backend='cuda' needs beyond py.ops.dcnv4's own checks."""
    _cuda_dispatch.check_cuda_tensors("dcnv4", DTYPES, value=value, offset_mask=offset_mask)


def _params(value, offset_mask, cfg):
    from py.ops.dcnv4 import kernel_params
    return dict(kernel_params(value, offset_mask, cfg), stream=_cuda_dispatch.stream_of(value))


def _empty(cfg):
    N, Ho, Wo, G, D = cfg[0], cfg[3], cfg[4], cfg[14], cfg[15]
    return N * Ho * Wo * G * D == 0


def kernel_forward(value, offset_mask, cfg):
    """out (N, Ho, Wo, G*D) from the forward kernel (cfg: py.ops.dcnv4._cfg); no self-check."""
    from py.ops.dcnv4 import _channels_unit_stride
    N, Ho, Wo, G, D = cfg[0], cfg[3], cfg[4], cfg[14], cfg[15]
    out = torch.empty(N, Ho, Wo, G * D, dtype=value.dtype, device=value.device)
    if _empty(cfg):
        return out
    value = _channels_unit_stride(value)
    _native.require(EXT).forward(dict(_params(value, offset_mask, cfg), out=out.data_ptr()))
    return out


def kernel_backward(grad_out, value, offset_mask, cfg, deterministic=None):
    """(grad_value, grad_offset_mask) from the backward kernels; no self-check."""
    from py.ops.dcnv4 import _channels_unit_stride
    deterministic = _deterministic() if deterministic is None else deterministic
    grad_value = torch.zeros(value.shape, dtype=value.dtype, device=value.device)
    grad_om = torch.zeros(offset_mask.shape, dtype=offset_mask.dtype, device=offset_mask.device)
    if _empty(cfg):  # nothing sampled: both gradients are zero
        return grad_value, grad_om
    value = _channels_unit_stride(value)
    grad_out = _channels_unit_stride(grad_out.to(value.dtype))
    mod = _native.require(EXT)
    params = dict(_params(value, offset_mask, cfg), grad_output=grad_out.data_ptr(),
                  grad_output_strides=list(grad_out.stride()), grad_value=grad_value.data_ptr(),
                  grad_offset_mask=grad_om.data_ptr(), deterministic=bool(deterministic))
    nbytes = mod.workspace_bytes(params)
    workspace = torch.empty(nbytes + _ALIGN, dtype=torch.uint8, device=value.device) if nbytes else None
    ptr = -(-workspace.data_ptr() // _ALIGN) * _ALIGN if nbytes else 0  # the kernels want 256-byte alignment
    mod.backward(dict(params, workspace=ptr, workspace_bytes=nbytes))
    return grad_value, grad_om


def random_offset_mask(shape, dtype, generator):
    """Test offsets (and masks) +-(n + 0.25..0.75), n = 0, 1, 2: with offset_scale 1 (or 0.5, 0.25)
    every sample stays a quarter pixel or more from a pixel edge, also after rounding to the dtype.
    At an edge the offset gradient jumps (one-sided, floor convention), and the float64
    reference's grid_sample normalisation may round to the other side."""
    n = torch.randint(0, 3, shape, generator=generator) + 0.25 + 0.5 * torch.rand(shape, generator=generator)
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return (sign * n).to(dtype)


def _self_check(value, cfg):
    """True if the kernels matched the float64 reference for this dtype/device, on the caller's
    vector path (group_channels % 8) and backward mode (checked once each)."""
    from py.ops.dcnv4 import _cfg, dcnv4_reference
    vec = cfg[15] % 8 == 0
    deterministic = _deterministic()
    g = torch.Generator().manual_seed(4321)
    N, H, W, G, D = 2, 5, 6, 2, (16 if vec else 5)
    conv = (3, 3, 1, 1, 1, 1, 1, 1, G, D, 1.0, False)
    K, P = 9, 56  # P = 3*G*K = 54 rounded up to a multiple of 8
    # Rounded to the dtype first, so the reference sees the kernel's inputs.
    v = torch.randn(N, H, W, G * D, generator=g).to(value.dtype)
    om = random_offset_mask((N, H, W, P), value.dtype, g)  # up to 2.75 pixels: some samples land outside
    gy = torch.randn(N, H, W, G * D, generator=g).to(value.dtype)

    def kernel():
        vv, oo = v.to(value.device), om.to(value.device)
        c = _cfg(vv, oo, *conv)
        return [kernel_forward(vv, oo, c), *kernel_backward(gy.to(value.device), vv, oo, c, deterministic)]

    def reference():
        vv, oo = v.double().requires_grad_(), om.double().requires_grad_()
        out = dcnv4_reference(vv, oo, *conv)
        return [out.detach(), *torch.autograd.grad(out, (vv, oo), gy.double())]

    key = f"dcnv4[{'vec8' if vec else 'scalar'}, {'deterministic' if deterministic else 'atomic'}]"
    return _cuda_dispatch.self_check(key, value.dtype, value.device, kernel, reference, *_TOL[value.dtype])


def op_forward(value, offset_mask, *conv):
    """CUDA kernel of torch.ops.visionssm.dcnv4 (conv: the op's scalar arguments); the reference where
    the kernels failed their self-check."""
    from py.ops.dcnv4 import _cfg, dcnv4_reference
    cfg = _cfg(value, offset_mask, *conv)
    if not _self_check(value, cfg):
        return dcnv4_reference(value, offset_mask, *conv)
    return kernel_forward(value, offset_mask, cfg)


def op_backward(grad_out, value, offset_mask, *conv):
    """CUDA kernel of torch.ops.visionssm.dcnv4_backward; the reference's autograd where the kernels
    failed their self-check."""
    from py.ops.dcnv4 import _cfg, dcnv4_reference
    cfg = _cfg(value, offset_mask, *conv)
    if not _self_check(value, cfg):
        with torch.enable_grad():
            v, o = value.detach().requires_grad_(), offset_mask.detach().requires_grad_()
            return torch.autograd.grad(dcnv4_reference(v, o, *conv), (v, o), grad_out)
    return kernel_backward(grad_out, value, offset_mask, cfg)
