"""A CPU model of the selective-scan CUDA kernels, step by step, in float64 PyTorch.

The kernels (cc/kernels/selective_scan/) have not run on a GPU. This model replays their algorithm
on the CPU so their arithmetic can be checked against `selective_scan_reference` here:
  * the CTA/warp -> (batch, group, channel) decode of `Row` / `RowTiling`, padding warps included;
  * per chunk of `kChunk` positions, lane j owns positions j*kItems .. j*kItems+kItems-1
    (`ChunkLayout`), composes them as affine maps (a, b), and joins the other lanes with the warp
    shuffle scans of warp_scan.cuh (one tensor axis of 32 lanes, shuffles as index gathers);
  * the carried state between chunks, the chunk-start checkpoints, the N = 1 register path and the
    tiled path (kNTile states per pass), the reverse adjoint scan of the backward, the dB/dC
    reduction over the CTA's rows into per-CTA slices, and the warp_sum of dA/dD/dbias;
  * the cross-2D index maps (`cross2d_offset`) for u, dout, y and du.
Every tensor of the kernels' Params is reached through its pointer and strides, exactly as the
kernels do: `FakeExtension` stands in for `cc.kernels.selective_scan_cuda` under the real Python
binding (py/ops/selective_scan_cuda.py), reading and writing the CPU memory the pointers name.
Geometries and the chunk length are parsed from selective_scan_config.h.
"""
import collections
import ctypes
import math
import pathlib
import re

import torch

ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFIG_H = ROOT / "cc" / "kernels" / "selective_scan" / "selective_scan_config.h"
LANES = 32
LOG2E = 1.4426950408889634  # cuda_math.cuh kLog2e
MAX_DSTATE = 256  # selective_scan_params.h kMaxDState

Geometry = collections.namedtuple("Geometry", "items rows ntile")


def read_config(path=CONFIG_H):
    """{name: Geometry} and kChunkLen from selective_scan_config.h."""
    text = path.read_text()
    geos = {m[0]: Geometry(*map(int, m[1:]))
            for m in re.findall(r"using (\w+) = Geometry<(\d+), (\d+), (\d+)>;", text)}
    chunk = int(re.search(r"kChunkLen = (\d+);", text).group(1))
    return geos, chunk


GEOS, CHUNK_LEN = read_config()
_LANE = torch.arange(LANES)


# ---- warp_scan.cuh: lanes are the last axis; a shuffle is a gather over it ------------------------

def shfl_up(x, offset):
    """__shfl_up_sync: lane i reads lane i - offset; lanes below offset read their own value."""
    src = _LANE - offset
    return x[..., torch.where(src >= 0, src, _LANE)]


def shfl_down(x, offset):
    """__shfl_down_sync: lane i reads lane i + offset; lanes past 31 - offset read their own value."""
    src = _LANE + offset
    return x[..., torch.where(src < LANES, src, _LANE)]


def shfl(x, lane):
    """__shfl_sync from one lane: every lane reads `lane`'s value."""
    return x[..., lane:lane + 1].expand_as(x)


def warp_inclusive_scan(a, b):
    """warp_inclusive_scan: b first (it reads the old a), then a, on lanes >= offset."""
    for offset in (1, 2, 4, 8, 16):
        pa, pb = shfl_up(a, offset), shfl_up(b, offset)
        on = _LANE >= offset
        b = torch.where(on, a * pb + b, b)
        a = torch.where(on, a * pa, a)
    return a, b


def warp_reverse_inclusive_scan(a, b):
    """warp_reverse_inclusive_scan: later lanes' maps first, on lanes with lane + offset < 32."""
    for offset in (1, 2, 4, 8, 16):
        pa, pb = shfl_down(a, offset), shfl_down(b, offset)
        on = _LANE + offset < LANES
        b = torch.where(on, a * pb + b, b)
        a = torch.where(on, a * pa, a)
    return a, b


def warp_sum(x):
    """warp_sum: the fixed butterfly (offsets 16, 8, 4, 2, 1)."""
    for offset in (16, 8, 4, 2, 1):
        x = x + x[..., _LANE ^ offset]
    return x


# ---- cuda_math.cuh ---------------------------------------------------------------------------------

def softplus(x):
    return torch.where(x <= 20, torch.log1p(torch.exp(torch.clamp(x, max=20))), x)


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


