"""Mamba-2 chunked SSD (state-space duality), causal, and the VSSD non-causal form.

Three layers, like mamba_ssm:
  1. references in plain PyTorch, any float dtype:
     `ssd_reference_sequential` (the per-timestep recurrence, the test oracle) and
     `ssd_reference_chunked` (the chunked SSD algorithm with matmuls, the benchmark anchor);
  2. the C++ kernel `cc.kernels.ssd_cpu` (forward and backward, float32/float64);
  3. the custom ops torch.ops.visionssm.ssd / ssd_backward over the kernel, with their fake
     implementation and autograd, so torch.compile and torch.export keep them in the graph.
The public entry point is `ssd`.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from py.ops import _common, _library, _native
from py.ops.observe import observable

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NATIVE = (torch.float32, torch.float64)
_SOFTPLUS_THRESHOLD = 20.0


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states):
    """Checks every argument (errors name it); returns (batch, L, heads, headdim, groups, dstate)."""
    _common.check_tensor("x", x, ndim=4, dtypes=_FLOATS, shape_doc="(batch, L, heads, headdim)")
    b, L, h, p = x.shape
    _common.check_tensor("dt", dt, ndim=3, dtypes=(x.dtype,), shape_doc="(batch, L, heads)")
    _common.check_shape("dt", dt, (b, L, h), shape_doc="(batch, L, heads)")
    _common.check_tensor("A", A, ndim=1, dtypes=_FLOATS, shape_doc="(heads,)")
    _common.check_shape("A", A, (h,), shape_doc="(heads,)")
    _common.check_tensor("B", B, ndim=4, dtypes=(x.dtype,), shape_doc="(batch, L, groups, dstate)")
    g, n = B.shape[2], B.shape[3]
    _common.check_shape("B", B, (b, L, None, None), shape_doc="(batch, L, groups, dstate)")
    if g < 1 or h % g != 0:
        raise ValueError(f"B must have shape (batch, L, groups, dstate) with heads % groups == 0 "
                         f"(heads={h}), got {tuple(B.shape)}")
    if n < 1:
        raise ValueError(f"B must have dstate >= 1, got shape {tuple(B.shape)}")
    _common.check_tensor("C", C, ndim=4, dtypes=(x.dtype,), shape_doc="(batch, L, groups, dstate)")
    _common.check_shape("C", C, (b, L, g, n), shape_doc="(batch, L, groups, dstate) like B")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _common.check_tensor("D", D, dtypes=_FLOATS, shape_doc="(heads,) or (heads, headdim)", optional=True)
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape (heads,) = ({h},) or (heads, headdim) = ({h}, {p}), "
                         f"got {tuple(D.shape)}")
    _common.check_tensor("z", z, ndim=4, dtypes=(x.dtype,), shape_doc="(batch, L, heads, headdim)",
                         optional=True)
    _common.check_shape("z", z, (b, L, h, p), shape_doc="(batch, L, heads, headdim) like x")
    _common.check_tensor("dt_bias", dt_bias, ndim=1, dtypes=_FLOATS, shape_doc="(heads,)", optional=True)
    _common.check_shape("dt_bias", dt_bias, (h,), shape_doc="(heads,)")
    _common.check_tensor("initial_states", initial_states, ndim=4, dtypes=_FLOATS,
                         shape_doc="(batch, heads, headdim, dstate)", optional=True)
    _common.check_shape("initial_states", initial_states, (b, h, p, n),
                        shape_doc="(batch, heads, headdim, dstate)")
    if initial_states is not None and not causal:
        raise ValueError("initial_states is only meaningful for causal=True (the non-causal form has "
                         "no recurrence); pass initial_states=None with causal=False")
    _common.check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                              initial_states=initial_states)
    # Finiteness checks on the parameters and on dt (b*L*h values, 1/headdim of x); the large
    # activations x, B, C, z are not scanned.
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias), ("dt", dt)):
        _common.check_finite(name, t)
    return b, L, h, p, g, n


def _compute_dtype(x):
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _discretize(dt, dt_bias, dt_softplus):
    """dt' = softplus(dt + dt_bias) (threshold 20) if dt_softplus else dt + dt_bias."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt, beta=1.0, threshold=_SOFTPLUS_THRESHOLD)
    return dt


def _d_term(x, D):
    if D is None:
        return None
    return x * (D[:, None] if D.dim() == 1 else D)


