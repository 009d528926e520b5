"""SSD on CUDA: binding of `cc.kernels.ssd_cuda` (compiled for sm_80/sm_90a, not yet run on a GPU).

  * `kernel_forward`/`kernel_backward`: the chunked kernels (causal Mamba-2 and VSSD non-causal;
    float32 via TF32 tensor cores, float16, bfloat16; fp32 accumulation and fp32 states; any L,
    groups, D (h,) or (h, p), z, dt_bias, softplus, dt_limit, initial/final states; causal
    chunk_size <= 256; deterministic backward). Parameters and states in float32.
  * `op_forward`/`op_backward`: the CUDA kernels of torch.ops.visionssm.ssd(_backward) (registered in
    py.ops.ssd), with the first-call self-check of py/ops/_cuda_dispatch.py; `check_launch`.
The kernels' algorithm is replayed in float64 on the CPU by py/ops/tests/ssd_cuda_model.py.
"""
import math

import torch

from py.ops import _cuda_dispatch, _native
from py.ops.ssd import kernel_params, ssd_reference_chunked

EXT = "ssd_cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_CHUNK = 256  # ssd_layout.h kMaxChunk
# Largest |kernel - float64 reference| allowed per output, relative to that output's largest |value|
# (the scale of GEMM rounding errors; reductions such as dA and ddt_bias have elements far below
# their terms). About 4-5x what the model gives with the kernels' operand rounding (TF32 for float32
# inputs; //py/ops:test_ssd_cuda_model): tf32 0.5%, bf16 1.2%. Not yet measured on a GPU.
_TOL = {torch.float32: 2e-2, torch.float16: 2e-2, torch.bfloat16: 6e-2}
_NO_LIMIT = (0.0, math.inf)


def _f32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _launch_params(mod, x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus, causal, initial_states, dt_limit):
    """(params, layout, float32 copies kept alive): the shared ssd_params.h dict with the parameters
    in float32, and the module's geometry/workspace sizes for it."""
    f32 = tuple(_f32(t) for t in (A, D, dt_bias, initial_states))
    A32, D32, bias32, init32 = f32
    params = kernel_params(x, dt, A32, B, C, chunk_size, D32, z, bias32, softplus, causal, init32)
    params.update(dt_min=float(dt_limit[0]), dt_max=float(dt_limit[1]))
    return params, mod.layout(params), f32


def _workspace(layout, device, names):
    return {k: torch.empty(layout[k], dtype=torch.float32, device=device) for k in names}


def kernel_forward(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, softplus=False, causal=True,
                   initial_states=None, save=False, dt_limit=_NO_LIMIT):
    """The forward kernels: (y in x's dtype, final_states float32, pregate or None). pregate (y before
    the silu(z) gate) is kept when `save` and z is given: the backward's only residual."""
    mod = _native.require(EXT)
    b, L, h, p = x.shape
    n = B.shape[3]
    params, layout, _keep = _launch_params(mod, x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus, causal,
                                           initial_states, dt_limit)
    y = torch.empty(b, L, h, p, dtype=x.dtype, device=x.device)
    final = torch.empty(b, h, p, n, dtype=torch.float32, device=x.device)
    pregate = torch.empty_like(y) if save and z is not None else None
    ws = _workspace(layout, x.device, ("ws_dt", "ws_cumsum", "ws_states"))
    mod.forward(dict(params, y=y.data_ptr(), pregate=_ptr(pregate), final_states=final.data_ptr(),
                     **{k: t.data_ptr() for k, t in ws.items()}), _cuda_dispatch.stream_of(x))
    return y, final, pregate


