"""Loop-free decompositions of the visionssm custom ops into plain aten ops, for graph export (ONNX).

The custom ops (torch.ops.visionssm.*, registered by py.ops) stay opaque in a torch.export program;
an exporter without our kernels needs them in standard ops. `decomposition_table()` maps each forward
op to a function with the op's schema (arguments and outputs, see the op modules), for
`ExportedProgram.run_decompositions`:

  * selective_scan: `selective_scan_chunked`, the scan in chunked form (below): no per-token loop, so
    the graph grows with L / chunk_size, not with L as the sequential reference does;
  * ssd: py.ops.ssd's chunked reference (intra-chunk matmuls, a short loop over chunks);
  * dcnv4: its reference (F.grid_sample, ONNX GridSample from opset 16);
  * cross_scan / cross_merge: their references (transpose/flip).
Backward residual outputs (ckpt, saved_delta, pregate) are empty (0,) tensors, as the ops return them
without save_for_backward.
"""
import torch
import torch.nn.functional as F

from py.ops.cross_scan import cross_merge_reference, cross_scan_reference
from py.ops.dcnv4 import dcnv4_reference
from py.ops.selective_scan import _compute_dtype
from py.ops.ssd import _chunked, _segsum

# Chunk length of the selective-scan decomposition: its intra-chunk tensor is (batch, dim, N, L, Q),
# so work and memory grow with Q, while the unrolled state loop has L / Q steps (graph size). Under
# onnxruntime (2 threads) one scan took, for Q = 2/4/8/16: Vim-T layer (D384 L197 N16) 155/97/98/138 ms,
# VMamba-T stage 1 (D384 L3136 N1) 291/105/65/98 ms (docs/perf.md).
SELECTIVE_SCAN_CHUNK = 8


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           chunk_size=SELECTIVE_SCAN_CHUNK):
    """`selective_scan_reference(..., return_last_state=True)` in chunked form: returns (y, last_state).

    With a_t = δ_t A (per channel d and state n), L cut into chunks of Q steps (zero-padded: δ = 0
    neither decays nor feeds the state), and h_in the state entering a chunk:
      local h_t = sum_{s <= t in chunk} exp(a_{s+1} + ... + a_t) δ_s B_s u_s    (masked segment sums,
                                                                                 no exp of differences)
      h_t = exp(a_0 + ... + a_t) h_in + local h_t;   next h_in = h at the chunk's last step
      y_t = sum_n C_t h_t (+ D u_t) (* silu(z_t))
    The loop over chunks is unrolled when traced. Same dtypes as the reference (float64 for float64
    u, else float32 inside; y and last_state in u's dtype). B, C may be 3-D (one group) or 4-D.
    """
    out_dtype, cd = u.dtype, _compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    b, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    k = dim // G  # channels per group: (G, k) layout lets B/C broadcast over a group's channels
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as the reference
    Q = max(1, min(int(chunk_size), L))
    c = max(1, -(-L // Q))
    pad = c * Q - L
    if pad:  # after softplus, so padded steps have δ = 0
        delta, u, B, C = (F.pad(t, (0, pad)) for t in (delta, u, B, C))
    dt = delta.view(b, G, k, 1, c, Q)
    x = (delta * u).view(b, G, k, 1, c, Q)
    a = dt * A.view(G, k, N, 1, 1)  # (b, G, k, N, c, Q) log-decays
    Bc = B.view(b, G, 1, N, c, Q)
    Cc = C.view(b, G, 1, N, c, Q)
    decay = torch.exp(_segsum(a))  # (..., c, Q, Q): exp(a_{s+1} + ... + a_t) for s <= t, 0 above
    local = (decay @ (x * Bc).unsqueeze(-1)).squeeze(-1)  # (b, G, k, N, c, Q)
    a_cs = torch.cumsum(a, dim=-1)
    chunk_decay = torch.exp(a_cs[..., -1])  # (b, G, k, N, c)
    h = u.new_zeros(b, G, k, N)
    h_in = []
    for ci in range(c):
        h_in.append(h)
        h = chunk_decay[..., ci] * h + local[..., ci, -1]
    states = local + torch.exp(a_cs) * torch.stack(h_in, dim=-1).unsqueeze(-1)
    y = (states * Cc).sum(3).reshape(b, dim, c * Q)[..., :L]
    if D is not None:
        y = y + D.to(cd)[:, None] * u[..., :L]
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(out_dtype), h.reshape(b, dim, N).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# One function per forward op, with the op's schema (py/ops/<op>.py registers the ops)
# ----------------------------------------------------------------------------------------------
def _selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    save_for_backward=False):
    y, last = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return y, last, u.new_empty(0), u.new_empty(0)


def _ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, causal=True,
         initial_states=None, save_for_backward=False):
    y, final = _chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, causal, initial_states, True)
    return y, final.to(x.dtype), x.new_empty(0)


def _dcnv4(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
           group, group_channels, offset_scale=1.0, remove_center=False):
    return dcnv4_reference(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                           dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)


FUNCTIONS = {
    "selective_scan": _selective_scan,
    "ssd": _ssd,
    "dcnv4": _dcnv4,
    "cross_scan": cross_scan_reference,
    "cross_merge": cross_merge_reference,
}


def decomposition_table():
    """{torch.ops.visionssm.<op>.default: decomposition} for every forward op (importing py.ops
    registers them)."""
    import py.ops  # noqa: F401  (registers torch.ops.visionssm.*)
    return {getattr(torch.ops.visionssm, name).default: fn for name, fn in FUNCTIONS.items()}
