"""The implicit ("hidden") attention of SSM layers, materialised from their scan parameters.

Ali et al. 2024, "The Hidden Attention of Mamba Models": a selective scan (py.ops.selective_scan)

    h_t = exp(δ_t A) h_{t-1} + δ_t B_t u_t,   y_t = C_t·h_t + D u_t      (per channel d, states n)

unrolls to y_t = Σ_{s<=t} α[t, s] u_s + D u_t with, per channel,

    α[t, s] = Σ_n C[n, t] · exp(A[d, n] · Σ_{r=s+1..t} δ_r) · δ_s · B[n, s]     (s <= t, else 0).

The Mamba-2 SSD (py.ops.ssd, causal) is the same with a scalar A per head:
M[t, s] = (C_t·B_s) exp(A_h Σ_{r=s+1..t} dt_r) dt_s; its non-causal (VSSD) form is M[t, s] = (C_t·B_s) w_s,
w_s = -dt_s A_h. PVMamba's state product Cm (Bm^T V') is the quadratic form M = Cm Bm^T over V'.

`capture(model)` records what every SSM mixer hands to those ops through the ops' public observation
hook (py.ops.observe); forward hooks on the mixers say which layer, direction and token grid a call
belongs to. Nothing is patched.
`layer_matrix` then maps each scan direction back to token coordinates (Vim: the reversed branch;
VMamba: the four cross-scan orders of py.ops.cross_scan) and sums them, per output channel. Everything
is computed in float64. The z gate (a per-row scale) and the D skip (the diagonal) are left out of the
maps; `reconstruct` puts them back to check the matrix against the op's output.
"""
import contextlib
import dataclasses
from typing import List, Optional

import torch
import torch.nn.functional as F

from py.ops.cross_scan import cross_scan_reference

F64 = torch.float64
_CHUNK_ELEMS = 1 << 22  # float64 elements per intermediate block (32 MB): bounds memory for large L


# ------------------------------------------------------------------------------------------------
# Materialisation for one sequence (batch element already selected), float64


def _dt(delta, bias, softplus):
    """delta (channels, L) + bias (channels,), then softplus if asked."""
    delta = delta.to(F64)
    if bias is not None:
        delta = delta + bias.to(F64)[:, None]
    return F.softplus(delta) if softplus else delta  # threshold 20 = the ops' convention


def _rows(rows, L):
    return torch.arange(L) if rows is None else torch.as_tensor(rows, dtype=torch.long).reshape(-1)