def kernel_backward(dy, dfinal, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, softplus=False,
                    causal=True, initial_states=None, pregate=None, dt_limit=_NO_LIMIT):
    """The backward kernels: (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states), each in its
    input's dtype (None for an absent input). dfinal may be None; pregate is required with z. The
    kernels write per-head dB/dC and per-chunk dA/dbias/dD partials; they are summed here in a fixed
    order (torch's reductions), so the result is deterministic."""
    mod = _native.require(EXT)
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    params, layout, _keep = _launch_params(mod, x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus, causal,
                                           initial_states, dt_limit)
    like = dict(dtype=x.dtype, device=x.device)
    f32 = dict(dtype=torch.float32, device=x.device)
    dy = dy.to(x.dtype).contiguous()
    dfinal = _f32(dfinal)
    pregate = None if z is None else pregate.to(x.dtype).contiguous()
    out = dict(dx=torch.empty(b, L, h, p, **like), ddt=torch.empty(b, L, h, **like),
               dB=torch.empty(b, L, h, n, **f32), dC=torch.empty(b, L, h, n, **f32),
               dA=torch.empty(layout["dA"], **f32), dbias=torch.empty(layout["dbias"], **f32),
               dz=torch.empty(b, L, h, p, **like) if z is not None else None,
               # rows of a ragged chunk's empty 64-token blocks are never written: zeros
               dD=torch.zeros(layout["dD"], **f32) if D is not None else None,
               dinit=torch.empty(b, h, p, n, **f32) if initial_states is not None else None)
    scratch = _workspace(layout, x.device, ("ws_dt", "ws_cumsum", "ws_states", "ws_extra", "ws_xz", "ws_dcumsum"))
    scratch["ws_dstates"] = torch.empty(layout["ws_states"], **f32)
    scratch["final_states"] = torch.empty(b, h, p, n, **f32)  # recomputed
    scratch["ws_dY"] = torch.empty(b, L, h, p, **like) if z is not None else None
    mod.backward(dict(params, dout=dy.data_ptr(), dfinal=_ptr(dfinal), pregate=_ptr(pregate),
                      **{k: _ptr(t) for k, t in {**out, **scratch}.items()}), _cuda_dispatch.stream_of(x))
    chunks, k = layout["chunks"], h // g
    per_chunk = lambda t: t.view(b, h, chunks).sum((0, 2))
    dD = None
    if D is not None:
        dD = out["dD"].view(b, h, -1, p).sum((0, 2))
        dD = (dD.sum(1) if D.dim() == 1 else dD).to(D.dtype)
    return (out["dx"], out["ddt"], per_chunk(out["dA"]).to(A.dtype),
            out["dB"].view(b, L, g, k, n).sum(3).to(B.dtype), out["dC"].view(b, L, g, k, n).sum(3).to(C.dtype),
            dD, out["dz"], None if dt_bias is None else per_chunk(out["dbias"]).to(dt_bias.dtype),
            None if initial_states is None else out["dinit"].to(initial_states.dtype))


def reference(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, softplus=False, causal=True,
              initial_states=None, dt_limit=_NO_LIMIT):
    """`ssd_reference_chunked` with the kernels' dt_limit: dt' = clamp(softplus?(dt + dt_bias), *dt_limit)
    computed first (differentiable, so gradients reach dt and dt_bias through the clamp). Returns
    (y, final_states)."""
    if tuple(dt_limit) != _NO_LIMIT:
        v = dt if dt_bias is None else dt + dt_bias
        v = torch.where(v <= 20.0, torch.nn.functional.softplus(v), v) if softplus else v
        dt, dt_bias, softplus = v.clamp(*dt_limit), None, False
    return ssd_reference_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus, causal, initial_states,
                                 return_final_states=True)


def check_launch(x, dt, A, B, C, chunk_size, D, z, dt_bias, causal, initial_states):
    """What backend='cuda' of `ssd` needs beyond its own argument checks."""
    _cuda_dispatch.check_cuda_tensors("ssd", DTYPES, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                                      initial_states=initial_states)
    if causal and chunk_size > MAX_CHUNK:
        raise ValueError(f"ssd: the CUDA kernel supports chunk_size <= {MAX_CHUNK} (causal), got {chunk_size}")


# ---- first-call self-check and the op's CUDA kernels -----------------------------------------------