def _finish(y, x, D, z):
    """y + D*x, then y *= silu(z)."""
    dx = _d_term(x, D)
    if dx is not None:
        y = y + dx
    if z is not None:
        y = y * F.silu(z)
    return y


# ----------------------------------------------------------------------------------------------
# Layer 1: references
# ----------------------------------------------------------------------------------------------
def ssd_reference_sequential(x, dt, A, B, C, chunk_size=1, D=None, z=None, dt_bias=None, dt_softplus=False,
                             causal=True, initial_states=None, return_final_states=False):
    """The plain per-timestep definition (the test oracle); same arguments and results as `ssd`.

    causal=True runs the recurrence S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t (x) B_t token by token;
    causal=False sums KV = sum_j (-dt'_j A) B_j^T x_j token by token. chunk_size is validated and ignored.
    Computes in the input dtype (float32 for float16/bfloat16 inputs); slow, for tests.
    """
    b, L, h, p, g, n = _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states)
    cd = _compute_dtype(x)
    out_dtype = x.dtype
    x, dt, A, B, C = (t.to(cd) for t in (x, dt, A, B, C))
    D, z, dt_bias = (None if t is None else t.to(cd) for t in (D, z, dt_bias))
    dt = _discretize(dt, dt_bias, dt_softplus)
    heads_group = torch.arange(h, device=x.device) // (h // g)
    Bh, Ch = B[:, :, heads_group], C[:, :, heads_group]  # (b, L, h, n)
    ys = []
    if causal:
        S = (torch.zeros(b, h, p, n, dtype=cd, device=x.device) if initial_states is None
             else initial_states.to(cd))
        # unbind, not [:, t]: indexing at every step makes the backward quadratic in L.
        for dt_t, x_t, B_t, C_t in zip(dt.unbind(1), x.unbind(1), Bh.unbind(1), Ch.unbind(1)):
            decay = torch.exp(dt_t * A)  # (b, h)
            S = S * decay[:, :, None, None] + (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]
            ys.append(torch.einsum("bhpn,bhn->bhp", S, C_t))
        final = S
    else:
        KV = torch.zeros(b, h, n, p, dtype=cd, device=x.device)
        for dt_j, x_j, B_j in zip(dt.unbind(1), x.unbind(1), Bh.unbind(1)):
            w = -dt_j * A  # (b, h)
            KV = KV + B_j[:, :, :, None] * (w[:, :, None] * x_j)[:, :, None, :]
        for C_i in Ch.unbind(1):
            ys.append(torch.einsum("bhn,bhnp->bhp", C_i, KV))
        final = KV.transpose(-1, -2)
    y = torch.stack(ys, dim=1) if L > 0 else x.new_zeros(b, 0, h, p)
    y = _finish(y, x, D, z).to(out_dtype)
    return (y, final) if return_final_states else y


def _segsum(a):
    """Stable segment sums: out[..., i, j] = sum_{k=j+1..i} a[..., k] for j <= i, -inf above the diagonal."""
    T = a.shape[-1]
    rep = a[..., :, None].expand(*a.shape, T)  # [..., i, j] = a_i
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    seg = torch.cumsum(rep.masked_fill(~strict, 0), dim=-2)
    return seg.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0), -math.inf)


def ssd_reference_chunked(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                          causal=True, initial_states=None, return_final_states=False):
    """The chunked SSD algorithm in pure PyTorch (matmul/einsum); same arguments and results as `ssd`.

    causal=True, with Q = chunk_size, c = ceil(L/Q) chunks (L is zero-padded to c*Q: padded tokens have
    dt' = 0, so they neither decay nor add to the state), per chunk and head:
      a = dt'*A, a_cs = cumsum(a) within the chunk;
      Y_diag = (C B^T o exp(segsum(a))) (dt' x)           intra-chunk, causal mask via segsum = -inf;
      states = (exp(a_cs[-1] - a_cs) dt' x)^T B            end-of-chunk local states (headdim x dstate);
      state passing: S_in[0] = initial_states (or 0), S_in[k+1] = exp(a_cs[k][-1]) S_in[k] + states[k],
                     run sequentially over chunks (stable), final_states = S_in[c];
      Y_off = exp(a_cs) * (C S_in^T);  y = Y_diag + Y_off + D x, then y *= silu(z).
    causal=False: two grouped matmuls, KV = B^T (w x), y = C KV (see `ssd`).
    Computes in the input dtype (float32 for float16/bfloat16 inputs).
    """
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states)
    return _chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                    return_final_states)