def selective_scan_matrix(delta, A, B, C, delta_bias=None, delta_softplus=False, rows=None, channels=None):
    """α (len(channels), len(rows), L) of py.ops.selective_scan for one sequence.

    delta (dim, L); A (dim, N); B, C (G, N, L) or (N, L); delta_bias (dim,). Channel d reads group
    d // (dim // G), as in the op. rows/channels: index subsets (default: all).
    """
    dim, L = delta.shape
    dt = _dt(delta, delta_bias, delta_softplus)                      # (dim, L)
    S = dt.cumsum(-1)                                                # Σ_{r<=t} δ_r
    A = A.to(F64)
    B = (B if B.dim() == 3 else B.unsqueeze(0)).to(F64)
    C = (C if C.dim() == 3 else C.unsqueeze(0)).to(F64)
    rep = dim // B.shape[0]
    rows = _rows(rows, L)
    chans = torch.arange(dim) if channels is None else torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    causal = torch.arange(L)[None, :] <= rows[:, None]               # (R, L)
    N = A.shape[1]
    out = torch.empty(len(chans), len(rows), L, dtype=F64)
    step = max(1, _CHUNK_ELEMS // max(1, N * len(rows) * L))
    for i in range(0, len(chans), step):
        d = chans[i:i + step]
        g = d // rep
        # Σ_{r=s+1..t} δ_r = S_t - S_s; zeroed above the diagonal before exp so nothing overflows.
        seg = (S[d][:, rows, None] - S[d][:, None, :]).masked_fill(~causal, 0.0)      # (c, R, L)
        decay = torch.exp(A[d][:, :, None, None] * seg[:, None])                      # (c, N, R, L)
        cb = C[g][:, :, rows, None] * B[g][:, :, None, :]                              # (c, N, R, L)
        out[i:i + step] = (decay * cb).sum(1) * dt[d][:, None, :] * causal
    return out


def ssd_matrix(dt, A, B, C, dt_bias=None, dt_softplus=False, causal=True, rows=None, heads=None):
    """M (len(heads), len(rows), L) of py.ops.ssd for one sequence.

    dt (L, h); A (h,); B, C (L, g, n); head i reads group i // (h // g). causal=False gives the VSSD
    form M[t, s] = (C_t·B_s)(-dt_s A_i) over all s.
    """
    L, h = dt.shape
    d = _dt(dt.t(), dt_bias, dt_softplus)                            # (h, L)
    A = A.to(F64)
    B, C = B.to(F64), C.to(F64)
    per_group = h // B.shape[1]
    rows = _rows(rows, L)
    heads = torch.arange(h) if heads is None else torch.as_tensor(heads, dtype=torch.long).reshape(-1)
    g = heads // per_group
    cb = torch.einsum("rgn,lgn->grl", C[rows][:, g], B[:, g])         # (hs, R, L)
    if not causal:
        return cb * (-d[heads] * A[heads, None])[:, None, :]
    S = d[heads].cumsum(-1)
    mask = torch.arange(L)[None, :] <= rows[:, None]
    seg = (S[:, rows, None] - S[:, None, :]).masked_fill(~mask, 0.0)
    return cb * torch.exp(A[heads, None, None] * seg) * d[heads][:, None, :] * mask


def quadratic_matrix(Bm, Cm, rows=None):
    """M = Cm Bm^T (len(rows), L) of PVMamba's non-causal state product, for one sequence."""
    rows = _rows(rows, Bm.shape[0])
    return Cm.to(F64)[rows] @ Bm.to(F64).t()


# ------------------------------------------------------------------------------------------------
# Capture


@dataclasses.dataclass
class Record:
    """One op call: its kind ("selective_scan" | "ssd" | "quadratic"), arguments and output."""
    kind: str
    args: dict
    y: torch.Tensor
    direction: Optional[str] = None  # Vim: "forward" | "backward"


@dataclasses.dataclass
class Layer:
    """The SSM calls of one mixer module during one forward."""
    name: str
    family: str                      # "vim" | "ss2d" | "ss2d_ssd" | "pvmamba"
    module: torch.nn.Module
    grid: tuple = None               # token grid (H, W) of the layer's patch tokens
    cls_pos: Optional[int] = None    # Vim: sequence index of the class token
    records: List[Record] = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self):
        return self.grid[0] * self.grid[1] + (self.cls_pos is not None)


def _detach(v):
    return v.detach().clone() if torch.is_tensor(v) else v


_SS_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")
_SSD_ARGS = ("x", "dt", "A", "B", "C", "chunk_size", "D", "z", "dt_bias", "dt_softplus", "causal",
             "initial_states")


