"""Seeded fuzz of every op against its float64 reference, forward and backward.

Each test item is one seeded random case: shapes (odd and prime sizes, L across the kernels' time
blocks, size-1 and size-0 dims, groups), layouts of the inputs and of the incoming gradients
(strided, permuted, expanded where the op broadcasts), dtypes, option flags and value ranges (strong
decay, huge steps). A failure prints the case, which reproduces alone, e.g.
    python -m pytest "py/ops/tests/test_fuzz_ops.py::test_fuzz_ssd[17]"
Bazel runs one target per op: //py/ops:test_fuzz_selective_scan, _ssd, _dcnv4, _cross_scan.
"""
import importlib
import random

import pytest
import torch

from py.ops import _native
from py.ops.cross_scan import cross_merge, cross_merge_reference, cross_scan, cross_scan_reference
from py.ops.dcnv4 import dcnv4, dcnv4_reference

ss = importlib.import_module("py.ops.selective_scan")  # the modules (py.ops exports same-named functions)
S = importlib.import_module("py.ops.ssd")

F64, F32 = torch.float64, torch.float32
CASES = 160  # seeds per op: sized to the ~40 s budget of a Bazel target on a 2-core machine
# max |got - want| <= TOL * max |want|, per output and gradient
TOL = {F64: 1e-10, F32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


# ---------------------------------------------------------------------------------------------
# Machinery
# ---------------------------------------------------------------------------------------------
def relayout(t, kind, r):
    """t's values in another memory layout (differentiably): "contig"; "strided" (every other
    element along a random dim, at a storage offset); "permuted" (dims stored in a random order)."""
    if kind == "contig" or t.dim() == 0:
        return t
    if kind == "strided":
        d = r.randrange(t.dim())
        pairs = torch.stack([torch.zeros_like(t), t], dim=d + 1).flatten(d, d + 1)
        return pairs[(slice(None),) * d + (slice(1, None, 2),)]
    perm = list(range(t.dim()))
    r.shuffle(perm)
    return t.permute(perm).contiguous().permute([perm.index(i) for i in range(t.dim())])


class Case:
    """One random case: parameters (`p`, printed on failure), float64 input values rounded through the
    case dtype, and how each input reaches the op (expanded from size-1 dims, then relaid out)."""

    def __init__(self, op, seed, offset):
        self.r = random.Random(offset + seed)
        self.gen = torch.Generator().manual_seed(offset + seed)
        self.p = dict(seed=seed)
        self.p["repro"] = f'python -m pytest "py/ops/tests/test_fuzz_ops.py::test_fuzz_{op}[{seed}]"'
        self.values, self.shapes, self.layouts = {}, {}, {}

    def pick(self, name, options):
        self.p[name] = self.r.choice(options)
        return self.p[name]

    def zero_one(self, names):
        """Every 6th case sets one of these sizes to 0 (besides the zeros the random picks give)."""
        if self.p["seed"] % 6 == 5:
            self.p[self.r.choice(names)] = 0
        return [self.p[k] for k in names]

    def randn(self, shape, scale=1.0):
        return torch.randn(shape, generator=self.gen, dtype=F64) * scale

    def rand(self, shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=self.gen, dtype=F64)

    def add(self, name, shape, make, expand=()):
        """Input `name` of `shape` with values make(stored shape); dims in `expand` may be stored with
        size 1 and expanded (stride 0), otherwise the input gets a random layout."""
        stored = list(shape)
        # (16-bit inputs are not expanded: autograd would sum their expanded gradient in 16 bits.)
        if self.p["dtype"] in (torch.float16, torch.bfloat16):
            expand = ()
        expanded = [d for d in expand if d < len(shape) and shape[d] > 1 and self.r.random() < 0.2]
        for d in expanded:
            stored[d] = 1
        layouts = ["contig", "contig", "strided", "permuted"]
        layout = f"expanded{expanded}" if expanded else self.r.choice(layouts)
        self.values[name] = make(tuple(stored)).to(self.p["dtype"]).to(F64)
        self.shapes[name], self.layouts[name] = tuple(shape), layout
        self.p.setdefault("layouts", {})[name] = layout

    def leaves(self, dtype):
        return {k: v.to(dtype).requires_grad_() for k, v in self.values.items()}

    def args(self, leaves, plain=False):
        """Op arguments from `leaves`: expanded, and (unless plain) in their case layout."""
        out = {}
        for k, v in leaves.items():
            t = v.expand(self.shapes[k])
            if not plain and not self.layouts[k].startswith("expanded"):
                t = relayout(t, self.layouts[k], random.Random(f"{self.p['seed']}-{k}"))
            out[k] = t
        return out

    def cotangents(self, outs, differentiable):
        """Incoming gradients for the outputs (None where not differentiable), rounded through the case
        dtype, each with a layout: contig, strided, permuted or one value broadcast (like sum())."""
        gys, kinds = [], []
        for o, diff in zip(outs, differentiable):
            kind = self.r.choice(["contig", "contig", "strided", "permuted", "broadcast"])
            g = None
            if diff:
                g = self.randn(()).expand(o.shape) if kind == "broadcast" else self.randn(o.shape)
            gys.append(None if g is None else g.to(self.p["dtype"]).to(F64))
            kinds.append(kind if diff else None)
        self.p["grad_layouts"] = kinds
        return gys

    def run(self, fn, dtype, gys, plain=False, tested=True):
        """fn's outputs and the gradients of their <out, gy> w.r.t. every input (None if unused);
        the tested op gets the cotangents in their layouts, the oracle plain."""
        leaves = self.leaves(dtype)
        outs = fn(**self.args(leaves, plain=plain))
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        used, gouts = [], []
        for i, (o, g, kind) in enumerate(zip(outs, gys, self.p["grad_layouts"])):
            if g is None or not o.requires_grad:
                continue
            if kind == "broadcast":  # one value with stride 0 everywhere
                g = torch.full((), g.flatten()[0].item() if g.numel() else 0.0, dtype=o.dtype).expand(o.shape)
            else:
                g = g.to(o.dtype)
                if tested:
                    g = relayout(g, kind, random.Random(f"{self.p['seed']}-g{i}"))
            used.append(o)
            gouts.append(g)
        grads = [None] * len(leaves)
        if used and leaves:
            grads = torch.autograd.grad(used, list(leaves.values()), gouts, allow_unused=True)
        return [o.detach() for o in outs], dict(zip(leaves, grads))

    def check(self, got, want, tol, out_names):
        """Every output and gradient of `got` against `want` (an unused input's gradient must be 0)."""
        (g_outs, g_grads), (w_outs, w_grads) = got, want
        for name, g, w in zip(out_names, g_outs, w_outs):
            self.compare(f"output {name}", g, w, tol)
        for k, w in w_grads.items():
            w = torch.zeros(self.values[k].shape) if w is None else w
            self.compare(f"gradient of {k}", g_grads[k], w, tol)

    def compare(self, what, got, want, tol):
        where = f"{what}, case {self.p}"
        assert got is not None, f"{where}: no result"
        assert got.shape == want.shape, f"{where}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert got.dtype == self.p["dtype"], f"{where}: dtype {got.dtype}"
        if want.numel() == 0:
            return
        got, want = got.to(F64), want.to(F64)
        assert torch.isfinite(got).all(), f"{where}: non-finite result"
        scale = want.abs().max().item()
        err = (got - want).abs().max().item()
        assert err <= tol * scale, f"{where}: max error {err:.3e} > {tol:.0e} * max |want| = {scale:.3e}"


def huge_steps(case, t):
    """A few entries of t (in place) set to 10^5..10^30: steps far beyond exp's range."""
    flat = t.view(-1)
    for _ in range(3 if flat.numel() else 0):
        flat[case.r.randrange(flat.numel())] = 10.0 ** case.r.uniform(5, 30)
    return t


# ---------------------------------------------------------------------------------------------
# selective_scan
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(CASES))
def test_fuzz_selective_scan(seed):
    c = Case("selective_scan", seed, 1000)
    groups = c.pick("groups", [1, 1, 2, 3])
    c.p["dim"] = groups * c.r.choice([0] + [1, 2, 3, 5, 8, 13] * 4)
    N = c.pick("N", [1, 1, 1, 2, 3, 4, 5, 8, 16, 17])
    chunk = _native.require("selective_scan_cpu").chunk_len(N)  # the kernel's time block
    c.pick("L", [0] + [1, 2, 3, 7, 13, 31, 64, 97] * 2 + [chunk - 1, chunk + 1, chunk + 37] * 2)
    c.pick("batch", [0] + [1, 2, 3] * 5)
    batch, dim, L = c.zero_one(["batch", "dim", "L"])
    dtype = c.pick("dtype", [F64] * 4 + [F32] * 4 + [torch.float16, torch.bfloat16])
    backend = c.pick("backend", ["cpu", "cpu", "auto"])
    opts = {k: c.r.random() < prob for k, prob in (("D", 0.6), ("z", 0.4), ("bias", 0.6), ("softplus", 0.7),
                                                     ("last", 0.3), ("bc3", 0.3 * (groups == 1)))}
    c.p.update(opts)
    huge = ["huge delta"] * 2 if dtype in (F64, F32) else []  # beyond float16's range
    values = c.pick("values", ["normal"] * 5 + ["strong decay"] * 2 + huge)

    # Without softplus, delta and delta_bias >= 0: no exponential growth (a float32 overflow).
    sign = (lambda t: t) if opts["softplus"] else torch.abs

    def delta(shape):
        d = sign(c.randn(shape, 0.5))
        return huge_steps(c, d) if values == "huge delta" else d

    bshape = (batch, N, L) if opts["bc3"] else (batch, groups, N, L)
    c.add("u", (batch, dim, L), c.randn, expand=(0,))
    c.add("delta", (batch, dim, L), delta, expand=(0,))
    a_scale = 20.0 if values == "strong decay" else 1.0
    c.add("A", (dim, N), lambda s: -c.rand(s, 0.2, 1.2) * a_scale, expand=(0, 1))
    c.add("B", bshape, c.randn, expand=(0, 1, len(bshape) - 1))
    c.add("C", bshape, c.randn, expand=(0, 1, len(bshape) - 1))
    if opts["D"]:
        c.add("D", (dim,), c.randn, expand=(0,))
    if opts["z"]:
        c.add("z", (batch, dim, L), c.randn, expand=(0, 1))
    if opts["bias"]:
        c.add("delta_bias", (dim,), lambda s: sign(c.randn(s, 0.3)), expand=(0,))

    kw = dict(delta_softplus=opts["softplus"], return_last_state=opts["last"])
    fn = lambda **a: ss.selective_scan(**a, **kw, backend=backend)
    shapes = [(batch, dim, L), (batch, dim, N)][:1 + opts["last"]]
    gys = c.cotangents([torch.empty(s) for s in shapes], [True, False])  # last_state has no gradient
    got = c.run(fn, dtype, gys)
    want = c.run(lambda **a: ss.selective_scan_reference(**a, **kw), F64, gys, plain=True, tested=False)
    c.check(got, want, TOL[dtype], ["y", "last_state"])