def _chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
             return_final_states):
    """`ssd_reference_chunked` without the argument checks."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    cd = _compute_dtype(x)
    out_dtype = x.dtype
    x, dt, A, B, C = (t.to(cd) for t in (x, dt, A, B, C))
    D, z, dt_bias = (None if t is None else t.to(cd) for t in (D, z, dt_bias))
    dt = _discretize(dt, dt_bias, dt_softplus)
    k = h // g  # heads per group
    if not causal:
        w = -dt * A  # (b, L, h)
        xw = (x * w[..., None]).view(b, L, g, k, p)
        KV = torch.einsum("blgn,blgkp->bgknp", B, xw)  # (b, g, k, n, p)
        y = torch.einsum("blgn,bgknp->blgkp", C, KV).reshape(b, L, h, p)
        final = KV.reshape(b, h, n, p).transpose(-1, -2)
        y = _finish(y, x, D, z).to(out_dtype)
        return (y, final) if return_final_states else y

    Q = chunk_size
    c = max(1, -(-L // Q))
    pad = c * Q - L
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    # Layouts: heads as (g, k) so B/C are shared by the k heads of a group without copies.
    X = (x * dt[..., None]).view(b, c, Q, g, k, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, k, c, Q, p)
    a = (dt * A).view(b, c, Q, g, k).permute(0, 3, 4, 1, 2)  # (b, g, k, c, Q)
    a_cs = torch.cumsum(a, dim=-1)
    Bc = B.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]  # (b, g, 1, c, Q, n)
    Cc = C.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]
    # 1. intra-chunk (diagonal blocks): C B^T per group, decay mask per head.
    CB = Cc @ Bc.transpose(-1, -2)  # (b, g, 1, c, Q, Q)
    decay = torch.exp(_segsum(a))  # (b, g, k, c, Q, Q): exp(a_{j+1} + ... + a_i) for j <= i
    Y = (CB * decay) @ X  # (b, g, k, c, Q, p)
    # 2. end-of-chunk local states. The decays to the chunk end are the last row of `decay`, not
    # exp(a_cs[-1] - a_cs): after a huge step (dt' A = -1e30) both cumsums are -1e30 and the
    # difference loses every later step.
    decay_states = decay[..., -1, :]  # (b, g, k, c, Q)
    states = (X * decay_states[..., None]).transpose(-1, -2) @ Bc  # (b, g, k, c, p, n)
    # 3. state passing, sequential over chunks.
    S = (x.new_zeros(b, g, k, p, n) if initial_states is None
         else initial_states.to(cd).reshape(b, g, k, p, n))
    chunk_decay = torch.exp(a_cs[..., -1])  # (b, g, k, c)
    s_in = []
    for ci in range(c):
        s_in.append(S)
        S = chunk_decay[..., ci, None, None] * S + states[:, :, :, ci]
    s_in = torch.stack(s_in, dim=3)  # (b, g, k, c, p, n)
    # 4. inter-chunk (off-diagonal) contribution.
    Y = Y + (Cc @ s_in.transpose(-1, -2)) * torch.exp(a_cs)[..., None]
    y = Y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, p)[:, :L]
    y = _finish(y, x[:, :L], D, z).to(out_dtype)
    return (y, S.reshape(b, h, p, n)) if return_final_states else y


# ----------------------------------------------------------------------------------------------
# Layer 2: the C++ kernel binding
# ----------------------------------------------------------------------------------------------
def _addr(t):
    return 0 if t is None else t.data_ptr()


def _strides(t, ndim):
    if t is None:
        return [0] * ndim
    strides = list(t.stride())
    if t.dim() and t.shape[-1] == 1:
        strides[-1] = 1  # any stride is valid for a size-1 dim; the kernel wants 1
    return strides


def _unit_last(t):
    """t, or a copy of it whose last dim is contiguous (what the kernel's row loops need)."""
    if t is None or t.shape[-1] == 1 or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _d_view(D):
    """D as a 2-D (heads, headdim) strided view ((heads,) gets a zero headdim stride)."""
    if D is None:
        return None, [0, 0]
    if D.dim() == 1:
        return D, [D.stride(0), 0]
    return D, list(D.stride())


def kernel_params(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states):
    """The inputs as the dict of cc/kernels/ssd/ssd_params.h fields, read by both the CPU and the
    CUDA module (ssd_params_dict.h); callers add the output, workspace and thread entries."""
    b, L, h, p = x.shape
    Dt, D_s = _d_view(D)
    params = dict(dtype=_common.dtype_name(x), causal=bool(causal), softplus=bool(dt_softplus), batch=b,
                  seqlen=L, heads=h, headdim=p, groups=B.shape[2], dstate=B.shape[3], chunk_size=int(chunk_size))
    for name, t, ndim in (("x", x, 4), ("dt", dt, 3), ("A", A, 1), ("B", B, 4), ("C", C, 4), ("z", z, 4),
                          ("dt_bias", dt_bias, 1), ("initial_states", initial_states, 4)):
        params[name], params[name + "_strides"] = _addr(t), _strides(t, ndim)
    params["D"], params["D_strides"] = _addr(Dt), D_s
    return params


def _threads(b, L, h, p, n):
    """torch's thread count, or 1 for small problems (fork/join would cost more than the work)."""
    return 1 if b * h * L * p * n < (1 << 21) else torch.get_num_threads()


def _kernel_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                save_pregate):
    """Runs cc.kernels.ssd_cpu.fwd; returns (y, final_states, y_pregate or None)."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    y = torch.empty(b, L, h, p, dtype=x.dtype)
    final = torch.empty(b, h, p, n, dtype=x.dtype)
    pregate = torch.empty(b, L, h, p, dtype=x.dtype) if (save_pregate and z is not None) else None
    params = kernel_params(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states)
    _native.require("ssd_cpu").fwd(dict(params, y=_addr(y), pregate=_addr(pregate), final_states=_addr(final),
                                        threads=_threads(b, L, h, p, n)))
    return y, final, pregate


def _kernel_bwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                pregate, dy, dfinal, saved_kv=None):
    """Runs cc.kernels.ssd_cpu.bwd; returns (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states)."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    k = h // g
    threads = _threads(b, L, h, p, n)
    # Heads sharing B/C run in one task (their dB/dC accumulate in place, race-free) when that
    # still leaves enough tasks to balance; otherwise one task per head, summed over the group here.
    grouped = k == 1 or threads == 1 or b * g >= 4 * threads
    heads_per_task = max(k, 1) if grouped else 1  # k = 0 with 0 heads
    slots = h // heads_per_task
    dev = dict(dtype=x.dtype)
    dy = dy.contiguous()
    dfinal = None if dfinal is None else dfinal.contiguous()
    dx = torch.empty(b, L, h, p, **dev)
    ddt = torch.empty(b, L, h, **dev)
    dB = torch.zeros(b, L, slots, n, **dev)
    dC = torch.zeros(b, L, slots, n, **dev)
    dz = torch.empty(b, L, h, p, **dev) if z is not None else None
    dA = torch.empty(b, h, **dev)
    dD = torch.empty(b, h, p, **dev)
    dbias = torch.empty(b, h, **dev)
    dinit = torch.empty(b, h, p, n, **dev) if causal else None
    saved_kv = None if causal else saved_kv
    names = ("dout", "dfinal", "pregate", "dx", "ddt", "dB", "dC", "dz", "dA", "dD", "dbias", "dinit", "saved_kv")
    grads = {k: _addr(t) for k, t in zip(names, (dy, dfinal, pregate, dx, ddt, dB, dC, dz, dA, dD, dbias, dinit,
                                                 saved_kv))}
    params = kernel_params(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states)
    _native.require("ssd_cpu").bwd(dict(params, **grads, heads_per_task=heads_per_task, threads=threads))
    if slots != g:
        dB = dB.view(b, L, g, k, n).sum(3)
        dC = dC.view(b, L, g, k, n).sum(3)
    dD_full = None
    if D is not None:
        dD_full = dD.sum(0) if D.dim() == 2 else dD.sum((0, 2))
    return (dx, ddt, dA.sum(0), dB, dC, dD_full, dz, dbias.sum(0) if dt_bias is not None else None,
            dinit)