def _tiny_problem(dtype, device, causal, z):
    """A random problem crossing every tile edge: 3 chunks of 64 (the last ragged), headdim 80 and
    dstate 70 (two 64-wide blocks each), 2 groups of 2 heads, D per (head, headdim), dt_bias,
    initial states (causal)."""
    gen = torch.Generator().manual_seed(1234)
    mk = lambda *s: torch.randn(*s, generator=gen)
    b, L, h, p, g, n = 2, 150, 4, 80, 2, 70
    out = dict(x=mk(b, L, h, p), dt=mk(b, L, h) * 0.5, A=-torch.rand(h, generator=gen) - 0.2,
               B=mk(b, L, g, n) * 0.3, C=mk(b, L, g, n) * 0.3, D=mk(h, p), z=mk(b, L, h, p) if z else None,
               dt_bias=mk(h) * 0.3, initial_states=mk(b, h, p, n) * 0.5 if causal else None)
    params = ("A", "D", "dt_bias", "initial_states")
    return {k: None if v is None else v.to(device=device, dtype=torch.float32 if k in params else dtype)
            for k, v in out.items()}


def _check(dtype, device, causal, z):
    """Forward (y, final_states) and every gradient of the kernels vs the float64 reference."""
    q = _tiny_problem(dtype, device, causal, z)
    names = [k for k, v in q.items() if v is not None]
    gen = torch.Generator().manual_seed(99)
    b, L, h, p = q["x"].shape
    dy = torch.randn(b, L, h, p, generator=gen).to(device=device, dtype=dtype) * 0.5
    dfinal = torch.randn(b, h, p, q["B"].shape[3], generator=gen).to(device) * 0.5

    def kernel():
        y, final, pregate = kernel_forward(**q, chunk_size=64, softplus=True, causal=causal, save=True)
        grads = kernel_backward(dy, dfinal, **q, chunk_size=64, softplus=True, causal=causal, pregate=pregate)
        keys = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
        return [y, final] + [gr for key, gr in zip(keys, grads) if q[key] is not None]

    def reference():
        leaves = {k: v.detach().double().requires_grad_(True) for k, v in q.items() if v is not None}
        y, final = ssd_reference_chunked(chunk_size=64, dt_softplus=True, causal=causal, return_final_states=True,
                                         **{k: leaves.get(k) for k in q})
        grads = torch.autograd.grad([y, final], [leaves[k] for k in names], [dy.double(), dfinal.double()])
        return [y, final] + list(grads)

    want = []

    def kernel_scaled():  # the reference runs first: its largest |value| scales both sides
        want[:] = [w.detach().cpu() for w in reference()]
        return [g.detach().double().cpu() / _largest(w) for g, w in zip(kernel(), want)]

    key = f"ssd[{'causal' if causal else 'non-causal'}{', z' if z else ''}]"
    return _cuda_dispatch.self_check(key, dtype, device, kernel_scaled, lambda: [w / _largest(w) for w in want],
                                     0.0, _TOL[dtype])


def _largest(t):
    return max(t.abs().max().item(), 1e-30)


def _kernel_ok(x, causal, z):
    return x.numel() > 0 and _check(x.dtype, x.device, causal, z is not None)


def op_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, save):
    """CUDA kernel of torch.ops.visionssm.ssd: (y, final_states, pregate) in x's dtype (pregate empty
    unless save and z), from the kernels, or from the reference where they failed the self-check."""
    if _kernel_ok(x, causal, z):
        y, final, pregate = kernel_forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                                           initial_states, save)
    else:
        with torch.no_grad():
            y, final = ssd_reference_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                                             initial_states, return_final_states=True)
        pregate = torch.zeros_like(x) if save and z is not None else None  # unused by the reference backward
    return y, final.to(x.dtype), x.new_empty(0) if pregate is None else pregate


def op_backward(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states,
                pregate):
    """CUDA kernel of torch.ops.visionssm.ssd_backward, the same choice as `op_forward`."""
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if _kernel_ok(x, causal, z):
        grads = kernel_backward(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal,
                                initial_states, pregate)
        return tuple(x.new_empty(0) if gr is None else gr for gr in grads)
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
        xl, dtl, Al, Bl, Cl, Dl, zl, bl, il = leaves
        y, final = ssd_reference_chunked(xl, dtl, Al, Bl, Cl, chunk_size, Dl, zl, bl, dt_softplus, causal, il,
                                         return_final_states=True)
        grads = iter(torch.autograd.grad([y, final], [t for t in leaves if t is not None], [dy, dfinal.to(final.dtype)],
                                         materialize_grads=True))
    return tuple(x.new_empty(0) if t is None else next(grads).to(t.dtype) for t in leaves)