# ---------------------------------------------------------------------------------------------
# ssd (causal and non-causal)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(CASES))
def test_fuzz_ssd(seed):
    c = Case("ssd", seed, 2000)
    g = c.pick("groups", [1, 1, 2, 3])
    c.p["heads"] = g * c.r.choice([0] + [1, 2, 3] * 6)
    c.pick("headdim", [0] + [1, 2, 3, 5, 8, 16] * 3)
    n = c.pick("dstate", [1, 2, 3, 4, 7, 16])
    c.pick("L", [0] + [1, 2, 5, 17, 37, 64, 65, 100, 131] * 2)
    c.pick("batch", [0] + [1, 2, 3] * 5)
    b, L, h, p = c.zero_one(["batch", "L", "heads", "headdim"])
    dtype = c.pick("dtype", [F64, F32])
    causal = c.pick("causal", [True, True, False])
    chunk = c.pick("chunk_size", [1, 2, 3, 7, 16, 64, 100])
    backend = c.pick("backend", ["cpu"] * 4 + ["auto", "reference"])
    D_shape = c.pick("D", [None, "h", "hp"])
    opts = {k: c.r.random() < prob for k, prob in (("z", 0.4), ("bias", 0.6), ("softplus", 0.7),
                                                     ("init", 0.5 * causal), ("final", 0.6))}
    c.p.update(opts)
    values = c.pick("values", ["normal"] * 5 + ["strong decay"] * 2 + ["huge dt"] * 2)

    # Without softplus, dt and dt_bias >= 0: no exponential growth (a float32 overflow).
    sign = (lambda t: t) if opts["softplus"] else torch.abs

    def dt(shape):
        d = sign(c.randn(shape, 0.5))
        return huge_steps(c, d) if values == "huge dt" else d

    c.add("x", (b, L, h, p), c.randn, expand=(0,))
    c.add("dt", (b, L, h), dt, expand=(0,))
    c.add("A", (h,), lambda s: -c.rand(s, 0.0, 60.0 if values == "strong decay" else 3.0), expand=(0,))
    c.add("B", (b, L, g, n), c.randn, expand=(0, 1, 2))
    c.add("C", (b, L, g, n), c.randn, expand=(0, 1, 2))
    if D_shape:
        c.add("D", (h,) if D_shape == "h" else (h, p), c.randn, expand=(0, 1))
    if opts["z"]:
        c.add("z", (b, L, h, p), c.randn, expand=(0, 2))
    if opts["bias"]:
        c.add("dt_bias", (h,), lambda s: sign(c.randn(s, 0.5)), expand=(0,))
    if opts["init"]:
        c.add("initial_states", (b, h, p, n), c.randn, expand=(0, 3))

    kw = dict(dt_softplus=opts["softplus"], causal=causal, return_final_states=opts["final"])
    fn = lambda x, dt, A, B, C, **o: S.ssd(x, dt, A, B, C, chunk, **o, **kw, backend=backend)
    oracle = lambda x, dt, A, B, C, **o: S.ssd_reference_sequential(x, dt, A, B, C, 1, **o, **kw)
    shapes = [(b, L, h, p), (b, h, p, n)][:1 + opts["final"]]
    gys = c.cotangents([torch.empty(s) for s in shapes], [True, True])
    got = c.run(fn, dtype, gys)
    want = c.run(oracle, F64, gys, plain=True, tested=False)
    c.check(got, want, TOL[dtype], ["y", "final_states"])


