"""Selective scan (the S6 recurrence of Mamba-1 / VMamba / Vim): reference, CPU kernel, autograd.

Three layers, as in mamba_ssm:
  * `selective_scan_reference`: the sequential recurrence in plain PyTorch (any float dtype; the
    oracle of the tests, differentiable through autograd);
  * the native kernel `cc.kernels.selective_scan_cpu` (float32/float64 forward and backward);
  * the custom ops torch.ops.visionssm.selective_scan / selective_scan_backward over the kernels (CPU
    here, CUDA from py/ops/selective_scan_cuda.py), with their fake implementation and autograd, so
    torch.compile and torch.export keep them in the graph.
`selective_scan` validates the arguments and dispatches on `backend`.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from py.ops import _common, _library, _native
from py.ops.observe import observable

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_EXT = "selective_scan_cpu"


def _compute_dtype(dtype):
    """fp32 state for fp32/fp16/bf16 inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """The recurrence step by step in plain PyTorch (differentiable; slow for long sequences).

    Same arguments and result as `selective_scan`; no validation beyond what PyTorch does.
    Computes in float64 for float64 `u`, otherwise in float32, and returns `u`'s dtype.
    """
    dtype_out = u.dtype
    cd = _compute_dtype(u.dtype)
    u, delta, A = u.to(cd), delta.to(cd), A.to(cd)
    B, C = B.to(cd), C.to(cd)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, dim, L = u.shape
    N = A.shape[1]
    rep = dim // B.shape[1]
    Bx = B.repeat_interleave(rep, dim=1)  # (batch, dim, N, L)
    Cx = C.repeat_interleave(rep, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # log1p(exp(x)) for x <= 20, x above (threshold 20)
    dA = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (batch, dim, N, L)
    dBu = delta[:, :, None, :] * Bx * u[:, :, None, :]
    h = u.new_zeros(batch, dim, N)
    ys = []
    # unbind: one backward node per tensor (indexing [..., t] at every step would make the backward
    # quadratic in L, each step's gradient a full-size zero tensor).
    for dA_t, dBu_t, C_t in zip(dA.unbind(-1), dBu.unbind(-1), Cx.unbind(-1)):
        h = dA_t * h + dBu_t
        ys.append((h * C_t).sum(-1))
    # L = 0: an empty y that still depends on every input, so each gets a (zero) gradient like the
    # kernel's, not None.
    y = torch.stack(ys, dim=-1) if ys else (dA * dBu * Cx).sum(2)
    if D is not None:
        y = y + D.to(cd)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(dtype_out)
    if return_last_state:
        return y, h.detach().to(dtype_out)
    return y


# --------------------------------------------------------------------------------------------
# Native CPU kernel


def _lastdim_contig(x):
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _ptr(x):
    return 0 if x is None else x.data_ptr()


def _slices(batch, groups, cpg):
    """Channel slices per (batch, group) in the backward: enough units for parallelism, each with its
    own dB/dC partial sum (a function of the shape only, so results do not depend on threads)."""
    units = max(1, batch * groups)
    return max(1, min(cpg, -(-64 // units)))


def kernel_params(u, delta, A, B, C, D, z, delta_bias, softplus):
    """The kernels' Params (cc/kernels/selective_scan/selective_scan_params.h) as the dict both
    extensions take: sizes (batch, dim, L) from delta (u may be CUDA's cross-2D map), pointers,
    element strides, flags. delta is None in the CPU N = 1 backward, which reads the saved softplus(δ)."""
    batch, dim, L = (u if delta is None else delta).shape
    return dict(dtype=_common.dtype_name(u), batch=batch, dim=dim, seqlen=L,
                dstate=A.shape[1], groups=B.shape[1], softplus=bool(softplus),
                u=_ptr(u), u_batch_stride=u.stride(0), u_dim_stride=u.stride(1),
                delta=_ptr(delta), delta_batch_stride=0 if delta is None else delta.stride(0),
                delta_dim_stride=0 if delta is None else delta.stride(1),
                A=_ptr(A), A_dim_stride=A.stride(0), A_state_stride=A.stride(1),
                B=_ptr(B), B_batch_stride=B.stride(0), B_group_stride=B.stride(1), B_state_stride=B.stride(2),
                C=_ptr(C), C_batch_stride=C.stride(0), C_group_stride=C.stride(1), C_state_stride=C.stride(2),
                D=_ptr(D), D_stride=0 if D is None else D.stride(0),
                delta_bias=_ptr(delta_bias), delta_bias_stride=0 if delta_bias is None else delta_bias.stride(0),
                z=_ptr(z), z_batch_stride=0 if z is None else z.stride(0), z_dim_stride=0 if z is None else z.stride(1))


# --------------------------------------------------------------------------------------------
# Custom ops: torch.ops.visionssm.selective_scan / selective_scan_backward (py/ops/_library.py)


def _residuals(u, N, groups, has_z, save, device_type):
    """Shapes and dtype of the forward's saved residuals (ckpt, saved_delta) for the backward kernel;
    None = absent. A function of sizes only, shared by the kernels and the fake implementation.
    CPU: the state every chunk_len(N) steps (only with more than one block) and, on the float32 N = 1
    path, softplus(δ) (the backward then skips that math). CUDA: the float32 state every chunk."""
    if not save:
        return None, None, u.dtype
    batch, dim, L = u.shape
    if device_type == "cuda":
        chunk = _native.require("selective_scan_cuda").chunk_len()
        return (batch, dim, -(-L // chunk), N), None, torch.float32
    mod = _native.require(_EXT)
    nblk = -(-L // mod.chunk_len(N))
    n1 = u.dtype == torch.float32 and mod.n1_path(N, has_z, dim // groups)
    return ((batch, dim, nblk, N) if nblk > 1 else None), ((batch * dim * L,) if n1 else None), u.dtype


@_library.custom_op("selective_scan")
def selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                      delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                      save_for_backward: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, last_state, ckpt, saved_delta) = `selective_scan_reference(..., return_last_state=True)` plus the
    backward's residuals (absent unless save_for_backward). B, C 4-D. CPU kernel: u, delta, B, C, z
    float32/float64 of one dtype (A, D, delta_bias are cast to it)."""
    mod = _native.require(_EXT)
    if u.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"visionssm::selective_scan on the CPU takes float32/float64 u, got {u.dtype}")
    u, delta, B, C, z = (_lastdim_contig(t) for t in (u, delta, B, C, z))
    A, D, delta_bias = (None if t is None else t.to(u.dtype) for t in (A, D, delta_bias))
    batch, dim, L = u.shape
    N = A.shape[1]
    ckpt_shape, saved_shape, _ = _residuals(u, N, B.shape[1], z is not None, save_for_backward, "cpu")
    y = torch.empty(batch, dim, L, dtype=u.dtype)
    last = torch.empty(batch, dim, N, dtype=u.dtype)
    ckpt = torch.empty(ckpt_shape, dtype=u.dtype) if ckpt_shape else None
    saved = torch.empty(saved_shape, dtype=u.dtype) if saved_shape else None
    params = kernel_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    mod.forward(dict(params, y=y.data_ptr(), last_state=last.data_ptr(), ckpt=_ptr(ckpt), saved_delta=_ptr(saved)),
                threads=torch.get_num_threads())
    return (y, last, _library.absent(u) if ckpt is None else ckpt,
            _library.absent(u) if saved is None else saved)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, save_for_backward=False):
    ckpt, saved, rdtype = _residuals(u, A.shape[1], B.shape[1], z is not None, save_for_backward, u.device.type)
    res = lambda shape: u.new_empty(shape if shape else (0,), dtype=rdtype if shape else u.dtype)
    return u.new_empty(delta.shape), u.new_empty(delta.shape[:2] + A.shape[1:]), res(ckpt), res(saved)


@_library.custom_op("selective_scan_backward")
def selective_scan_backward_op(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                               B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                               z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                               delta_softplus: bool, ckpt: torch.Tensor, saved_delta: torch.Tensor
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype, from the residuals the forward op saved
    (dD/dz/ddelta_bias are absent when D/z/delta_bias is None). dB/dC sums are deterministic."""
    mod = _native.require(_EXT)
    u, delta, B, C, z = (_lastdim_contig(t) for t in (u, delta, B, C, z))
    dtypes = [None if t is None else t.dtype for t in (A, D, delta_bias)]
    A, D, delta_bias = (None if t is None else t.to(u.dtype) for t in (A, D, delta_bias))
    batch, dim, L = u.shape
    groups, N = B.shape[1], A.shape[1]
    dy = _lastdim_contig(dy.to(u.dtype))
    slices = _slices(batch, groups, dim // groups)
    du = torch.empty(batch, dim, L, dtype=u.dtype)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else None
    dA_part = torch.empty(batch, dim, N, dtype=u.dtype)
    # one slice: the kernel writes the final dB/dC directly (no view of a bigger buffer is returned)
    dB_part = torch.empty((slices,) * (slices > 1) + (batch, groups, N, L), dtype=u.dtype)
    dC_part = torch.empty_like(dB_part)
    dD_part = torch.empty(batch, dim, dtype=u.dtype) if D is not None else None
    dbias_part = torch.empty(batch, dim, dtype=u.dtype) if delta_bias is not None else None
    saved = saved_delta if saved_delta.numel() else None
    # The N = 1 float32 path reads softplus(δ) from `saved` instead of delta.
    params = kernel_params(u, None if saved is not None else delta, A, B, C, D, z, delta_bias, delta_softplus)
    params.update(saved_delta=_ptr(saved), ckpt=_ptr(ckpt if ckpt.numel() else None), dout=dy.data_ptr(),
                  dout_batch_stride=dy.stride(0), dout_dim_stride=dy.stride(1), du=du.data_ptr(),
                  ddelta=ddelta.data_ptr(), dz=_ptr(dz), dA_part=dA_part.data_ptr(),
                  dB_part=dB_part.data_ptr(), dC_part=dC_part.data_ptr(), dD_part=_ptr(dD_part),
                  dbias_part=_ptr(dbias_part), slices=slices)
    mod.backward(params, threads=torch.get_num_threads())
    absent = lambda: _library.absent(u)  # one each: outputs must not alias
    return (du, ddelta, dA_part.sum(0).to(dtypes[0]), dB_part.sum(0) if slices > 1 else dB_part,
            dC_part.sum(0) if slices > 1 else dC_part, absent() if D is None else dD_part.sum(0).to(dtypes[1]),
            absent() if dz is None else dz, absent() if delta_bias is None else dbias_part.sum(0).to(dtypes[2]))


@selective_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, saved_delta):
    like = lambda t: u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
    return (u.new_empty(delta.shape), u.new_empty(delta.shape), like(A), like(B), like(C), like(D), like(z),
            like(delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, save = inputs
    _, _, ckpt, saved = output
    ctx.softplus, ctx.saved_residuals = softplus, save
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, saved)


def _backward(ctx, dy, _dlast, _dckpt, _dsaved):
    u, delta, A, B, C, D, z, delta_bias, ckpt, saved = ctx.saved_tensors
    if not ctx.saved_residuals:  # called without save_for_backward: recompute what the backward reads
        _, _, ckpt, saved = selective_scan_op(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, True)
    grads = selective_scan_backward_op(dy, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ckpt, saved)
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    return (du, ddelta, dA, dB, dC, _library.present(dD, D is not None), _library.present(dz, z is not None),
            _library.present(dbias, delta_bias is not None), None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


# ---- CUDA kernel registration ----  (the kernels and their first-call self-check: py/ops/selective_scan_cuda.py)
@selective_scan_op.register_kernel("cuda")
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, save_for_backward=False):
    from py.ops import selective_scan_cuda
    return selective_scan_cuda.op_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_for_backward)


@selective_scan_backward_op.register_kernel("cuda")
def _(dy, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, saved_delta):
    from py.ops import selective_scan_cuda
    return selective_scan_cuda.op_backward(dy, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt)


# --------------------------------------------------------------------------------------------
# Public API


@observable("selective_scan")
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Selective scan (S6) of Mamba-1 / VMamba / Vim.

    Shapes (G = groups, dim % G == 0; channel d uses group g = d // (dim // G)):
      u, delta, z: (batch, dim, L);  A: (dim, N), real;  B, C: (batch, G, N, L) or (batch, N, L) (G = 1);
      D, delta_bias: (dim,).  u, delta, B, C, z share a float dtype (float16/bfloat16/float32/float64);
      A, D, delta_bias may have any float dtype (they are used in the compute dtype).

    Computes, for every batch b, channel d, state n and step t (h_{-1} = 0):
      δ_t = delta[b,d,t] + delta_bias[d];  if delta_softplus: δ_t = log1p(exp(δ_t)) where δ_t <= 20
      h_t[n] = exp(δ_t·A[d,n]) · h_{t-1}[n] + δ_t · B[b,g,n,t] · u[b,d,t]
      y[b,d,t] = Σ_n C[b,g,n,t] · h_t[n] + D[d] · u[b,d,t]
      if z is given: y = y · silu(z)   (mamba_ssm's out_z convention)
    State and arithmetic are float32 for float32/16-bit inputs and float64 for float64 inputs; y has
    u's dtype. Gradients flow to every tensor argument that requires them (u, delta, A, B, C, D, z,
    delta_bias); dB/dC sums over a group's channels are deterministic.

    Returns y (batch, dim, L), or (y, last_state) with last_state = h_{L-1} (batch, dim, N), which
    carries no gradient, if return_last_state.

    backend: "cpu" (the C++ kernel; 16-bit inputs go through a float32 copy), "reference" (the
    sequential PyTorch loop, `selective_scan_reference`), "cuda" (the CUDA kernels, float32/16-bit inputs,
    N <= 256; not yet run on a GPU, so the first call per dtype/device self-checks against the
    reference and falls back to it with a warning if they disagree), or
    "auto" (cpu for CPU tensors; cuda for CUDA tensors when the extension is built, else the
    reference with a one-time warning).
    A, D and delta_bias are checked to be finite (cheap: they are small); the activations are not.
    """
    op = "selective_scan"
    _common.check_tensor("u", u, ndim=3, dtypes=_FLOATS, shape_doc="(batch, dim, L)")
    batch, dim, L = u.shape
    _common.check_tensor("delta", delta, ndim=3, dtypes=(u.dtype,), shape_doc="(batch, dim, L)")
    _common.check_shape("delta", delta, (batch, dim, L), shape_doc="(batch, dim, L) like u")
    _common.check_tensor("A", A, ndim=2, shape_doc="(dim, N)")
    if A.is_complex() or not A.is_floating_point():
        raise TypeError(f"A must be a real floating tensor (complex A is not supported), got {A.dtype}")
    _common.check_shape("A", A, (dim, None), shape_doc="(dim, N)")
    N = A.shape[1]
    if N < 1:
        raise ValueError(f"A must have shape (dim, N) with N >= 1, got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        _common.check_tensor(name, t, dtypes=(u.dtype,), shape_doc="(batch, groups, N, L) or (batch, N, L)")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be 3-D (batch, N, L) or 4-D (batch, groups, N, L), "
                             f"got shape {tuple(t.shape)}")
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups = B.shape[1]
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"B must have shape (batch, groups, N, L) with dim % groups == 0 "
                         f"(dim = {dim}), got {tuple(B.shape)}")
    _common.check_shape("B", B, (batch, groups, N, L), shape_doc="(batch, groups, N, L)")
    _common.check_shape("C", C, (batch, groups, N, L), shape_doc="(batch, groups, N, L) like B")
    _common.check_tensor("D", D, ndim=1, dtypes=_FLOATS, shape_doc="(dim,)", optional=True)
    _common.check_shape("D", D, (dim,), shape_doc="(dim,)")
    _common.check_tensor("z", z, ndim=3, dtypes=(u.dtype,), shape_doc="(batch, dim, L)", optional=True)
    _common.check_shape("z", z, (batch, dim, L), shape_doc="(batch, dim, L) like u")
    _common.check_tensor("delta_bias", delta_bias, ndim=1, dtypes=_FLOATS, shape_doc="(dim,)", optional=True)
    _common.check_shape("delta_bias", delta_bias, (dim,), shape_doc="(dim,)")
    _common.check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        _common.check_finite(name, t)

    cuda_ext = "selective_scan_cuda" if u.dtype != torch.float64 and N <= 256 else None
    backend = _common.resolve_backend(op, backend, u.device, cpu_dtype_ok=True, cuda_extension=cuda_ext)
    batch, dim, L = u.shape
    # FLOPs (py.models.flops convention, spec §6.2): 9·B·L·D·N for the scan, B·D·L per D/z term.
    flops = lambda: 9 * batch * L * dim * A.shape[1] + batch * dim * L * ((D is not None) + (z is not None))
    with _common.op_scope("selective_scan", flops):
        return _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend, op)


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend, op):
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if backend == "cuda":  # the CUDA kernels take 16-bit inputs as they are
        from py.ops import selective_scan_cuda
        selective_scan_cuda.check_launch(*tensors)
    else:  # the CPU kernel computes in float32/float64: 16-bit inputs go through a float32 copy
        cd = _compute_dtype(u.dtype)
        tensors = [None if t is None else t.to(cd) for t in tensors]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last, _, _ = selective_scan_op(*tensors, bool(delta_softplus), save)
    y = y.to(u.dtype)
    if return_last_state:
        return y, last.detach().to(u.dtype)
    return y
