"""A float64 CPU model of the SSD CUDA kernels (cc/kernels/ssd/ssd_cuda_*.cuh), kernel by kernel.

The kernels have not run on a GPU. This model replays their algorithm so it can be checked against
`py.ops.ssd.ssd_reference_chunked` here: the same chunking (Q = chunk_size tokens, ragged last
chunk), the same 64 x 64 CTA tiles with K blocks of 64 and zero-filled ragged edges (`_tile`), the
same causal block loops (j blocks <= i block), the same per-token scales, the same state passing
and the same backward decomposition (dY -> local dstates -> reverse state passing -> dx/ddt partials
-> dB/dC and d(cumsum) partials -> reverse cumsum, ddt, dA, dbias), with the partial buffers the
kernels write and the fixed-order sums over them. One function per kernel, named like it.
What it cannot check: bf16/fp16/tf32 rounding, the CUDA memory model, the CuTe partitions (those
are checked by cc/kernels/ssd/ssd_index_test.cc).

Non-causal (VSSD) runs through the same kernels with flags: per-token scale w = -dt' A instead of
dt', no decays, no intra-chunk (diagonal) term, and the chunk states summed instead of passed.
"""
import ctypes
import math

import torch
import torch.nn.functional as F

TILE = 64  # ssd_layout.h kTile: CTA tile rows/cols and the K block
NC_CHUNK = 256  # ssd_layout.h kNonCausalChunk: token block of the non-causal path


