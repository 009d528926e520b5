"""A CPU model of the DCNv4 CUDA kernels, thread by thread, in float64 PyTorch.

The kernels (cc/kernels/dcnv4/) have not run on a GPU. This model replays their algorithm so it
can be checked against `dcnv4_reference` here:
  * the forward's thread -> (pixel, group, chunk) decode and chunk width (8 or 1, `vector_width`);
  * the backward's CTA/thread -> (pixel, group, lane) units, each lane's sums over its chunks, the
    fixed shared-memory tree over the lanes, lane 0's offset/mask gradient and padding writes;
  * the deterministic value gradient: (key, entry id, weight) per corner written into the
    workspace at the offsets of `workspace_layout`, a stable sort by key, and the gather pass
    (lower_bound of d and d + 1, then the segment summed in sorted order); or the atomic mode's
    scatter into a float32 buffer.
Every tensor is reached through the Params pointers and strides, so `FakeExtension` stands in for
`cc.kernels.dcnv4_cuda` under the real binding (py/ops/dcnv4_cuda.py). Constants are parsed from
dcnv4_layout.h. Not modelled: float32 rounding, vector-load alignment faults, races, occupancy.
"""
import math
import pathlib
import re

import torch

from py.ops.tests.selective_scan_cuda_model import _extent, _memory

ROOT = pathlib.Path(__file__).resolve().parents[3]
LAYOUT_H = ROOT / "cc" / "kernels" / "dcnv4" / "dcnv4_layout.h"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_layout(path=LAYOUT_H):
    """{kVec, kBlockThreads, kMaxLanes, kWorkspaceAlign} from dcnv4_layout.h."""
    text = path.read_text()
    return {name: int(re.search(rf"constexpr \w+ {name} = (\d+);", text).group(1))
            for name in ("kVec", "kBlockThreads", "kMaxLanes", "kWorkspaceAlign")}


C = read_layout()
VEC, BLOCK, MAX_LANES, ALIGN = C["kVec"], C["kBlockThreads"], C["kMaxLanes"], C["kWorkspaceAlign"]


def first_tree_stride(lanes):
    s = 1
    while s < lanes:
        s *= 2
    return s // 2