# ---------------------------------------------------------------------------------------------
# dcnv4
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(CASES))
def test_fuzz_dcnv4(seed):
    c = Case("dcnv4", seed, 3000)
    kh, kw = c.pick("kernel_h", [1, 2, 3, 3, 4, 5]), c.pick("kernel_w", [1, 2, 3, 3, 4, 5])
    sh, sw = c.pick("stride_h", [1, 1, 2, 3]), c.pick("stride_w", [1, 1, 2, 3])
    dh, dw = c.pick("dilation_h", [1, 1, 2, 3]), c.pick("dilation_w", [1, 1, 2, 3])
    ph, pw = c.pick("pad_h", [0, 1, 1, 2, 3]), c.pick("pad_w", [0, 1, 1, 2, 3])
    H = c.p["H"] = max(c.r.choice([1, 2, 3, 5, 7, 9]), dh * (kh - 1) + 1 - 2 * ph)  # >= 1 output row
    W = c.p["W"] = max(c.r.choice([1, 2, 3, 5, 7, 9]), dw * (kw - 1) + 1 - 2 * pw)
    rc = c.p["remove_center"] = kh % 2 == 1 and kw % 2 == 1 and kh * kw > 1 and c.r.random() < 0.3
    c.pick("group", [0] + [1, 2, 3] * 5), c.pick("group_channels", [0] + [1, 2, 3, 4, 7, 16] * 3)
    c.pick("N", [0] + [1, 2, 3] * 5)
    N, G, D = c.zero_one(["N", "group", "group_channels"])
    dtype = c.pick("dtype", [F64, F32])
    # float32 samples at exact positions away from pixel edges (offsets k/64 + 1/128, power-of-2
    # scales), where float32 and float64 positions agree: a floor() that flips between the two would
    # move the offset gradient across the bilinear kink, an O(1) change that is not a kernel error.
    scale = c.pick("offset_scale", [1.0, 0.5, 2.0] if dtype == F32 else [1.0, 0.5, 1.7, -0.8])
    std = c.pick("offset_std", [0.5, 1.5, 3.0])
    backend = c.pick("backend", ["cpu", "cpu", "auto"])
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    K = kh * kw - int(rc)
    P = -(-3 * G * K // 8) * 8 + c.pick("extra_channels", [0, 0, 8])

    def offset_mask(shape):
        om = c.randn(shape)
        off = om[..., :3 * G * K].unflatten(-1, (G, 3 * K))[..., :2 * K]
        off.mul_(std)
        if dtype == F32:
            off.copy_(torch.round(off * 64) / 64 + 1 / 128)
        return om

    c.add("value", (N, H, W, G * D), c.randn, expand=(0, 1, 2))
    c.add("offset_mask", (N, Ho, Wo, P), offset_mask, expand=(0,))
    conv = (kh, kw, sh, sw, ph, pw, dh, dw, G, D, scale, rc)
    gys = c.cotangents([torch.empty(N, Ho, Wo, G * D)], [True])
    got = c.run(lambda value, offset_mask: dcnv4(value, offset_mask, *conv, backend=backend), dtype, gys)
    want = c.run(lambda value, offset_mask: dcnv4_reference(value, offset_mask, *conv), F64, gys,
                 plain=True, tested=False)
    c.check(got, want, TOL[dtype], ["out"])


# ---------------------------------------------------------------------------------------------
# cross_scan / cross_merge
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(CASES))
def test_fuzz_cross_scan(seed):
    c = Case("cross_scan", seed, 4000)
    c.pick("B", [0] + [1, 2, 3] * 4), c.pick("C", [0] + [1, 2, 3, 5, 8] * 3)
    c.pick("H", [0] + [1, 2, 3, 5, 7, 9, 16] * 3), c.pick("W", [0] + [1, 2, 3, 5, 7, 9, 16] * 3)
    B, C, H, W = c.zero_one(["B", "C", "H", "W"])
    dtype = c.pick("dtype", [F64, F32])
    backend = c.pick("backend", ["cpu", "cpu", "auto"])
    c.add("x", (B, C, H, W), c.randn, expand=(0, 1, 2, 3))
    c.add("y", (B, 4, C, H, W), c.randn, expand=(0, 2, 3, 4))
    gys = c.cotangents([torch.empty(B, 4, C, H * W), torch.empty(B, C, H * W)], [True, True])
    got = c.run(lambda x, y: (cross_scan(x, backend=backend), cross_merge(y, backend=backend)), dtype, gys)
    want = c.run(lambda x, y: (cross_scan_reference(x), cross_merge_reference(y)), F64, gys, plain=True,
                 tested=False)
    # The scan copies; the merge adds 4 terms, possibly in another order than the reference.
    c.check(got, want, 1e-6 if dtype == F32 else 1e-14, ["scan", "merge"])