def _cdiv(a, b):
    return -(-a // b)


def _tile(t, r0, c0):
    """The 64 x 64 tile of a 2-D tensor at (r0, c0), zero past its edges (the kernels' masked loads)."""
    out = t.new_zeros(TILE, TILE)
    blk = t[r0:r0 + TILE, c0:c0 + TILE]
    out[:blk.shape[0], :blk.shape[1]] = blk
    return out


def _vec(v, r0):
    out = v.new_zeros(TILE)
    blk = v[r0:r0 + TILE]
    out[:blk.shape[0]] = blk
    return out


# The kernels round each MMA operand tile to the input's type (TF32 for float32 inputs) on its way
# into shared memory; `operand_rounding` replays that (None: exact float64, the default).
_ROUND = {"bfloat16": lambda t: t.to(torch.bfloat16).double(), "float16": lambda t: t.to(torch.float16).double(),
          "tf32": lambda t: _round_tf32(t)}
operand_rounding = None


def _round_tf32(t):
    """Round to nearest (ties away) at TF32's 10-bit mantissa, as cvt.rna.tf32.f32."""
    bits = t.float().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF
    return bits.view(torch.float32).double()


def _mma(a, b):
    """One tile MMA: a @ b^T on the (rounded) operand tiles, accumulated in float64 (fp32 on the GPU)."""
    if operand_rounding is not None:
        a, b = _ROUND[operand_rounding](a), _ROUND[operand_rounding](b)
    return a @ b.T


def _store(dst, r0, c0, tile):
    rows, cols = dst[r0:r0 + TILE, c0:c0 + TILE].shape
    dst[r0:r0 + TILE, c0:c0 + TILE] = tile[:rows, :cols]


class Problem:
    """Sizes and the chunk geometry of ssd_layout.h (`Geometry`)."""

    def __init__(self, x, B, chunk_size, causal):
        self.b, self.L, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.causal = causal
        self.Q = chunk_size if causal else NC_CHUNK
        self.c = max(1, _cdiv(self.L, self.Q))
        self.qb = _cdiv(self.Q, TILE)  # 64-row blocks per chunk

    def tokens(self, ci):
        """Token range [t0, t1) of chunk ci (the last one may be ragged)."""
        t0 = ci * self.Q
        return t0, min(t0 + self.Q, self.L)


def _limited(dt_min, dt_max):
    """Whether dt' is clamped (mamba_ssm's dt_limit other than its default (0, inf))."""
    return dt_min > 0 or dt_max < math.inf


def chunk_cumsum(pb, dt, A, dt_bias, softplus, dt_min, dt_max):
    """ssd_chunk_cumsum_kernel: per (chunk, head, batch), dt' and the inclusive in-chunk cumsum of
    dt' A (zero dt' past L, so the cumsum stays flat there). Returns dtp, acs (b, h, c, Q)."""
    dtp = dt.new_zeros(pb.b, pb.h, pb.c, pb.Q)
    for ci in range(pb.c):
        t0, t1 = pb.tokens(ci)
        v = dt[:, t0:t1, :].permute(0, 2, 1)  # (b, h, q)
        if dt_bias is not None:
            v = v + dt_bias[None, :, None]
        if softplus:
            v = torch.where(v <= 20.0, F.softplus(v), v)
        if _limited(dt_min, dt_max):
            v = v.clamp(dt_min, dt_max)
        dtp[:, :, ci, :t1 - t0] = v
    acs = torch.cumsum(dtp * A[None, :, None, None], dim=-1)
    return dtp, acs


def _token_scale(pb, dtp, acs, A, bi, hi, ci):
    """Per token j of the chunk, the factor on x_j in the chunk state: dt'_j exp(acs_last - acs_j)
    (causal) or w_j = -dt'_j A (non-causal)."""
    if pb.causal:
        return dtp[bi, hi, ci] * torch.exp(acs[bi, hi, ci, -1] - acs[bi, hi, ci])
    return -dtp[bi, hi, ci] * A[hi]


def chunk_state(pb, x, B, dtp, acs, A):
    """ssd_chunk_state_kernel: states[b, c, h] (p x n) = sum_j (x_j scale_j) (outer) B_j; CTA tile
    (64 p, 64 n), K loop over 64-token blocks. fp32 output (here float64)."""
    k = pb.h // pb.g
    states = x.new_zeros(pb.b, pb.c, pb.h, pb.p, pb.n)
    for bi in range(pb.b):
        for hi in range(pb.h):
            for ci in range(pb.c):
                t0, t1 = pb.tokens(ci)
                xs = x[bi, t0:t1, hi] * _token_scale(pb, dtp, acs, A, bi, hi, ci)[:t1 - t0, None]  # (q, p)
                Bs = B[bi, t0:t1, hi // k]  # (q, n)
                for p0 in range(0, pb.p, TILE):
                    for n0 in range(0, pb.n, TILE):
                        acc = x.new_zeros(TILE, TILE)
                        for j0 in range(0, pb.Q, TILE):
                            acc += _mma(_tile(xs.T, p0, j0), _tile(Bs.T, n0, j0))  # A(p, j) B(n, j)^T
                        _store(states[bi, ci, hi], p0, n0, acc)
    return states


def state_passing(pb, states, acs, init):
    """ssd_state_passing_kernel: one thread per (p, n) element, sequential over chunks. Causal:
    states[c] becomes the state entering chunk c, final = the state after the last chunk.
    Non-causal: final = the sum of the chunk states (KV^T), states untouched."""
    S = states.new_zeros(pb.b, pb.h, pb.p, pb.n) if init is None else init.clone()
    for ci in range(pb.c):
        local = states[:, ci].clone()
        if pb.causal:
            states[:, ci] = S
            S = torch.exp(acs[:, :, ci, -1])[..., None, None] * S + local
        else:
            S = S + local
    return S


def chunk_scan(pb, x, B, C, dtp, acs, A, states, final, D, z):
    """ssd_chunk_scan_kernel: CTA tile (64 rows i, 64 cols p). Y = (C_i e^{acs_i}) S_in^T (K loop
    over n) + sum over j blocks <= the i block of [(C B^T, K loop over n) masked j <= i, times
    e^{acs_i - acs_j} dt'_j] x (K = 64 tokens); then + D x, pregate, * silu(z).
    Returns y, pregate (b, L, h, p)."""
    k = pb.h // pb.g
    y = x.new_zeros(pb.b, pb.L, pb.h, pb.p)
    for bi in range(pb.b):
        for hi in range(pb.h):
            for ci in range(pb.c):
                t0, t1 = pb.tokens(ci)
                q = t1 - t0
                xs, Bs, Cs = x[bi, t0:t1, hi], B[bi, t0:t1, hi // k], C[bi, t0:t1, hi // k]
                S = states[bi, ci, hi] if pb.causal else final[bi, hi]
                row_scale = torch.exp(acs[bi, hi, ci, :q]) if pb.causal else x.new_ones(q)
                for ib in range(pb.qb):
                    i0 = ib * TILE
                    for p0 in range(0, pb.p, TILE):
                        acc = x.new_zeros(TILE, TILE)
                        for n0 in range(0, pb.n, TILE):
                            acc += _mma(_tile(Cs * row_scale[:, None], i0, n0), _tile(S, p0, n0))
                        for jb in range(ib + 1 if pb.causal else 0):
                            j0 = jb * TILE
                            cb = x.new_zeros(TILE, TILE)
                            for n0 in range(0, pb.n, TILE):
                                cb += _mma(_tile(Cs, i0, n0), _tile(Bs, j0, n0))
                            ii = torch.arange(TILE)[:, None] + i0
                            jj = torch.arange(TILE)[None, :] + j0
                            ok = (jj <= ii) & (ii < q) & (jj < q)
                            ai, aj = _vec(acs[bi, hi, ci], i0), _vec(acs[bi, hi, ci], j0)
                            dj = _vec(dtp[bi, hi, ci], j0)
                            decay = torch.where(ok, torch.exp(torch.where(ok, ai[:, None] - aj[None, :], 0.0)), 0.0)
                            acc += _mma((cb * decay * dj[None, :]), _tile(xs.T, p0, j0))
                        _store(y[bi, t0:t1, hi], i0, p0, acc)
    pregate = y + (0 if D is None else x * (D[:, None] if D.dim() == 1 else D))
    out = pregate if z is None else pregate * F.silu(z)
    return out, pregate


def forward(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, causal=True,
            initial_states=None, dt_limit=(0.0, math.inf)):
    """The forward launch sequence (ssd_cuda_fwd.cu): returns y, final_states, pregate."""
    pb = Problem(x, B, chunk_size, causal)
    dtp, acs = chunk_cumsum(pb, dt, A, dt_bias, dt_softplus, *dt_limit)
    states = chunk_state(pb, x, B, dtp, acs, A)
    final = state_passing(pb, states, acs, initial_states)
    y, pregate = chunk_scan(pb, x, B, C, dtp, acs, A, states, final, D, z)
    return y, final, pregate


# ---- backward -------------------------------------------------------------------------------------

def gate_bwd(dout, pregate, z):
    """ssd_gate_bwd_kernel: dY = dout silu(z), dz = dout pregate silu'(z) (no z: dY = dout)."""
    if z is None:
        return dout, None
    s = torch.sigmoid(z)
    return dout * z * s, dout * pregate * s * (1 + z * (1 - s))


def bwd_dstates(pb, dY, C, acs):
    """ssd_bwd_dstates_kernel (the chunk-state kernel with other operands): local[b, c, h] (p x n) =
    sum_i (dY_i e^{acs_i}) (outer) C_i (non-causal: no e^{acs})."""
    k = pb.h // pb.g
    local = dY.new_zeros(pb.b, pb.c, pb.h, pb.p, pb.n)
    for bi in range(pb.b):
        for hi in range(pb.h):
            for ci in range(pb.c):
                t0, t1 = pb.tokens(ci)
                q = t1 - t0
                sc = torch.exp(acs[bi, hi, ci, :q]) if pb.causal else dY.new_ones(q)
                ys = dY[bi, t0:t1, hi] * sc[:, None]
                Cs = C[bi, t0:t1, hi // k]
                for p0 in range(0, pb.p, TILE):
                    for n0 in range(0, pb.n, TILE):
                        acc = dY.new_zeros(TILE, TILE)
                        for i0 in range(0, pb.Q, TILE):
                            acc += _mma(_tile(ys.T, p0, i0), _tile(Cs.T, n0, i0))
                        _store(local[bi, ci, hi], p0, n0, acc)
    return local


def bwd_state_passing(pb, local, states, final, acs, dfinal, blocks):
    """ssd_bwd_state_passing_kernel: one thread per (p, n), `blocks` CTAs over the p*n elements,
    reverse over chunks. Causal: G = dfinal; for c = last..0: G is dS_{c+1} (the gradient of chunk
    c's local state), written over local[c]; extra[c, blk] = the block's sum of G * S_{c+1}
    (S_{c+1} = states[c + 1] or final); G = local[c] + e^{acs_last[c]} G. dinit = G.
    Non-causal: G = dfinal + sum of all local (every chunk's gradient), written to gtot.
    Returns (dS per chunk (b, c, h, p, n) or gtot (b, h, p, n), extra (b, h, c, blocks), dinit)."""
    G = local.new_zeros(pb.b, pb.h, pb.p, pb.n) if dfinal is None else dfinal.clone()
    pn = pb.p * pb.n
    per = _cdiv(pn, blocks)
    extra = local.new_zeros(pb.b, pb.h, pb.c, blocks)
    if not pb.causal:
        for ci in range(pb.c):
            G = G + local[:, ci]
        return G, extra, None
    for ci in reversed(range(pb.c)):
        S_next = states[:, ci + 1] if ci + 1 < pb.c else final
        prod = (G * S_next).reshape(pb.b, pb.h, pn)
        for blk in range(blocks):
            extra[:, :, ci, blk] = prod[:, :, blk * per:(blk + 1) * per].sum(-1)
        lc = local[:, ci].clone()
        local[:, ci] = G
        G = lc + torch.exp(acs[:, :, ci, -1])[..., None, None] * G
    return local, extra, G


def bwd_dx(pb, x, B, C, dY, dtp, acs, A, dS, D):
    """ssd_bwd_dx_kernel: CTA tile (64 rows j, 64 cols p). Z = sum over i blocks >= the j block of
    [(B C^T, K over n) masked i >= j, times e^{acs_i - acs_j}] dY (K = 64 tokens) + (B_j decay_j) G^T
    (K over n). dx = scale_j Z + D dY; partial sums per p block: xz[b, h, c, Q, pblocks] = sum_p x Z
    and dD[b, h, c, qblocks, p] = sum_j dY x. scale/decay: dt'_j, e^{acs_last - acs_j} (causal),
    w_j, 1 (non-causal)."""
    k = pb.h // pb.g
    npb = _cdiv(pb.p, TILE)
    dx = x.new_zeros(pb.b, pb.L, pb.h, pb.p)
    xz = x.new_zeros(pb.b, pb.h, pb.c, pb.Q, npb)
    dD = x.new_zeros(pb.b, pb.h, pb.c * pb.qb, pb.p)
    for bi in range(pb.b):
        for hi in range(pb.h):
            for ci in range(pb.c):
                t0, t1 = pb.tokens(ci)
                q = t1 - t0
                xs, Bs, Cs, ys = x[bi, t0:t1, hi], B[bi, t0:t1, hi // k], C[bi, t0:t1, hi // k], dY[bi, t0:t1, hi]
                G = dS[bi, ci, hi] if pb.causal else dS[bi, hi]
                if pb.causal:
                    scale = dtp[bi, hi, ci, :q]
                    decay = torch.exp(acs[bi, hi, ci, -1] - acs[bi, hi, ci, :q])
                else:
                    scale, decay = -dtp[bi, hi, ci, :q] * A[hi], x.new_ones(q)
                for jb in range(pb.qb):
                    j0 = jb * TILE
                    for p0 in range(0, pb.p, TILE):
                        acc = x.new_zeros(TILE, TILE)
                        for ib in range(jb, pb.qb if pb.causal else jb):
                            i0 = ib * TILE
                            bc = x.new_zeros(TILE, TILE)
                            for n0 in range(0, pb.n, TILE):
                                bc += _mma(_tile(Bs, j0, n0), _tile(Cs, i0, n0))
                            jj = torch.arange(TILE)[:, None] + j0
                            ii = torch.arange(TILE)[None, :] + i0
                            ok = (ii >= jj) & (ii < q) & (jj < q)
                            ai, aj = _vec(acs[bi, hi, ci], i0), _vec(acs[bi, hi, ci], j0)
                            dec = torch.where(ok, torch.exp(torch.where(ok, ai[None, :] - aj[:, None], 0.0)), 0.0)
                            acc += _mma((bc * dec), _tile(ys.T, p0, i0))
                        for n0 in range(0, pb.n, TILE):
                            acc += _mma(_tile(Bs * decay[:, None], j0, n0), _tile(G, p0, n0))
                        xt, yt = _tile(xs, j0, p0), _tile(ys, j0, p0)
                        sj = _vec(scale, j0)
                        out = sj[:, None] * acc
                        if D is not None:
                            Dv = D[hi].expand(pb.p) if D.dim() == 1 else D[hi]
                            out = out + _vec(Dv, p0)[None, :] * yt
                        _store(dx[bi, t0:t1, hi], j0, p0, out)
                        rows = min(TILE, pb.Q - j0)
                        xz[bi, hi, ci, j0:j0 + rows, p0 // TILE] = (xt * acc).sum(1)[:rows]
                        cols = min(TILE, pb.p - p0)
                        dD[bi, hi, ci * pb.qb + jb, p0:p0 + cols] = (yt * xt).sum(0)[:cols]
    return dx, xz, dD


def bwd_dbc(pb, x, B, C, dY, dtp, acs, A, states, final, dS):
    """ssd_bwd_dbc_kernel: CTA (64-row block r of the chunk, 64 cols n), two accumulators.
    dC (rows i of r) = (dY_i e^{acs_i}) S_in (K over p) + sum over j blocks <= r of
       [(dY x^T, K over p) masked j <= i, times e^{acs_i - acs_j} dt'_j] B (K = 64 tokens);
    dB (rows j of r) = sum over i blocks >= r of [(x dY^T) masked i >= j, times e^{acs_i - acs_j}
       dt'_j] C + (x_j scale_j decay_j) G (K over p).
    Non-causal: no diagonal terms, no e^{acs}, scale w. Partials per n block:
    dacs[b, h, c, Q, nblocks] = sum_n (C dC - B dB). dB, dC per head (b, L, h, n)."""
    k = pb.h // pb.g
    nnb = _cdiv(pb.n, TILE)
    dB = x.new_zeros(pb.b, pb.L, pb.h, pb.n)
    dC = x.new_zeros(pb.b, pb.L, pb.h, pb.n)
    dacs = x.new_zeros(pb.b, pb.h, pb.c, pb.Q, nnb)
    for bi in range(pb.b):
        for hi in range(pb.h):
            for ci in range(pb.c):
                t0, t1 = pb.tokens(ci)
                q = t1 - t0
                xs, Bs, Cs, ys = x[bi, t0:t1, hi], B[bi, t0:t1, hi // k], C[bi, t0:t1, hi // k], dY[bi, t0:t1, hi]
                S = states[bi, ci, hi] if pb.causal else final[bi, hi]
                G = dS[bi, ci, hi] if pb.causal else dS[bi, hi]
                a = acs[bi, hi, ci]
                if pb.causal:
                    rs, scale, decay = torch.exp(a[:q]), dtp[bi, hi, ci, :q], torch.exp(a[-1] - a[:q])
                else:
                    rs, scale, decay = x.new_ones(q), -dtp[bi, hi, ci, :q] * A[hi], x.new_ones(q)
                for rb in range(pb.qb):
                    r0 = rb * TILE
                    for n0 in range(0, pb.n, TILE):
                        acc_c = x.new_zeros(TILE, TILE)
                        acc_b = x.new_zeros(TILE, TILE)
                        for p0 in range(0, pb.p, TILE):
                            acc_c += _mma(_tile(ys * rs[:, None], r0, p0), _tile(S.T, n0, p0))
                            acc_b += _mma(_tile(xs * (scale * decay)[:, None], r0, p0), _tile(G.T, n0, p0))
                        if pb.causal:
                            for jb in range(rb + 1):  # dC: j blocks <= r
                                j0 = jb * TILE
                                dm = x.new_zeros(TILE, TILE)
                                for p0 in range(0, pb.p, TILE):
                                    dm += _mma(_tile(ys, r0, p0), _tile(xs, j0, p0))
                                ii = torch.arange(TILE)[:, None] + r0
                                jj = torch.arange(TILE)[None, :] + j0
                                ok = (jj <= ii) & (ii < q) & (jj < q)
                                ai, aj, dj = _vec(a, r0), _vec(a, j0), _vec(dtp[bi, hi, ci], j0)
                                dec = torch.where(ok, torch.exp(torch.where(ok, ai[:, None] - aj[None, :], 0.0)), 0.0)
                                acc_c += _mma((dm * dec * dj[None, :]), _tile(Bs.T, n0, j0))
                            for ib in range(rb, pb.qb):  # dB: i blocks >= r
                                i0 = ib * TILE
                                dmt = x.new_zeros(TILE, TILE)
                                for p0 in range(0, pb.p, TILE):
                                    dmt += _mma(_tile(xs, r0, p0), _tile(ys, i0, p0))
                                jj = torch.arange(TILE)[:, None] + r0
                                ii = torch.arange(TILE)[None, :] + i0
                                ok = (ii >= jj) & (ii < q) & (jj < q)
                                ai, aj, dj = _vec(a, i0), _vec(a, r0), _vec(dtp[bi, hi, ci], r0)
                                dec = torch.where(ok, torch.exp(torch.where(ok, ai[None, :] - aj[:, None], 0.0)), 0.0)
                                acc_b += _mma((dmt * dec * dj[:, None]), _tile(Cs.T, n0, i0))
                        _store(dC[bi, t0:t1, hi], r0, n0, acc_c)
                        _store(dB[bi, t0:t1, hi], r0, n0, acc_b)
                        rows = min(TILE, pb.Q - r0)
                        part = (_tile(Cs, r0, n0) * acc_c - _tile(Bs, r0, n0) * acc_b).sum(1)
                        dacs[bi, hi, ci, r0:r0 + rows, n0 // TILE] = part[:rows]
    return dB, dC, dacs


def bwd_dt(pb, dt, A, dt_bias, softplus, dt_min, dt_max, dtp, xz, dacs, extra):
    """ssd_bwd_dt_kernel: per (chunk, head, batch), one thread per token. Causal: dacs_i = sum of
    the n-block partials (+ the sum of extra at the chunk's last slot); da = reverse cumsum of dacs;
    ddt' = sum of the xz partials + da A; dA partial = sum_k da_k dt'_k. Non-causal: ddt' = -A xz,
    dA partial = -sum_k dt'_k xz_k. ddt = ddt' softplus'(v) [dt_min <= dt' <= dt_max]; dbias
    partial = sum_k ddt_k. Returns ddt (b, L, h), dA_part, dbias_part (b, h, c)."""
    xzs = xz.sum(-1)
    if pb.causal:
        d = dacs.sum(-1)
        d[..., -1] += extra.sum(-1)
        da = torch.flip(torch.cumsum(torch.flip(d, [-1]), -1), [-1])
        ddtp = xzs + da * A[None, :, None, None]
        dA_part = (da * dtp).sum(-1)
    else:
        ddtp = -A[None, :, None, None] * xzs
        dA_part = -(dtp * xzs).sum(-1)
    ddt = dt.new_zeros(pb.b, pb.L, pb.h)
    dbias_part = dt.new_zeros(pb.b, pb.h, pb.c)
    for ci in range(pb.c):
        t0, t1 = pb.tokens(ci)
        q = t1 - t0
        v = dt[:, t0:t1, :].permute(0, 2, 1)
        if dt_bias is not None:
            v = v + dt_bias[None, :, None]
        g = ddtp[:, :, ci, :q]
        if softplus:
            g = torch.where(v <= 20.0, g * torch.sigmoid(v), g)
            v = torch.where(v <= 20.0, F.softplus(v), v)
        if _limited(dt_min, dt_max):  # torch.clamp's gradient: 1 inside [min, max], bounds included
            g = torch.where((v >= dt_min) & (v <= dt_max), g, 0.0)
        ddt[:, t0:t1, :] = g.permute(0, 2, 1)
        dbias_part[:, :, ci] = g.sum(-1)
    return ddt, dA_part, dbias_part


def backward(dout, dfinal, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
             causal=True, initial_states=None, dt_limit=(0.0, math.inf), pregate=None):
    """The backward launch sequence (ssd_bwd.cu): recompute dt', cumsums, chunk states and passed
    states, then the kernels above. pregate: the forward's (recomputed when None). Returns what the
    kernels write, in their layouts (Params in ssd_params.h): dx, ddt, dz, dinit, dB and dC per head
    (b, L, h, n), and the partial sums dA, dbias (b, h, chunks) and dD (b, h, chunks * qblocks, p),
    which py/ops/ssd_cuda.py sums."""
    pb = Problem(x, B, chunk_size, causal)
    dtp, acs = chunk_cumsum(pb, dt, A, dt_bias, dt_softplus, *dt_limit)
    states = chunk_state(pb, x, B, dtp, acs, A)
    final = state_passing(pb, states, acs, initial_states)
    if pregate is None:
        _, pregate = chunk_scan(pb, x, B, C, dtp, acs, A, states, final, D, z)
    dY, dz = gate_bwd(dout, pregate, z)
    local = bwd_dstates(pb, dY, C, acs)
    dS, extra, dinit = bwd_state_passing(pb, local, states, final, acs, dfinal, layout_of(pb)["state_blocks"])
    dx, xz, dD_part = bwd_dx(pb, x, B, C, dY, dtp, acs, A, dS, D)
    dBh, dCh, dacs = bwd_dbc(pb, x, B, C, dY, dtp, acs, A, states, final, dS)
    ddt, dA_part, dbias_part = bwd_dt(pb, dt, A, dt_bias, dt_softplus, *dt_limit, dtp, xz, dacs, extra)
    return dict(dx=dx, ddt=ddt, dz=dz, dinit=dinit if initial_states is not None else None, dB=dBh, dC=dCh,
                dA=dA_part, dbias=dbias_part, dD=dD_part if D is not None else None)


# ---- the model as the extension ------------------------------------------------------------------

def layout_of(pb):
    """ssd_layout.h's Geometry and Workspace for these sizes (what the module's `layout` returns)."""
    bhc = pb.b * pb.h * pb.c
    state_blocks = _cdiv(pb.p * pb.n, 256)
    return dict(chunk=pb.Q, chunks=pb.c, qblocks=pb.qb, pblocks=_cdiv(pb.p, TILE), nblocks=_cdiv(pb.n, TILE),
                state_blocks=state_blocks, ws_dt=bhc * pb.Q, ws_cumsum=bhc * pb.Q, ws_states=bhc * pb.p * pb.n,
                ws_extra=bhc * state_blocks, ws_xz=bhc * pb.Q * _cdiv(pb.p, TILE),
                ws_dcumsum=bhc * pb.Q * _cdiv(pb.n, TILE), dA=bhc, dbias=bhc, dD=bhc * pb.qb * pb.p)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _memory(ptr, shape, strides, dtype):
    """The tensor at address ptr (CPU memory) with these element strides, or None for ptr 0."""
    if not ptr:
        return None
    extent = 1 + sum((s - 1) * st for s, st in zip(shape, strides)) if all(shape) else 0
    size = torch.empty(0, dtype=dtype).element_size()
    buf = (ctypes.c_char * (extent * size)).from_address(ptr)
    return torch.frombuffer(buf, dtype=dtype, count=extent).as_strided(shape, strides)


def _contiguous(ptr, shape, dtype):
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return _memory(ptr, shape, strides, dtype)


class FakeExtension:
    """Stands in for cc.kernels.ssd_cuda on CPU tensors, under the real binding (py/ops/ssd_cuda.py):
    reads every input through its pointer and strides as the kernels do, runs the model in float64,
    and writes every output through its pointer in the kernels' types and layouts. The real module's
    parameter checks run first when it is built."""

    max_chunk = 256

    def __init__(self, check=None):
        self._check = check

    @staticmethod
    def _problem(p):
        return Problem(torch.empty(p["batch"], p["seqlen"], p["heads"], p["headdim"], device="meta"),
                       torch.empty(p["batch"], p["seqlen"], p["groups"], p["dstate"], device="meta"),
                       p["chunk_size"], p["causal"])

    def layout(self, params):
        return layout_of(self._problem(params))

    def check(self, params, backward=False):
        if self._check is not None:
            self._check(params, backward)

    def _inputs(self, p):
        b, L, h, hd, g, n = (p[k] for k in ("batch", "seqlen", "heads", "headdim", "groups", "dstate"))
        act, f32 = _DTYPES[p["dtype"]], torch.float32
        shapes = dict(x=((b, L, h, hd), act), dt=((b, L, h), act), A=((h,), f32), B=((b, L, g, n), act),
                      C=((b, L, g, n), act), D=((h, hd), f32), z=((b, L, h, hd), act), dt_bias=((h,), f32),
                      initial_states=((b, h, hd, n), f32))
        out = {}
        for k, (shape, dtype) in shapes.items():
            t = _memory(p.get(k, 0), shape, p.get(k + "_strides", [0] * len(shape)), dtype)
            out[k] = None if t is None else t.double()
        return out, act

    def forward(self, p, stream):
        self.check(p, False)
        q, act = self._inputs(p)
        b, L, h, hd, n = (p[k] for k in ("batch", "seqlen", "heads", "headdim", "dstate"))
        y, final, pregate = forward(**q, chunk_size=p["chunk_size"], dt_softplus=p["softplus"], causal=p["causal"],
                                    dt_limit=(p.get("dt_min", 0.0), p.get("dt_max", math.inf)))
        _contiguous(p["y"], (b, L, h, hd), act).copy_(y)
        _contiguous(p["final_states"], (b, h, hd, n), torch.float32).copy_(final)
        if p.get("pregate"):
            _contiguous(p["pregate"], (b, L, h, hd), act).copy_(pregate)

    def backward(self, p, stream):
        self.check(p, True)
        q, act = self._inputs(p)
        b, L, h, hd, n = (p[k] for k in ("batch", "seqlen", "heads", "headdim", "dstate"))
        dout = _contiguous(p["dout"], (b, L, h, hd), act).double()
        dfinal = _contiguous(p.get("dfinal", 0), (b, h, hd, n), torch.float32)
        pregate = _contiguous(p.get("pregate", 0), (b, L, h, hd), act)
        out = backward(dout, None if dfinal is None else dfinal.double(), **q, chunk_size=p["chunk_size"],
                       dt_softplus=p["softplus"], causal=p["causal"],
                       dt_limit=(p.get("dt_min", 0.0), p.get("dt_max", math.inf)),
                       pregate=None if pregate is None else pregate.double())
        types = dict(dx=act, ddt=act, dz=act)
        for k, t in out.items():
            if t is not None and p.get(k):
                _contiguous(p[k], tuple(t.shape), types.get(k, torch.float32)).copy_(t)
