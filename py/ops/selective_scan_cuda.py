"""Selective scan on CUDA: binding of `cc.kernels.selective_scan_cuda` (not yet run on a GPU).

  * `kernel_forward`/`kernel_backward`: the forward/backward kernels (float32/float16/bfloat16 inputs,
    float32 state; d_state 1..256; groups; optional z/D/delta_bias/softplus; any L; deterministic
    backward), and `SelectiveScanCudaFn`, autograd over them;
  * `op_forward`/`op_backward`: the CUDA kernels of torch.ops.visionssm.selective_scan(_backward)
    (registered in py.ops.selective_scan), with the first-call self-check; `check_launch`;
  * `selective_scan_cross2d`: VMamba's cross-scan + scan + cross-merge with the four traversals
    folded into the kernels' indexing (no (B, 4, C, L) copy of the map).
"""
import torch

from py.ops import _common, _cuda_dispatch, _native
from py.ops.selective_scan import kernel_params

EXT = "selective_scan_cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Self-check tolerances against the float64 reference (upstream's, spec section 9.4, widened x2).
_TOL = {torch.float32: (2e-3, 5e-3), torch.float16: (1e-2, 2e-2), torch.bfloat16: (6e-2, 1e-1)}


def _lastdim_contig(x):
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _f32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def launch_params(u, delta, A32, B, C, D32, z, bias32, softplus, hw=None):
    """The kernels' Params as a dict (selective_scan_params.h), filled as for the CPU kernel
    (`py.ops.selective_scan.kernel_params`). hw = (H, W): cross-2D, u is the map."""
    p = kernel_params(u, delta, A32, B, C, D32, z, bias32, softplus)
    if hw is not None:
        p.update(cross2d=True, height=hw[0], width=hw[1], u_h_stride=u.stride(2), u_w_stride=u.stride(3))
    return p