# ----------------------------------------------------------------------------------------------
# Layer 3: custom ops torch.ops.visionssm.ssd / ssd_backward (py/ops/_library.py), with autograd
# ----------------------------------------------------------------------------------------------
def _kernel_args(x, A, B, C, D, z, dt_bias, initial_states):
    """The kernel's view of the inputs: x, B, C, z with a unit last stride, the parameters in x's dtype."""
    if x.dtype not in _NATIVE:
        raise TypeError(f"visionssm::ssd on the CPU takes float32/float64 x, got {x.dtype}")
    cast = (lambda t: None if t is None else t.to(x.dtype))
    return (_unit_last(x), cast(A), _unit_last(B), _unit_last(C), cast(D), _unit_last(z), cast(dt_bias),
            cast(initial_states))


@_library.custom_op("ssd")
def ssd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
           D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
           dt_softplus: bool = False, causal: bool = True, initial_states: Optional[torch.Tensor] = None,
           save_for_backward: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, final_states, pregate): `ssd_reference_chunked(..., return_final_states=True)` and the backward's
    residual y before the z gate (absent unless save_for_backward and z is given). CPU kernel: x, dt, B, C, z
    float32/float64 of one dtype; A, D, dt_bias, initial_states are cast to it."""
    x, A, B, C, D, z, dt_bias, initial_states = _kernel_args(x, A, B, C, D, z, dt_bias, initial_states)
    y, final, pregate = _kernel_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                                    initial_states, save_pregate=save_for_backward)
    return y, final, _library.absent(x) if pregate is None else pregate


@ssd_op.register_fake
def _(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, causal=True, initial_states=None,
      save_for_backward=False):
    b, L, h, p = x.shape
    pregate = x.new_empty(x.shape) if save_for_backward and z is not None else x.new_empty(0)
    return x.new_empty(x.shape), x.new_empty(b, h, p, B.shape[3]), pregate


@_library.custom_op("ssd_backward")
def ssd_backward_op(dy: torch.Tensor, dfinal_states: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                    B: torch.Tensor, C: torch.Tensor, chunk_size: int, D: Optional[torch.Tensor],
                    z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool, causal: bool,
                    initial_states: Optional[torch.Tensor], pregate: torch.Tensor, final_states: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states), each in its input's dtype (absent for an
    absent input), from the forward op's residuals (pregate; non-causal: final_states = KV^T)."""
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    x, A, B, C, D, z, dt_bias, initial_states = _kernel_args(x, A, B, C, D, z, dt_bias, initial_states)
    grads = _kernel_bwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                        pregate if pregate.numel() else None, dy.to(x.dtype), dfinal_states.to(x.dtype),
                        final_states)
    return tuple(_library.absent(x) if t is None else g.to(t.dtype) for t, g in zip(inputs, grads))