@contextlib.contextmanager
def capture(model):
    """Records the SSM calls of every mixer in `model` while the context is open; yields the list of
    `Layer`s (filled in forward order; call the model inside the context).

    Nothing is patched: the op calls come from py.ops.observe, and which layer, direction and token
    grid a call belongs to from forward hooks (PyTorch's public module hooks) on the mixers and their
    submodules: a Vim mixer's x_proj / x_proj_b run right before that direction's scan, SS2D's input
    gives its grid, PVMamba's StateProduct submodule receives the quadratic form's Bm and Cm."""
    from py.models.pvmamba import PVMambaMixer
    from py.models.vim import BiMamba, VisionMamba
    from py.models.vmamba import SS2D, SS2DMamba2
    from py.ops import observe

    layers, active = [], []  # active: stack of (Layer, direction) or None (= do not record)
    handles = []
    vim_meta = {}
    for m in model.modules():
        if isinstance(m, VisionMamba):
            for blk in m.layers:
                vim_meta[id(blk.mixer)] = (tuple(m.grid_size), m.cls_pos)

    def layer_for(name, m, family):
        for layer in layers:
            if layer.module is m:
                return layer
        layer = Layer(name, family, m)
        layers.append(layer)
        return layer

    def enter(entry):
        def pre_hook(module, args):
            active.append(entry(module, args) if callable(entry) else entry)
        return pre_hook

    def leave(module, args, output):
        active.pop()

    def hook(module, pre, post=leave):
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    for name, m in model.named_modules():
        if isinstance(m, BiMamba):
            layer = layer_for(name, m, "vim")
            layer.grid, layer.cls_pos = vim_meta.get(id(m), (None, None))
            hook(m, enter((layer, None)))
            # x_proj (forward branch) / x_proj_b (backward branch) run just before their scan.
            for proj, direction in ((m.x_proj, "forward"), (m.x_proj_b, "backward")):
                handles.append(proj.register_forward_pre_hook(
                    lambda module, args, layer=layer, direction=direction: active.__setitem__(-1, (layer, direction))))
        elif isinstance(m, (SS2D, SS2DMamba2)):
            family = "ss2d_ssd" if isinstance(m, SS2DMamba2) else "ss2d"

            def ss2d_entry(module, args, name=name, family=family):
                layer = layer_for(name, module, family)
                layer.grid = tuple(args[0].shape[-2:])  # SS2D is channel-first and keeps H, W
                return (layer, None)
            hook(m, enter(ss2d_entry))
        elif isinstance(m, PVMambaMixer):
            def mixer_entry(module, args, name=name):
                layer_for(name, module, "pvmamba").grid = (int(args[1]), int(args[2]))
                return None  # an inner py.ops.ssd call (state_backend="ssd") is the same product

            def product_done(module, args, output, name=name, mixer=m):
                v, Bm, Cm = args
                layer_for(name, mixer, "pvmamba").records.append(
                    Record("quadratic", dict(v=_detach(v), Bm=_detach(Bm), Cm=_detach(Cm)), output.detach().clone()))
            hook(m, enter(mixer_entry))
            handles.append(m.product.register_forward_hook(product_done))

    names = {"selective_scan": _SS_ARGS, "ssd": _SSD_ARGS}

    def on_call(call):
        if call.op not in names or not active or active[-1] is None:
            return
        layer, direction = active[-1]
        out = call.output[0] if isinstance(call.output, tuple) else call.output
        layer.records.append(Record(call.op, {k: _detach(v) for k, v in call.args.items() if k in names[call.op]},
                                    out.detach().clone(), direction))

    try:
        with observe(on_call):
            yield layers
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# Checking a record against the op's output


def record_matrix(rec, b=0, rows=None, channels=None):
    """The record's matrix for batch element b in its own sequence order: (channels, R, L); for ssd the
    "channels" are heads, for the quadratic form there is one."""
    a = rec.args
    if rec.kind == "selective_scan":
        B, C = a["B"][b], a["C"][b]
        return selective_scan_matrix(a["delta"][b], a["A"], B, C, a.get("delta_bias"),
                                     a.get("delta_softplus", False), rows, channels)
    if rec.kind == "ssd":
        return ssd_matrix(a["dt"][b], a["A"], a["B"][b], a["C"][b], a.get("dt_bias"), a.get("dt_softplus", False),
                          a.get("causal", True), rows, channels)
    return quadratic_matrix(a["Bm"][b], a["Cm"][b], rows)[None]


def reconstruct(rec, b=0, rows=None):
    """The op's output at `rows` recomputed from the matrix: (α u + D u) · silu(z) where present, in the
    op's layout ((dim, R) for selective_scan, (R, h, p) for ssd, (heads, R, P) for the quadratic form)."""
    a = rec.args
    if rec.kind == "selective_scan":
        u = a["u"][b].to(F64)
        r = _rows(rows, u.shape[-1])
        y = torch.einsum("drl,dl->dr", record_matrix(rec, b, r), u)
        if a.get("D") is not None:
            y = y + a["D"].to(F64)[:, None] * u[:, r]
        if a.get("z") is not None:
            y = y * F.silu(a["z"][b].to(F64)[:, r])
        return y
    if rec.kind == "ssd":
        if a.get("initial_states") is not None:
            raise ValueError("ssd records with initial_states are not materialised")
        x = a["x"][b].to(F64)                                        # (L, h, p)
        r = _rows(rows, x.shape[0])
        y = torch.einsum("hrl,lhp->rhp", record_matrix(rec, b, r), x)
        D = a.get("D")
        if D is not None:
            D = D.to(F64)
            y = y + (D if D.dim() == 2 else D[:, None]) * x[r]
        if a.get("z") is not None:
            y = y * F.silu(a["z"][b].to(F64)[r])
        return y
    v = a["v"][b].to(F64)                                            # (heads, L, P)
    r = _rows(rows, v.shape[1])
    return record_matrix(rec, b, r)[0] @ v