def kernel_forward(u, delta, A, B, C, D, z, delta_bias, softplus, hw, save):
    """The forward kernel: (y, last_state float32, ckpt float32 or None). hw = (H, W) selects cross-2D:
    u is the map (batch, dim/4, H, W) and y the merged (batch, dim/4, H, W); otherwise (batch, dim, L)."""
    mod = _native.require(EXT)
    if hw is None:
        u = _lastdim_contig(u)
    delta, B, C, z = (_lastdim_contig(t) for t in (delta, B, C, z))
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    batch, dim, L = delta.shape
    N = A.shape[1]
    nchunks = -(-L // mod.chunk_len())
    f32 = dict(dtype=torch.float32, device=delta.device)
    y = torch.empty(batch, dim, L, dtype=delta.dtype, device=delta.device)
    last = torch.empty(batch, dim, N, **f32)
    ckpt = torch.empty(batch, dim, nchunks, N, **f32) if save else None
    params = launch_params(u, delta, A32, B, C, D32, z, bias32, softplus, hw)
    mod.forward(dict(params, y=y.data_ptr(), last_state=last.data_ptr(), ckpt=_ptr(ckpt)),
                _cuda_dispatch.stream_of(delta))
    if hw is not None:  # cross-merge: each traversal wrote its y at its pixels; sum the four
        y = y.view(batch, 4, dim // 4, *hw).sum(1)
    return y, last, ckpt


def kernel_backward(dy, u, delta, A, B, C, D, z, delta_bias, softplus, hw, ckpt):
    """The backward kernel: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype
    (None for an absent input), from the forward's ckpt."""
    mod = _native.require(EXT)
    if hw is None:
        u = _lastdim_contig(u)
    delta, B, C, z = (_lastdim_contig(t) for t in (delta, B, C, z))
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    batch, dim, L = delta.shape
    groups, N = B.shape[1], A32.shape[1]
    dy = dy.to(delta.dtype)
    dy = dy if hw is not None else _lastdim_contig(dy)
    like = dict(dtype=delta.dtype, device=delta.device)
    f32 = dict(dtype=torch.float32, device=delta.device)
    slices = mod.bwd_slices(dim, groups, N)
    du, ddelta = torch.empty(batch, dim, L, **like), torch.empty(batch, dim, L, **like)
    dz = torch.empty(batch, dim, L, **like) if z is not None else None
    dA_part = torch.empty(batch, dim, N, **f32)
    dB_part, dC_part = (torch.empty(slices, batch, groups, N, L, **f32) for _ in range(2))
    dD_part = torch.empty(batch, dim, **f32) if D32 is not None else None
    dbias_part = torch.empty(batch, dim, **f32) if bias32 is not None else None
    params = launch_params(u, delta, A32, B, C, D32, z, bias32, softplus, hw)
    params.update(dout=dy.data_ptr(), dout_batch_stride=dy.stride(0), dout_dim_stride=dy.stride(1),
                  ckpt=ckpt.data_ptr(), du=du.data_ptr(), ddelta=ddelta.data_ptr(), dz=_ptr(dz),
                  dA_part=dA_part.data_ptr(), dB_part=dB_part.data_ptr(), dC_part=dC_part.data_ptr(),
                  dD_part=_ptr(dD_part), dbias_part=_ptr(dbias_part))
    if hw is not None:
        params.update(dout_h_stride=dy.stride(2), dout_w_stride=dy.stride(3))
    mod.backward(params, _cuda_dispatch.stream_of(delta))
    if hw is not None:  # each traversal wrote du at its pixels: the map's gradient is their sum
        du = du.view(batch, 4, dim // 4, *hw).sum(1).to(u.dtype)
    # Fixed-order sums (torch reductions over a leading dim are deterministic).
    return (du, ddelta, dA_part.sum(0).to(A.dtype), dB_part.sum(0).to(B.dtype), dC_part.sum(0).to(C.dtype),
            None if D is None else dD_part.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias_part.sum(0).to(delta_bias.dtype))


class SelectiveScanCudaFn(torch.autograd.Function):
    """Autograd over `kernel_forward`/`kernel_backward` (the fused cross-2D op and the self-check use it;
    py.ops.selective_scan goes through the custom op). Returns (y, last or None)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state, hw, save):
        needs_grad = bool(save) and any(ctx.needs_input_grad[:8])
        y, last, ckpt = kernel_forward(u, delta, A, B, C, D, z, delta_bias, softplus, hw, needs_grad)
        ctx.softplus, ctx.hw = bool(softplus), hw
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        last = last if return_last_state else None
        if last is not None:
            ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        grads = kernel_backward(dy, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ctx.hw, ckpt)
        return grads + (None, None, None, None)


def _apply(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state, hw):
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last = SelectiveScanCudaFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(softplus),
                                        bool(return_last_state), hw, save)
    return (y, last.to(y.dtype)) if return_last_state else y


def _tiny_problem(dtype, device, N, groups, z, D, bias, hw=None):
    """A random problem of the caller's configuration with L crossing a chunk boundary."""
    g = torch.Generator().manual_seed(1234)
    mk = lambda *s: torch.randn(*s, generator=g)
    batch, L = 2, (hw[0] * hw[1] if hw else 300)
    dim = 8 if hw is None else 4 * 3
    out = dict(u=mk(batch, dim // 4, *hw) if hw else mk(batch, dim, L), delta=mk(batch, dim, L) * 0.5,
               A=-torch.rand(dim, N, generator=g) - 0.5, B=mk(batch, groups, N, L), C=mk(batch, groups, N, L),
               D=mk(dim) if D else None, z=mk(batch, dim, L) if z else None,
               delta_bias=mk(dim) * 0.1 if bias else None)
    return {k: None if v is None else v.to(device=device, dtype=dtype if k not in ("A", "D", "delta_bias") else
                                            torch.float32) for k, v in out.items()}


def _check(op, dtype, device, N, groups, z, D, bias, softplus, hw, reference):
    """First-call self-check: forward and backward of the kernel vs the float64 reference."""
    p = _tiny_problem(dtype, device, N, groups if hw is None else 4, z, D, bias, hw)
    names = [k for k, v in p.items() if v is not None]

    def grads(fn, cast):
        q = {k: None if v is None else v.detach().to(cast(v)).requires_grad_(True) for k, v in p.items()}
        y = fn(**q)
        gy = torch.ones_like(y).mul_(0.5)
        gs = torch.autograd.grad(y, [q[k] for k in names], gy)
        return [y] + list(gs)

    kernel = lambda: grads(lambda **q: _apply(q["u"], q["delta"], q["A"], q["B"], q["C"], q["D"], q["z"],
                                              q["delta_bias"], softplus, False, hw), lambda v: v.dtype)
    ref = lambda: grads(lambda **q: reference(**q, delta_softplus=softplus), lambda v: torch.float64)
    key = f"{op}[N={'1' if N == 1 else 'tiled'}{', cross2d' if hw else ''}]"
    return _cuda_dispatch.self_check(key, dtype, device, kernel, ref, *_TOL[dtype])


def check_launch(u, delta, A, B, C, D, z, delta_bias):
    """What backend='cuda' of `selective_scan` needs beyond its own checks (arguments validated there)."""
    op = "selective_scan"
    _cuda_dispatch.check_cuda_tensors(op, DTYPES, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    if A.shape[1] > 256:
        raise ValueError(f"{op}: the CUDA kernel supports d_state (A.shape[1]) <= 256, got {A.shape[1]}")


def _kernel_ok(u, A, B, D, z, delta_bias, softplus):
    """The kernels run this call: a non-empty problem whose configuration passed the self-check."""
    from py.ops.selective_scan import selective_scan_reference

    def ref2(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    return u.numel() > 0 and _check("selective_scan", u.dtype, u.device, A.shape[1], B.shape[1], z is not None,
                                    D is not None, delta_bias is not None, softplus, None, ref2)


def op_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save):
    """CUDA kernel of torch.ops.visionssm.selective_scan (registered in py.ops.selective_scan): the
    kernels, or the reference where they failed their self-check (with a zero ckpt: the backward then
    differentiates the reference too)."""
    from py.ops.selective_scan import selective_scan_reference
    if _kernel_ok(u, A, B, D, z, delta_bias, softplus):
        y, last, ckpt = kernel_forward(u, delta, A, B, C, D, z, delta_bias, softplus, None, save)
    else:
        with torch.no_grad():
            y, last = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, softplus, True)
        batch, dim, L = delta.shape
        chunk = _native.require(EXT).chunk_len()
        ckpt = delta.new_zeros(batch, dim, -(-L // chunk), A.shape[1], dtype=torch.float32) if save else None
    return y, last.to(y.dtype), u.new_empty(0) if ckpt is None else ckpt, u.new_empty(0)


def op_backward(dy, u, delta, A, B, C, D, z, delta_bias, softplus, ckpt):
    """CUDA kernel of torch.ops.visionssm.selective_scan_backward, the same choice as `op_forward`."""
    from py.ops.selective_scan import selective_scan_reference
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if _kernel_ok(u, A, B, D, z, delta_bias, softplus):
        grads = kernel_backward(dy, u, delta, A, B, C, D, z, delta_bias, softplus, None, ckpt)
        return tuple(u.new_empty(0) if g is None else g for g in grads)
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
        y = selective_scan_reference(*leaves, softplus)
        grads = iter(torch.autograd.grad(y, [t for t in leaves if t is not None], dy, materialize_grads=True))
    return tuple(u.new_empty(0) if t is None else next(grads) for t in leaves)


def fused_cross2d_applies(x, d_state, backend="auto"):
    """Whether a model should call `selective_scan_cross2d` instead of cross_scan -> selective_scan ->
    cross_merge for the map x: x is a CUDA tensor of a kernel dtype, d_state fits the kernels, and
    `backend` (after any force_backend) resolves to the built CUDA extension. Anything else (CPU,
    "reference", an unbuilt extension, a backend that would raise) keeps the unfused ops, and so does
    graph capture (torch.compile/export): the fused path is not a custom op, the unfused ones are."""
    if x.device.type != "cuda" or x.dtype not in DTYPES or d_state > 256 or torch.compiler.is_compiling():
        return False
    try:  # op name "selective_scan": its one-time fallback warning is the unfused scan's own
        resolved = _common.resolve_backend("selective_scan", backend, x.device, cuda_extension=EXT)
    except (TypeError, ValueError):
        return False
    return resolved == "cuda"


def selective_scan_cross2d_reference(x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """cross_merge(selective_scan(cross_scan(x))) in plain PyTorch: x (batch, Di, H, W) -> (batch, Di, H, W)."""
    from py.ops.cross_scan import cross_merge_reference, cross_scan_reference
    from py.ops.selective_scan import selective_scan_reference
    batch, di, H, W = x.shape
    xs = cross_scan_reference(x).reshape(batch, 4 * di, H * W)
    y = selective_scan_reference(xs, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return cross_merge_reference(y.reshape(batch, 4, di, H, W)).reshape(batch, di, H, W)


def selective_scan_cross2d(x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto"):
    """VMamba SS2D core: cross_scan -> selective_scan (groups = the 4 traversals) -> cross_merge.

    x (batch, Di, H, W), any strides; delta, z (batch, 4·Di, L) and B, C (batch, 4, N, L) in each
    traversal's sequence order (as VMamba's projections of the cross-scanned map produce them);
    A (4·Di, N); D, delta_bias (4·Di,). Returns (batch, Di, H, W) in x's dtype.
    backend "cuda": the kernels read x and write y through the four traversals' index maps (no
    (batch, 4, Di, L) copy); "reference": the three ops in plain PyTorch; "auto": cuda for CUDA
    tensors when the extension is built, else the reference (CPU tensors: the reference).
    """
    op = "selective_scan_cross2d"
    _common.check_tensor("x", x, ndim=4, dtypes=DTYPES + (torch.float64,), shape_doc="(batch, Di, H, W)")
    batch, di, H, W = x.shape
    L = H * W
    _common.check_tensor("delta", delta, ndim=3, dtypes=(x.dtype,), shape_doc="(batch, 4*Di, H*W)")
    _common.check_shape("delta", delta, (batch, 4 * di, L), shape_doc="(batch, 4*Di, H*W)")
    _common.check_tensor("A", A, ndim=2, shape_doc="(4*Di, N)")
    _common.check_shape("A", A, (4 * di, None), shape_doc="(4*Di, N)")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        _common.check_tensor(name, t, ndim=4, dtypes=(x.dtype,), shape_doc="(batch, 4, N, H*W)")
        _common.check_shape(name, t, (batch, 4, N, L), shape_doc="(batch, 4, N, H*W)")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        _common.check_tensor(name, t, ndim=1, shape_doc="(4*Di,)", optional=True)
        _common.check_shape(name, t, (4 * di,), shape_doc="(4*Di,)")
    _common.check_tensor("z", z, ndim=3, dtypes=(x.dtype,), shape_doc="(batch, 4*Di, H*W)", optional=True)
    _common.check_shape("z", z, (batch, 4 * di, L), shape_doc="(batch, 4*Di, H*W)")
    _common.check_same_device(x=x, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    ext = EXT if x.dtype in DTYPES else None
    backend = _common.resolve_backend(op, backend, x.device, cpu_dtype_ok=False, cuda_extension=ext)
    if backend == "cpu":
        raise ValueError(f"{op}: there is no CPU kernel; use backend='reference' (or py.ops.selective_scan)")
    if backend == "reference" or x.numel() == 0 or N == 0:
        return selective_scan_cross2d_reference(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    _cuda_dispatch.check_cuda_tensors(op, DTYPES, x=x, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    if N > 256:
        raise ValueError(f"{op}: the CUDA kernel supports d_state (A.shape[1]) <= 256, got {N}")
    if not _check(op, x.dtype, x.device, N, 4, z is not None, D is not None, delta_bias is not None,
                  delta_softplus, (3, 5), lambda u, **kw: selective_scan_cross2d_reference(u, **kw)):
        return selective_scan_cross2d_reference(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _apply(x, delta, A, B, C, D, z, delta_bias, delta_softplus, False, (H, W))