@ssd_backward_op.register_fake
def _(dy, dfinal_states, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, pregate,
      final_states):
    return tuple(x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, save = inputs
    _, final, pregate = output
    ctx.config = (chunk_size, dt_softplus, causal, save)
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, pregate, final)


def _backward(ctx, dy, dfinal, _dpregate):
    x, dt, A, B, C, D, z, dt_bias, initial_states, pregate, final = ctx.saved_tensors
    chunk_size, dt_softplus, causal, saved = ctx.config
    dy = torch.zeros_like(x) if dy is None else dy
    dfinal = torch.zeros_like(final) if dfinal is None else dfinal
    if not saved and z is not None:  # called without save_for_backward: recompute the residual
        pregate = ssd_op(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, True)[2]
    grads = ssd_backward_op(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                            initial_states, pregate, final)
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = (_library.present(g, t is not None) for g, t in zip(grads, inputs))
    return dx, ddt, dA, dB, dC, None, dD, dz, ddt_bias, None, None, dinit, None


ssd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- CUDA kernel registration ----  (the kernels and their first-call self-check: py/ops/ssd_cuda.py)
@ssd_op.register_kernel("cuda")
def _(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, causal=True, initial_states=None,
      save_for_backward=False):
    from py.ops import ssd_cuda
    return ssd_cuda.op_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                               save_for_backward)


@ssd_backward_op.register_kernel("cuda")
def _(dy, dfinal_states, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, pregate,
      final_states):
    from py.ops import ssd_cuda
    return ssd_cuda.op_backward(dy, dfinal_states, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                                initial_states, pregate)