def record_output(rec, b=0, rows=None):
    """The op's own output at `rows`, in the layout of `reconstruct`."""
    y = rec.y[b].to(F64)
    if rec.kind == "selective_scan":
        return y[:, _rows(rows, y.shape[-1])]
    if rec.kind == "ssd":
        return y[_rows(rows, y.shape[0])]
    return y[:, _rows(rows, y.shape[1])]


# ------------------------------------------------------------------------------------------------
# Layer view: directions mapped back to token coordinates


@dataclasses.dataclass
class Path:
    """One scan direction of a layer: its record, `inv[token] = sequence position`, the record channels
    feeding each output channel, and the weight of the direction in the layer's output."""
    record: Record
    inv: torch.Tensor
    channels: torch.Tensor
    weight: float = 1.0


def cross_scan_inverse(H, W):
    """inv[k][p] = position of row-major token p in cross-scan direction k, read off py.ops.cross_scan."""
    order = cross_scan_reference(torch.arange(H * W, dtype=F64).view(1, 1, H, W))[0, :, 0].long()  # (4, L)
    return torch.argsort(order, dim=-1)


def layer_paths(layer):
    """The directions of a captured layer (see `Path`); raises ValueError for an unsupported layer."""
    m, recs = layer.module, layer.records
    if not recs:
        raise ValueError(f"layer {layer.name} recorded no SSM call (was the model run inside capture()?)")
    if layer.family == "vim":
        L = recs[0].args["u"].shape[-1]
        w = 0.5 if m.if_divide_out else 1.0
        ar = torch.arange(L)
        chans = torch.arange(m.d_inner)
        return [Path(r, ar if r.direction == "forward" else L - 1 - ar, chans, w) for r in recs]
    if layer.family in ("ss2d", "ss2d_ssd"):
        (rec,) = recs
        inv = cross_scan_inverse(*layer.grid)
        per_dir = m.d_inner if layer.family == "ss2d" else m.dt_rank  # channels, or heads, per direction
        return [Path(rec, inv[k], k * per_dir + torch.arange(per_dir)) for k in range(4)]
    if layer.family == "pvmamba":
        (rec,) = recs
        return [Path(rec, torch.arange(rec.args["Bm"].shape[1]), torch.zeros(1, dtype=torch.long))]
    raise ValueError(f"unsupported layer family {layer.family!r}")


def layer_matrix(layer, rows=None, channel=None, b=0):
    """The layer's attention in token coordinates (rows of the full T x T matrix, T = num_tokens; Vim's
    class token at layer.cls_pos), all directions summed per output channel.

    channel=None: mean over output channels of |α| (SSD: over heads, whose channels share α); an int:
    that output channel's signed α. Returns (R, T) float64.
    """
    paths = layer_paths(layer)
    T = paths[0].inv.numel()
    rows = _rows(rows, T)
    n_out = paths[0].channels.numel()
    chans = torch.arange(n_out) if channel is None else torch.tensor([channel])
    if channel is not None and not 0 <= channel < n_out:
        raise ValueError(f"channel {channel} out of range [0, {n_out}) for layer {layer.name}")
    total = torch.zeros(len(rows), T, dtype=F64)
    step = max(1, _CHUNK_ELEMS // max(1, len(rows) * T * 4))
    for i in range(0, len(chans), step):
        c = chans[i:i + step]
        acc = 0
        for p in paths:  # record order -> token order on both axes
            acc = acc + p.weight * record_matrix(p.record, b, p.inv[rows], p.channels[c])[:, :, p.inv]
        total += acc.abs().sum(0) if channel is None else acc[0]
    return total / len(chans) if channel is None else total


def token_grid(layer, values):
    """Splits a (T,) vector over a layer's tokens into its (H, W) patch map and the class-token value."""
    if layer.cls_pos is None:
        return values.reshape(layer.grid), None
    cls = values[layer.cls_pos]
    patches = torch.cat([values[:layer.cls_pos], values[layer.cls_pos + 1:]])
    return patches.reshape(layer.grid), cls


def token_index(layer, row, col):
    """Sequence index of patch (row, col) of the layer's grid (skipping Vim's class token)."""
    H, W = layer.grid
    if not (0 <= row < H and 0 <= col < W):
        raise ValueError(f"token ({row}, {col}) is outside layer {layer.name}'s {H}x{W} grid")
    p = row * W + col
    return p + (layer.cls_pos is not None and p >= layer.cls_pos)