# ---- selective_scan_layout.h -----------------------------------------------------------------------

def chunk_positions(geo, chunk):
    """Geometry::position(chunk, item, lane) as a (32, kItems) tensor: ChunkLayout (item, lane) ->
    item * 1 + lane * kItems (blocked)."""
    item = torch.arange(geo.items)[None, :]
    return chunk * LANES * geo.items + item + _LANE[:, None] * geo.items


def cross2d_offset(k, l, height, width, h_stride, w_stride):
    """cross2d_offset: k = 0 row-major, 1 column-major, 2 / 3 their reverses. k, l: int tensors."""
    m = torch.where(k >= 2, height * width - 1 - l, l)
    rows = (m % width) * w_stride + (m // width) * h_stride     # shape (W, H) : stride (ws, hs)
    cols = (m % height) * h_stride + (m // height) * w_stride   # shape (H, W) : stride (hs, ws)
    return torch.where(k % 2 == 0, rows, cols)


def decode_rows(p, rows):
    """Row / RowTiling for every (CTA, warp), flattened CTA-major: dict of (ctas * rows,) tensors."""
    batch, groups = p["batch"], p["groups"]
    cpg = p["dim"] // groups
    bpg = -(-cpg // rows)
    block = torch.arange(bpg * groups * batch)
    # idx2crd over shape (blocks_per_group, groups, batch): first coordinate fastest.
    rb, g, b = block % bpg, (block // bpg) % groups, block // (bpg * groups)
    warp = torch.arange(rows)
    wanted = rb[:, None] * rows + warp[None, :]
    valid = wanted < cpg
    c = torch.where(valid, wanted, torch.full_like(wanted, cpg - 1))
    flat = lambda t: t.expand(len(block), rows).reshape(-1)
    g2, b2 = flat(g[:, None]), flat(b[:, None])
    return dict(valid=valid.reshape(-1), b=b2, g=g2, c=c.reshape(-1), d=g2 * cpg + c.reshape(-1),
                slice=flat(rb[:, None]), ctas=len(block))


# ---- selective_scan_io.cuh: loads/stores of a lane's kItems positions (past L: 0 / no store) -------

def load_items(buf, row_base, pos, seqlen):
    """load_items: buf[row_base + pos] for pos < seqlen, else 0. row_base (W,), pos (32, items)."""
    inside = pos < seqlen
    idx = row_base[:, None, None] + torch.where(inside, pos, torch.zeros_like(pos))
    return torch.where(inside, buf[idx], torch.zeros((), dtype=buf.dtype))


def load_items_2d(buf, row_base, k, pos, p, h_stride, w_stride):
    """load_items_2d: position l of traversal k at cross2d_offset(k, l, H, W, h_stride, w_stride)."""
    H, W = p["height"], p["width"]
    inside = pos < H * W
    l = torch.where(inside, pos, torch.zeros_like(pos))
    off = cross2d_offset(k[:, None, None], l[None], H, W, h_stride, w_stride)
    return torch.where(inside, buf[row_base[:, None, None] + off], torch.zeros((), dtype=buf.dtype))


class Output:
    """An output buffer that counts writes, so missing or doubled stores show up."""

    def __init__(self, numel):
        self.values = torch.full((numel,), float("nan"), dtype=torch.float64)
        self.writes = torch.zeros(numel, dtype=torch.int64)

    def store(self, idx, vals, mask):
        idx, vals = idx[mask], vals[mask]
        self.values[idx] = vals
        self.writes.index_add_(0, idx, torch.ones_like(idx))


def store_items(out, row_base, pos, seqlen, vals, mask):
    """store_items: out[row_base + pos] = vals for pos < seqlen, rows where mask (W,)."""
    keep = (pos < seqlen)[None] & mask[:, None, None]
    out.store(row_base[:, None, None] + pos, vals, keep)


def store_items_2d(out, row_base, k, pos, p, vals, mask):
    """store_items_2d: the contiguous (H, W) map of the row, strides (W, 1)."""
    H, W = p["height"], p["width"]
    inside = pos < H * W
    l = torch.where(inside, pos, torch.zeros_like(pos))
    off = cross2d_offset(k[:, None, None], l[None], H, W, W, 1)
    out.store(row_base[:, None, None] + off, vals, inside[None] & mask[:, None, None])


# ---- selective_scan_fwd.cuh ------------------------------------------------------------------------

def _row_pointers(p, R):
    """Row::Row: element offsets of the warp's rows (u by channel c in cross-2D, else d)."""
    b, g, c, d = R["b"], R["g"], R["c"], R["d"]
    return dict(u=b * p["u_batch_stride"] + (c if p["cross2d"] else d) * p["u_dim_stride"],
                delta=b * p["delta_batch_stride"] + d * p["delta_dim_stride"],
                z=b * p["z_batch_stride"] + d * p["z_dim_stride"],
                B=b * p["B_batch_stride"] + g * p["B_group_stride"],
                C=b * p["C_batch_stride"] + g * p["C_group_stride"])


def _discretize(p, bias, pos, dt):
    """discretize: dt = softplus(delta + bias) (or not); 0 past L (identity steps)."""
    v = dt + bias[:, None, None]
    return torch.where(pos[None] < p["seqlen"], softplus(v) if p["softplus"] else v, torch.zeros((), dtype=v.dtype))


def _load_u(p, m, ptr, R, pos):
    if p["cross2d"]:
        return load_items_2d(m["u"], ptr["u"], R["g"], pos, p, p["u_h_stride"], p["u_w_stride"])
    return load_items(m["u"], ptr["u"], pos, p["seqlen"])


def _scalars(p, m, R):
    zero = torch.zeros(len(R["d"]), dtype=torch.float64)
    D = m["D"][R["d"]] if m.get("D") is not None else zero
    bias = m["delta_bias"][R["d"]] if m.get("delta_bias") is not None else zero
    return D, bias


def model_forward(p, m, geo):
    """selective_scan_fwd_kernel over all CTAs. m: name -> flat float64 tensor (inputs); returns
    {"y", "last_state", "ckpt"} as Output buffers (None where the pointer is null)."""
    N, L, dim = p["dstate"], p["seqlen"], p["dim"]
    n1 = geo.ntile == 1
    nchunks = -(-L // (LANES * geo.items))
    R = decode_rows(p, geo.rows)
    R = {k: v[R["valid"]] if torch.is_tensor(v) and v.dim() else v for k, v in R.items()}  # padding warps return
    Wn = len(R["d"])
    ptr = _row_pointers(p, R)
    D, bias = _scalars(p, m, R)
    rowid = R["b"] * dim + R["d"]
    out = dict(y=Output(p["batch"] * dim * L),
               last_state=Output(p["batch"] * dim * N) if p.get("last_state") else None,
               ckpt=Output(p["batch"] * dim * nchunks * N) if p.get("ckpt") else None)
    ntiles = 1 if n1 else -(-N // geo.ntile)
    carry = torch.zeros(Wn, N, dtype=torch.float64)  # carry_smem[warp] / carry1, one value per warp
    every = torch.ones(Wn, dtype=torch.bool)
    lane0 = (_LANE == 0)
    for chunk in range(nchunks):
        pos = chunk_positions(geo, chunk)
        u = _load_u(p, m, ptr, R, pos)
        dt = _discretize(p, bias, pos, load_items(m["delta"], ptr["delta"], pos, L))
        y = D[:, None, None] * u
        u = u * dt  # from here on u holds dt*u
        for tile in range(ntiles):
            h0, a, bu, pa, pb = {}, {}, {}, {}, {}
            for s in range(geo.ntile):  # pass 1: compose the lane's steps, warp scan
                n = tile * geo.ntile + s
                on = n < N
                a2 = m["A"][R["d"] * N + n] * LOG2E if on else torch.zeros(Wn, dtype=torch.float64)
                h0[s] = carry[:, n].clone() if on else torch.zeros(Wn, dtype=torch.float64)
                if out["ckpt"] is not None and on:  # lane 0 saves the state entering the chunk
                    out["ckpt"].store((rowid * nchunks * N + chunk * N + n)[:, None], h0[s][:, None],
                                      every[:, None])
                Bv = (load_items(m["B"], ptr["B"] + n * p["B_state_stride"], pos, L) if on
                      else torch.zeros_like(u))
                a[s] = torch.exp2(dt * a2[:, None, None])
                bu[s] = u * Bv
                pa[s] = torch.ones(Wn, LANES, dtype=torch.float64)
                pb[s] = torch.zeros(Wn, LANES, dtype=torch.float64)
                for i in range(geo.items):
                    pb[s] = a[s][..., i] * pb[s] + bu[s][..., i]
                    pa[s] = pa[s] * a[s][..., i]
                pa[s], pb[s] = warp_inclusive_scan(pa[s], pb[s])
            for s in range(geo.ntile):  # pass 2: exclusive prefix on the carry, replay, y += C*h
                n = tile * geo.ntile + s
                on = n < N
                ea, eb = shfl_up(pa[s], 1), shfl_up(pb[s], 1)
                ea = torch.where(lane0, torch.ones_like(ea), ea)
                eb = torch.where(lane0, torch.zeros_like(eb), eb)
                nxt = shfl(pa[s], 31) * h0[s][:, None] + shfl(pb[s], 31)
                h = ea * h0[s][:, None] + eb
                Cv = (load_items(m["C"], ptr["C"] + n * p["C_state_stride"], pos, L) if on
                      else torch.zeros_like(u))
                for i in range(geo.items):
                    h = a[s][..., i] * h + bu[s][..., i]
                    y[..., i] = y[..., i] + Cv[..., i] * h
                if on:  # carry1 = next (N = 1) / lane 0 writes carry[n] between __syncwarp()s
                    carry[:, n] = nxt[:, 0]
        if p.get("z"):
            zv = load_items(m["z"], ptr["z"], pos, L)
            y = y * (zv * sigmoid(zv))
        y_row = rowid * L
        if p["cross2d"]:
            store_items_2d(out["y"], y_row, R["g"], pos, p, y, every)
        else:
            store_items(out["y"], y_row, pos, L, y, every)
    if out["last_state"] is not None:
        idx = rowid[:, None] * N + torch.arange(N)[None]
        out["last_state"].store(idx, carry, torch.ones_like(idx, dtype=torch.bool))
    return out


# ---- selective_scan_bwd.cuh ------------------------------------------------------------------------

def model_backward(p, m, geo):
    """selective_scan_bwd_kernel over all CTAs (padding warps included: they compute on a clamped
    channel, add zeros to dB/dC and write nothing). Returns Output buffers of du, ddelta, dz,
    dA_part, dB_part, dC_part, dD_part, dbias_part."""
    N, L, dim, groups, batch = p["dstate"], p["seqlen"], p["dim"], p["groups"], p["batch"]
    n1 = geo.ntile == 1
    chunk_len = LANES * geo.items
    nchunks = -(-L // chunk_len)
    R = decode_rows(p, geo.rows)
    Wn, ctas = len(R["d"]), R["ctas"]
    valid = R["valid"]
    live = valid.double()
    ptr = _row_pointers(p, R)
    D, bias = _scalars(p, m, R)
    rowid = R["b"] * dim + R["d"]
    slices = -(-(dim // groups) // geo.rows)
    part_base = ((R["slice"] * batch + R["b"]) * groups + R["g"]) * N * L
    dout_base = R["b"] * p["dout_batch_stride"] + (R["c"] if p["cross2d"] else R["d"]) * p["dout_dim_stride"]
    has_z = bool(p.get("z"))
    out = dict(du=Output(batch * dim * L), ddelta=Output(batch * dim * L),
               dz=Output(batch * dim * L) if has_z else None, dA_part=Output(batch * dim * N),
               dB_part=Output(slices * batch * groups * N * L), dC_part=Output(slices * batch * groups * N * L),
               dD_part=Output(batch * dim) if p.get("dD_part") else None,
               dbias_part=Output(batch * dim) if p.get("dbias_part") else None)
    ntiles = 1 if n1 else -(-N // geo.ntile)
    f64 = dict(dtype=torch.float64)
    rev = torch.zeros(Wn, N, **f64)     # rev_smem / rev1
    dA_run = torch.zeros(Wn, N, **f64)  # dA_smem (tiled path)
    dA1 = torch.zeros(Wn, LANES, **f64)  # lane-local dA (N = 1 path)
    dD_lane = torch.zeros(Wn, LANES, **f64)
    dbias_lane = torch.zeros(Wn, LANES, **f64)
    lane0, lane31 = _LANE == 0, _LANE == LANES - 1
    for chunk in range(nchunks - 1, -1, -1):
        pos = chunk_positions(geo, chunk)
        u = _load_u(p, m, ptr, R, pos)
        if p["cross2d"]:
            dy = load_items_2d(m["dout"], dout_base, R["g"], pos, p, p["dout_h_stride"], p["dout_w_stride"])
        else:
            dy = load_items(m["dout"], dout_base, pos, L)
        dt = _discretize(p, bias, pos, load_items(m["delta"], ptr["delta"], pos, L))
        z = load_items(m["z"], ptr["z"], pos, L) if has_z else None
        if has_z:  # keep dout * silu'(z) in z; dy becomes the gradient before gating
            sz = sigmoid(z)
            gate = z * sz
            z = dy * sz * (1 + z * (1 - sz))
            dy = dy * gate
        dD_lane = dD_lane + _lane_sum(dy * u)
        ypre = D[:, None, None] * u
        du = D[:, None, None] * dy
        ddt = torch.zeros_like(u)
        for tile in range(ntiles):
            Av, q0, pa, pb, ra, rb, a, hp, Bv, e = ({} for _ in range(10))
            red_B = torch.zeros(Wn, geo.ntile * chunk_len, **f64)
            red_C = torch.zeros(Wn, geo.ntile * chunk_len, **f64)
            for s in range(geo.ntile):  # forward recompute from ckpt, then the lane's adjoint maps
                n = tile * geo.ntile + s
                on = n < N
                Av[s] = m["A"][R["d"] * N + n] if on else torch.zeros(Wn, **f64)
                a2 = Av[s] * LOG2E  # as the forward: exp2(dt * (A log2 e))
                h0 = m["ckpt"][rowid * nchunks * N + chunk * N + n] if on else torch.zeros(Wn, **f64)
                q0[s] = rev[:, n].clone() if on else torch.zeros(Wn, **f64)
                Bv[s] = load_items(m["B"], ptr["B"] + n * p["B_state_stride"], pos, L) if on else torch.zeros_like(u)
                a[s] = torch.exp2(dt * a2[:, None, None])
                pa[s], pb[s] = torch.ones(Wn, LANES, **f64), torch.zeros(Wn, LANES, **f64)
                for i in range(geo.items):
                    pb[s] = a[s][..., i] * pb[s] + dt[..., i] * u[..., i] * Bv[s][..., i]
                    pa[s] = pa[s] * a[s][..., i]
                pa[s], pb[s] = warp_inclusive_scan(pa[s], pb[s])
                ea, eb = shfl_up(pa[s], 1), shfl_up(pb[s], 1)
                ea = torch.where(lane0, torch.ones_like(ea), ea)
                eb = torch.where(lane0, torch.zeros_like(eb), eb)
                h = ea * h0[:, None] + eb
                Cv = load_items(m["C"], ptr["C"] + n * p["C_state_stride"], pos, L) if on else torch.zeros_like(u)
                hp[s], e[s] = torch.zeros_like(u), torch.zeros_like(u)
                for i in range(geo.items):
                    hp[s][..., i] = h
                    h = a[s][..., i] * h + dt[..., i] * u[..., i] * Bv[s][..., i]
                    ypre[..., i] = ypre[..., i] + Cv[..., i] * h
                    red_C[:, s * chunk_len + _LANE * geo.items + i] = live[:, None] * dy[..., i] * h
                    e[s][..., i] = dy[..., i] * Cv[..., i]
                ra[s], rb[s] = torch.ones(Wn, LANES, **f64), torch.zeros(Wn, LANES, **f64)
                for i in range(geo.items - 1, -1, -1):  # x -> a*(e + x), last position first
                    rb[s] = a[s][..., i] * (rb[s] + e[s][..., i])
                    ra[s] = ra[s] * a[s][..., i]
                ra[s], rb[s] = warp_reverse_inclusive_scan(ra[s], rb[s])
            for s in range(geo.ntile):  # adjoint pass
                n = tile * geo.ntile + s
                on = n < N
                ea, eb = shfl_down(ra[s], 1), shfl_down(rb[s], 1)
                ea = torch.where(lane31, torch.ones_like(ea), ea)
                eb = torch.where(lane31, torch.zeros_like(eb), eb)
                nxt = shfl(ra[s], 0) * q0[s][:, None] + shfl(rb[s], 0)
                x = ea * q0[s][:, None] + eb
                dA_lane = torch.zeros(Wn, LANES, **f64)
                for i in range(geo.items - 1, -1, -1):
                    gh = e[s][..., i] + x
                    x = a[s][..., i] * gh
                    ahp = a[s][..., i] * hp[s][..., i]
                    ddt[..., i] = ddt[..., i] + gh * (ahp * Av[s][:, None] + u[..., i] * Bv[s][..., i])
                    du[..., i] = du[..., i] + gh * dt[..., i] * Bv[s][..., i]
                    dA_lane = dA_lane + gh * ahp * dt[..., i]
                    red_B[:, s * chunk_len + _LANE * geo.items + i] = live[:, None] * gh * dt[..., i] * u[..., i]
                if n1:
                    rev[:, 0] = nxt[:, 0]
                    dA1 = dA1 + dA_lane
                elif on:
                    rev[:, n] = nxt[:, 0]
                    dA_run[:, n] = dA_run[:, n] + warp_sum(dA_lane)[:, 0]
            _reduce_dBdC(out, geo, R, red_B, red_C, part_base, chunk, tile, N, L)
        inside = (pos < L)[None]
        if p["softplus"]:  # softplus'(v) = 1 - exp(-softplus(v)), from dt itself
            ddt = ddt * -torch.expm1(-dt)
        ddt = torch.where(inside, ddt, torch.zeros((), **f64))
        dbias_lane = dbias_lane + _lane_sum(ddt)
        if has_z:
            z = z * ypre  # dz
        if p["cross2d"]:
            store_items_2d(out["du"], rowid * L, R["g"], pos, p, du, valid)
        else:
            store_items(out["du"], rowid * L, pos, L, du, valid)
        store_items(out["ddelta"], rowid * L, pos, L, ddt, valid)
        if has_z:
            store_items(out["dz"], rowid * L, pos, L, z, valid)
    first = valid[:, None] & lane0[None, :1]
    if out["dD_part"] is not None:
        out["dD_part"].store(rowid[:, None], warp_sum(dD_lane)[:, :1], first)
    if out["dbias_part"] is not None:
        out["dbias_part"].store(rowid[:, None], warp_sum(dbias_lane)[:, :1], first)
    idx = rowid[:, None] * N + torch.arange(N)[None]
    dA = warp_sum(dA1)[:, :1] if n1 else dA_run
    out["dA_part"].store(idx, dA, valid[:, None].expand_as(idx))
    return out


def _lane_sum(x):
    """A lane's items summed in sequence order (the kernel's lane-local += over i)."""
    acc = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for i in range(x.shape[-1]):
        acc = acc + x[..., i]
    return acc


def _reduce_dBdC(out, geo, R, red_B, red_C, part_base, chunk, tile, N, L):
    """The CTA's kRows rows summed in row order into its slice: ReduceLayout (thread, it) -> tile
    offset tid + it * kThreads, ReduceTile offset -> (pos = off % kChunk, s = off / kChunk)."""
    chunk_len, threads = LANES * geo.items, LANES * geo.rows
    iters = geo.ntile * chunk_len // threads
    rb = red_B.view(R["ctas"], geo.rows, -1)
    rc = red_C.view(R["ctas"], geo.rows, -1)
    base = part_base.view(R["ctas"], geo.rows)[:, 0]  # the same for every warp of a CTA
    tid = torch.arange(threads)
    for it in range(iters):
        off = tid + it * threads
        l = chunk * chunk_len + off % chunk_len
        n = tile * geo.ntile + off // chunk_len
        keep = (l < L) & (n < N)
        sb = torch.zeros(R["ctas"], threads, dtype=torch.float64)
        sc = torch.zeros_like(sb)
        for r in range(geo.rows):
            sb = sb + rb[:, r, off]
            sc = sc + rc[:, r, off]
        idx = base[:, None] + n[None] * L + l[None]
        mask = keep[None].expand_as(idx)
        out["dB_part"].store(idx, sb, mask)
        out["dC_part"].store(idx, sc, mask)


# ---- the extension's host side, over real CPU memory -----------------------------------------------

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _memory(ptr, dtype, numel):
    """A tensor over `numel` elements of CPU memory at address `ptr` (no copy)."""
    size = torch.empty((), dtype=dtype).element_size()
    raw = (ctypes.c_char * (numel * size)).from_address(ptr)
    return torch.frombuffer(raw, dtype=dtype, count=numel)


def _extent(sizes, strides):
    return 1 + sum((n - 1) * s for n, s in zip(sizes, strides))


class FakeExtension:
    """Stands in for cc.kernels.selective_scan_cuda: the same functions over CPU memory, running
    the model above. `check` (when given, the real extension's) validates the Params first, as
    forward()/backward() do in selective_scan_fwd.cu / _bwd.cu."""

    def __init__(self, check=None):
        self._check = check
        self.calls = []

    @staticmethod
    def chunk_len():
        return CHUNK_LEN

    @staticmethod
    def bwd_slices(dim, groups, dstate):
        rows = (GEOS["BwdN1"] if dstate == 1 else GEOS["BwdTiled"]).rows
        return -(-(dim // groups) // rows)

    def forward(self, params, stream):
        self._run(params, backward=False)

    def backward(self, params, stream):
        self._run(params, backward=True)

    def _run(self, params, backward):
        if self._check is not None:
            self._check(params, backward)
        p = collections.defaultdict(int, params)
        assert p["dstate"] <= MAX_DSTATE
        self.calls.append(("backward" if backward else "forward", dict(params)))
        T = _DTYPES[p["dtype"]]
        batch, dim, L, N, G = p["batch"], p["dim"], p["seqlen"], p["dstate"], p["groups"]
        nchunks = -(-L // CHUNK_LEN)
        f32 = torch.float32
        if p["cross2d"]:
            u_shape = ((batch, dim // 4, p["height"], p["width"]),
                       (p["u_batch_stride"], p["u_dim_stride"], p["u_h_stride"], p["u_w_stride"]))
        else:
            u_shape = ((batch, dim, L), (p["u_batch_stride"], p["u_dim_stride"], 1))
        inputs = dict(u=(T,) + u_shape,
                      delta=(T, (batch, dim, L), (p["delta_batch_stride"], p["delta_dim_stride"], 1)),
                      A=(f32, (dim, N), (N, 1)),
                      B=(T, (batch, G, N, L), (p["B_batch_stride"], p["B_group_stride"], p["B_state_stride"], 1)),
                      C=(T, (batch, G, N, L), (p["C_batch_stride"], p["C_group_stride"], p["C_state_stride"], 1)),
                      D=(f32, (dim,), (1,)), delta_bias=(f32, (dim,), (1,)),
                      z=(T, (batch, dim, L), (p["z_batch_stride"], p["z_dim_stride"], 1)))
        if backward:
            if p["cross2d"]:
                dshape = ((batch, dim // 4, p["height"], p["width"]),
                          (p["dout_batch_stride"], p["dout_dim_stride"], p["dout_h_stride"], p["dout_w_stride"]))
            else:
                dshape = ((batch, dim, L), (p["dout_batch_stride"], p["dout_dim_stride"], 1))
            inputs.update(dout=(T,) + dshape, ckpt=(f32, (batch, dim, nchunks, N), None))
        m = {}
        for name, (dtype, sizes, strides) in inputs.items():
            if p[name]:
                numel = math.prod(sizes) if strides is None else _extent(sizes, strides)
                m[name] = _memory(p[name], dtype, numel).to(torch.float64)
        if backward:
            geo = GEOS["BwdN1"] if N == 1 else GEOS["BwdTiled"]
            outs = model_backward(p, m, geo)
            dtypes = dict(du=T, ddelta=T, dz=T, dA_part=f32, dB_part=f32, dC_part=f32, dD_part=f32, dbias_part=f32)
        else:
            geo = GEOS["FwdN1"] if N == 1 else GEOS["FwdTiled"]
            outs = model_forward(p, m, geo)
            dtypes = dict(y=T, last_state=f32, ckpt=f32)
        self.last_writes = {}
        for name, buf in outs.items():
            if buf is None:
                continue
            assert p[name], f"the model wrote {name}, whose pointer is null"
            self.last_writes[name] = buf.writes
            _memory(p[name], dtypes[name], buf.values.numel()).copy_(buf.values.to(dtypes[name]))