def kernel_point(k, kh, kw, rc):
    centre = (kw // 2) * kh + kh // 2
    flat = k + ((rc & (k >= centre)).long() if torch.is_tensor(k) else int(rc and k >= centre))
    return flat // kh, flat % kh


def _aligned16(ptr, strides, elem):
    return ptr % 16 == 0 and all((s * elem) % 16 == 0 for s in strides[:3])


def vector_width(p, backward):
    """dcnv4_fwd.cu vector_width: 8 when group_channels % 8 == 0 and the rows are 16-byte aligned."""
    elem = 4 if p["dtype"] == "float32" else 2
    if p["group_channels"] % VEC or not _aligned16(p["value"], p["value_strides"], elem):
        return 1
    if not backward:
        return VEC if p["out"] % 16 == 0 else 1
    go = p["grad_output_strides"][3] == 1 and _aligned16(p["grad_output"], p["grad_output_strides"], elem)
    return VEC if go and p["grad_value"] % 16 == 0 else 1


class Geometry:
    """dcnv4_layout.h Geometry."""

    def __init__(self, p, vec):
        self.pixels = p["batch"] * p["out_height"] * p["out_width"]
        self.G, self.D = p["group"], p["group_channels"]
        self.K = p["kernel_h"] * p["kernel_w"] - int(p["remove_center"])
        self.vec, self.chunks = vec, p["group_channels"] // vec
        self.lanes = min(max(self.chunks, 1), MAX_LANES)
        self.units_per_block = BLOCK // self.lanes
        self.dests = p["batch"] * p["height"] * p["width"] * p["group"]
        self.entries = self.pixels * self.G * self.K * 4


def workspace_layout(entries, cub_bytes):
    part = -(-entries * 4 // ALIGN) * ALIGN
    return dict(keys_in=0, keys_out=part, ids_in=2 * part, ids_out=3 * part, weights=4 * part,
                total=5 * part + -(-cub_bytes // ALIGN) * ALIGN)


class _Tensors:
    """The Params' tensors as float64 flat buffers, and writers that count writes per element."""

    def __init__(self, p, backward):
        self.p, T = p, _DTYPES[p["dtype"]]
        N, H, W, Ho, Wo = p["batch"], p["height"], p["width"], p["out_height"], p["out_width"]
        Cc, P = p["group"] * p["group_channels"], p["offset_channels"]
        self.value = _memory(p["value"], T, _extent((N, H, W, Cc), p["value_strides"])).double()
        self.om = _memory(p["offset_mask"], T, _extent((N, Ho, Wo, P), p["offset_mask_strides"])).double()
        if backward:
            self.go = _memory(p["grad_output"], T, _extent((N, Ho, Wo, Cc), p["grad_output_strides"])).double()


def _positions(p, n, ho, wo, k, dx, dy):
    """sample_position (dcnv4_io.cuh): (h, w, inside) per thread."""
    half_w, half_h = p["dilation_w"] * (p["kernel_w"] - 1) // 2, p["dilation_h"] * (p["kernel_h"] - 1) // 2
    i, j = kernel_point(k, p["kernel_h"], p["kernel_w"], p["remove_center"])
    s = p["offset_scale"]
    w = (wo * p["stride_w"] - p["pad_w"] + half_w) + ((i * p["dilation_w"] - half_w) + dx) * s
    h = (ho * p["stride_h"] - p["pad_h"] + half_h) + ((j * p["dilation_h"] - half_h) + dy) * s
    inside = (h > -1) & (w > -1) & (h < p["height"]) & (w < p["width"])
    return h, w, inside


def _pixel(p, q):
    hw = p["out_height"] * p["out_width"]
    return q // hw, (q % hw) // p["out_width"], q % p["out_width"]


def _om_at(t, p, n, ho, wo, g, K, c):
    s = p["offset_mask_strides"]
    return t.om[n * s[0] + ho * s[1] + wo * s[2] + (g * 3 * K + c) * s[3]]


def _corners(h, w):
    """(y, x, weight, d weight/dw, d weight/dh) of the four corners, in kernel order."""
    hf, wf = torch.floor(torch.nan_to_num(h)), torch.floor(torch.nan_to_num(w))
    lh, lw = h - hf, w - wf
    hh, hw = 1 - lh, 1 - lw
    out = []
    for corner in range(4):
        cy, cx = corner // 2, corner % 2
        fy, fx = (lh if cy else hh), (lw if cx else hw)
        out.append((hf.long() + cy, wf.long() + cx, fy * fx, fy if cx else -fy, fx if cy else -fx))
    return out


def model_forward(p, t, vec):
    geo = Geometry(p, vec)
    G, D, K = geo.G, geo.D, geo.K
    tid = torch.arange(geo.pixels * G * geo.chunks)
    chunk, g, q = tid % geo.chunks, (tid // geo.chunks) % G, tid // geo.chunks // G
    n, ho, wo = _pixel(p, q)
    ch = g[:, None] * D + chunk[:, None] * vec + torch.arange(vec)  # (threads, vec) channels
    vs = p["value_strides"]
    acc = torch.zeros(len(tid), vec, dtype=torch.float64)
    for k in range(K):
        dx, dy, m = (_om_at(t, p, n, ho, wo, g, K, c) for c in (2 * k, 2 * k + 1, 2 * K + k))
        h, w, inside = _positions(p, n, ho, wo, k, dx, dy)
        for y, x, cw, _, _ in _corners(h, w):
            ok = inside & (y >= 0) & (y < p["height"]) & (x >= 0) & (x < p["width"])
            idx = (n * vs[0] + y.clamp(0, p["height"] - 1) * vs[1] + x.clamp(0, p["width"] - 1) * vs[2])[:, None] + ch
            acc += torch.where(ok[:, None], (m * cw)[:, None] * t.value[idx], 0.0)
    out = torch.zeros(geo.pixels * G * D, dtype=torch.float64)
    writes = torch.zeros(out.numel(), dtype=torch.long)
    flat = (q[:, None] * G * D + ch).reshape(-1)
    out[flat] = acc.reshape(-1)
    writes.index_add_(0, flat, torch.ones_like(flat))
    return out, writes


def model_backward(p, t, vec, deterministic, workspace):
    geo = Geometry(p, vec)
    G, D, K, lanes = geo.G, geo.D, geo.K, geo.lanes
    P, Cc = p["offset_channels"], G * D
    blocks = -(-geo.pixels * G // geo.units_per_block)
    nthreads = geo.units_per_block * lanes
    block, x_ = torch.arange(blocks).repeat_interleave(nthreads), torch.arange(nthreads).repeat(blocks)
    unit = block * geo.units_per_block + x_ // lanes
    lane, active = x_ % lanes, unit < geo.pixels * G
    q, g = torch.where(active, unit // G, 0), torch.where(active, unit % G, 0)
    n, ho, wo = _pixel(p, q)
    gs, vs = p["grad_output_strides"], p["value_strides"]
    gom = torch.zeros(geo.pixels * P, dtype=torch.float64)
    gom_writes = torch.zeros(gom.numel(), dtype=torch.long)
    gv32 = torch.zeros(geo.dests * D, dtype=torch.float64)
    keys = torch.zeros(geo.entries, dtype=torch.long)
    ids, weights = torch.zeros_like(keys), torch.zeros(geo.entries, dtype=torch.float64)
    entry_writes = torch.zeros(geo.entries, dtype=torch.long)
    lead = active & (lane == 0)
    pad = torch.arange(3 * G * K, P)
    for qq in q[lead & (g == 0)]:  # padding channels
        gom[qq * P + pad] = 0.0
        gom_writes[qq * P + pad] += 1
    for k in range(K):
        dx, dy, m = (_om_at(t, p, n, ho, wo, g, K, c) for c in (2 * k, 2 * k + 1, 2 * K + k))
        h, w, inside = _positions(p, n, ho, wo, k, dx, dy)
        inside &= active
        corners = _corners(h, w)
        sums = torch.zeros(len(unit), 3, dtype=torch.float64)  # gm, gw, gh per thread
        for j in range(-(-geo.chunks // lanes)):  # lane l: chunks l, l + lanes, ...
            c = lane + j * lanes
            live = inside & (c < geo.chunks)
            ch = (g * D + c.clamp(max=geo.chunks - 1) * vec)[:, None] + torch.arange(vec)
            gq = t.go[(n * gs[0] + ho * gs[1] + wo * gs[2])[:, None] + ch]
            for y, x, cw, cdw, cdh in corners:
                ok = live & (y >= 0) & (y < p["height"]) & (x >= 0) & (x < p["width"])
                yc, xc = y.clamp(0, p["height"] - 1), x.clamp(0, p["width"] - 1)
                dot = (gq * t.value[(n * vs[0] + yc * vs[1] + xc * vs[2])[:, None] + ch]).sum(1)
                sums += torch.where(ok[:, None], torch.stack((cw, cdw, cdh), 1) * dot[:, None], 0.0)
                if not deterministic:
                    rows = ((n * p["height"] + yc) * p["width"] + xc) * Cc
                    dst = (rows[:, None] + ch)[ok].reshape(-1)
                    gv32.index_add_(0, dst, ((m * cw)[:, None] * gq)[ok].reshape(-1))
        red = sums.clone()  # the shared-memory tree, per CTA
        s = first_tree_stride(lanes)
        while s > 0:
            rd = (lane < s) & (lane + s < lanes)
            src = torch.arange(len(unit)) + s
            red[rd] += red[src[rd]]
            s //= 2
        base = q * P + g * 3 * K
        for col, val in ((2 * k, m * p["offset_scale"] * red[:, 1]), (2 * k + 1, m * p["offset_scale"] * red[:, 2]),
                         (2 * K + k, red[:, 0])):
            gom[(base + col)[lead]] = val[lead]
            gom_writes.index_add_(0, (base + col)[lead], torch.ones(int(lead.sum()), dtype=torch.long))
        if deterministic:
            for corner, (y, x, cw, _, _) in enumerate(corners):
                ok = inside & (y >= 0) & (y < p["height"]) & (x >= 0) & (x < p["width"])
                e = ((q * G + g) * K + k) * 4 + corner
                key = torch.where(ok, ((n * p["height"] + y) * p["width"] + x) * G + g, geo.dests)
                keys[e[lead]], ids[e[lead]], weights[e[lead]] = key[lead], e[lead], (m * cw)[lead]
                entry_writes.index_add_(0, e[lead], torch.ones(int(lead.sum()), dtype=torch.long))
    if not deterministic:
        return gv32, None, gom, gom_writes, None
    # Through the workspace, as the kernels pass them (uint32 keys and ids, float32 weights).
    lay = workspace_layout(geo.entries, 0)
    E = geo.entries
    _memory(workspace + lay["keys_in"], torch.int32, E).copy_(keys.int())
    _memory(workspace + lay["ids_in"], torch.int32, E).copy_(ids.int())
    _memory(workspace + lay["weights"], torch.float32, E).copy_(weights.float())
    keys = _memory(workspace + lay["keys_in"], torch.int32, E).long()
    ids = _memory(workspace + lay["ids_in"], torch.int32, E).long()
    sorted_keys, order = torch.sort(keys, stable=True)  # cub's radix sort is stable
    sorted_ids = ids[order]
    # Gather: thread (d, chunk) sums its segment [lower_bound(d), lower_bound(d + 1)) in order.
    tid = torch.arange(geo.dests * geo.chunks)
    d, chunk = tid // geo.chunks, tid % geo.chunks
    lo = torch.searchsorted(sorted_keys, d, right=False)
    hi = torch.searchsorted(sorted_keys, d + 1, right=False)
    acc = torch.zeros(len(tid), vec, dtype=torch.float64)
    gd = d % G
    for j in range(int((hi - lo).max()) if len(tid) else 0):
        live = lo + j < hi
        e = sorted_ids[(lo + j).clamp(max=E - 1)]
        sn, sho, swo = _pixel(p, e // (G * K * 4))
        ch = (gd * D + chunk * vec)[:, None] + torch.arange(vec)
        gq = t.go[(sn * gs[0] + sho * gs[1] + swo * gs[2])[:, None] + ch]
        acc += torch.where(live[:, None], weights[e][:, None] * gq, 0.0)
    gv = torch.zeros(geo.dests * D, dtype=torch.float64)
    gv_writes = torch.zeros(gv.numel(), dtype=torch.long)
    flat = (d[:, None] * D + chunk[:, None] * vec + torch.arange(vec)).reshape(-1)
    gv[flat] = acc.reshape(-1)
    gv_writes.index_add_(0, flat, torch.ones_like(flat))
    assert bool((entry_writes == 1).all()), "a sort entry was written other than once"
    return gv, gv_writes, gom, gom_writes, sorted_keys


class FakeExtension:
    """Stands in for cc.kernels.dcnv4_cuda over CPU memory, running the model above. `real` (the
    built extension, when there is one) validates the Params first, as forward()/backward() do."""

    def __init__(self, real=None):
        self.real = real
        self.last_writes = {}
        self.calls = []

    def _check(self, params, backward):
        if self.real is not None:
            self.real.check(params, backward)
            assert self.real.vector_width(params, backward) == vector_width(params, backward)

    def forward(self, params):
        self._check(params, False)
        p = dict(params)
        self.calls.append(("forward", p))
        vec = vector_width(p, False)
        out, writes = model_forward(p, _Tensors(p, False), vec)
        self.last_writes = {"out": writes}
        _memory(p["out"], _DTYPES[p["dtype"]], out.numel()).copy_(out)

    def workspace_bytes(self, params):
        p = dict(params)
        n_value = p["batch"] * p["height"] * p["width"] * p["group"] * p["group_channels"]
        if p["batch"] * p["out_height"] * p["out_width"] * p["group"] * p["group_channels"] == 0:
            return 0
        if not p.get("deterministic", True):
            return 0 if p["dtype"] == "float32" else 4 * n_value
        return workspace_layout(Geometry(p, 1).entries, 0)["total"]

    def backward(self, params):
        self._check(params, True)
        p = dict(params)
        self.calls.append(("backward", p))
        deterministic = p.get("deterministic", True)
        need = self.workspace_bytes(p)
        assert p.get("workspace_bytes", 0) >= need and (need == 0 or p["workspace"]), "workspace too small"
        vec = vector_width(p, True)
        gv, gv_writes, gom, gom_writes, keys = model_backward(p, _Tensors(p, True), vec, deterministic,
                                                              p.get("workspace", 0))
        T = _DTYPES[p["dtype"]]
        self.last_writes = {"grad_offset_mask": gom_writes}
        if gv_writes is not None:
            self.last_writes["grad_value"] = gv_writes
        self.sorted_keys = keys
        _memory(p["grad_value"], T, gv.numel()).copy_(gv)
        _memory(p["grad_offset_mask"], T, gom.numel()).copy_(gom)