# ----------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------
@observable("ssd")
def ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, causal=True,
        initial_states=None, return_final_states=False, backend="auto"):
    """Mamba-2 SSD (causal=True) or the VSSD non-causal SSD (causal=False).

    Shapes (b batch, L tokens, h heads, p headdim, g groups with h % g == 0, n dstate;
    head i reads group i // (h // g) of B and C):
      x (b, L, h, p); dt (b, L, h); A (h,); B, C (b, L, g, n); D (h,) or (h, p) optional;
      z (b, L, h, p) optional; dt_bias (h,) optional; initial_states (b, h, p, n) optional (causal only).
    Returns y (b, L, h, p) in x's dtype, or (y, final_states (b, h, p, n)) if return_final_states
    (final_states in float32 for float16/bfloat16 inputs, else in x's dtype).

    Discretisation: dt' = softplus(dt + dt_bias) (threshold 20: identity above 20) if dt_softplus,
    else dt' = dt + dt_bias (dt_bias absent = 0).

    causal=True (Mamba-2), per batch and head, state S_t of shape (p, n):
        S_{-1} = initial_states (or 0)
        S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t (outer) B_t
        y_t = S_t C_t + D x_t;   final_states = S_{L-1}
      i.e. y = M x with M[t, s] = (C_t . B_s) exp(sum_{r=s+1..t} dt'_r A) dt'_s for s <= t.
      chunk_size (>= 1) only changes the order of computation, never the result (up to rounding).
    causal=False (VSSD `ssd_positve_dA`), per batch and head, with w_j = -dt'_j A:
        KV = sum_{j=0..L-1} w_j B_j^T x_j                    (n, p), over ALL tokens
        y_i = C_i KV + D x_i
      No decay, no order: the output is permutation-equivariant in the tokens. chunk_size is
      validated but unused. initial_states must be None (ValueError otherwise); with
      return_final_states the second result is KV transposed, shape (b, h, p, n) = sum_j w_j x_j B_j^T.
    In both cases, if z is given: y <- y * silu(z) (after adding D x).

    Backends: "reference" = `ssd_reference_chunked` (pure PyTorch, any float dtype, any device);
    "cpu" = the C++ kernel cc.kernels.ssd_cpu (float32/float64 CPU tensors; x, dt, B, C, z must share
    x's dtype, A/D/dt_bias/initial_states are cast to it), with a backward for x, dt, A, B, C, D, z,
    dt_bias and initial_states; it caps its internal block length at min(chunk_size, 64) and cuts
    blocks early under strong decay, which does not change the result; float32 inputs accumulate
    in float32. "cuda" = the CUDA kernels cc.kernels.ssd_cuda (py/ops/ssd_cuda.py; compiled, not yet
    run on a GPU): float32 (TF32 tensor cores)/float16/bfloat16 CUDA tensors, causal chunk_size <= 256;
    the first call per configuration checks them against the reference and, if they disagree, warns
    once and uses the reference. "auto" picks "cpu" for float32/float64 CPU tensors, "cuda" for CUDA
    tensors the built kernels take, the reference otherwise (CUDA tensors warn once).
    A, D, dt_bias and dt are checked for NaN/inf (ValueError naming the argument); the large
    activations x, B, C, z are not scanned (NaN there propagates to the outputs).
    """
    b, L, h, p, g, n = _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states)
    # FLOP convention (py.models.flops): causal 9*b*L*h*p*n (selective-scan rule over the h*p scanned
    # channels, independent of chunk_size); non-causal 2*b*L*h*p*n (KV = B^T (w x) and C KV);
    # + b*L*h*p with D, + b*L*h*p with z.
    extra = b * L * h * p * ((D is not None) + (z is not None))
    with _common.op_scope("ssd", lambda: (9 if causal else 2) * b * L * h * p * n + extra):
        return _ssd_dispatch(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                             return_final_states, backend)


def _ssd_dispatch(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                  return_final_states, backend):
    from py.ops import ssd_cuda
    native_ok = x.device.type == "cpu" and x.dtype in _NATIVE
    # "auto" takes the CUDA kernels for what they support (else the reference); "cuda" says why not.
    cuda_ok = x.dtype in ssd_cuda.DTYPES and (not causal or chunk_size <= ssd_cuda.MAX_CHUNK)
    backend = _common.resolve_backend("ssd", backend, x.device, cpu_dtype_ok=native_ok,
                                      cuda_extension=ssd_cuda.EXT if cuda_ok else None)
    if backend == "cuda":
        ssd_cuda.check_launch(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states)
    if backend == "reference":
        return _chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                        return_final_states)
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, final, _ = ssd_op(x, dt, A, B, C, int(chunk_size), D, z, dt_bias, bool(dt_softplus), bool(causal),
                         initial_states, save)
    return (y, final) if return_final_states else y
