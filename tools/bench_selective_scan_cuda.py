"""CUDA rows of tools/bench_ops.py for the selective scan (`--device=cuda`).

Per shape, forward and forward+backward of:
  * the CUDA kernels (`selective_scan_cross2d` for VMamba's fused cross-scan, else `selective_scan`);
  * mambapy's parallel scan (pure PyTorch; the anchor of the speed ratios);
  * the sequential reference (`selective_scan_reference`, timed at full batch: on a GPU it is bound
    by kernel launches, not by the batch);
  * torch.compile of the reference, per step: its discretisation and its loop body compiled, the
    loop over L left in Python (compiling the unrolled loop of 3136 steps does not finish in a GPU
    check's budget);
  * a device-to-device copy of the op's compulsory bytes (each input read once, each output written
    once): every row reports its achieved GB/s (those bytes over its time) and its percentage of the
    copy's rate on the same bytes.
A failing implementation gives a row that says why; the others still run.
"""
import functools
import json

import torch
import torch.nn.functional as F

from py.ops import _cuda_dispatch, selective_scan_cuda
from py.ops.cross_scan import cross_merge_reference, cross_scan_reference
from py.ops.selective_scan import selective_scan, selective_scan_reference

ANCHOR = "mambapy pscan"


class Problem:
    """Float32 inputs of one shape; hw = (H, W) makes it VMamba's fused cross-2D problem (groups = 4
    traversals, u = the map x of Di = dim_per_group channels)."""

    def __init__(self, dev, batch, groups, dim_per_group, L, N, hw=None):
        g = torch.Generator(device="cpu").manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g).to(dev)
        self.hw, self.batch, self.groups, self.dim, self.L = hw, batch, groups, groups * dim_per_group, L
        self.u = mk(batch, dim_per_group, *hw) if hw else mk(batch, self.dim, L)
        self.delta = mk(batch, self.dim, L) * 0.5
        self.A = -torch.rand(self.dim, N, generator=g).add(0.5).to(dev)
        self.B, self.C = mk(batch, groups, N, L), mk(batch, groups, N, L)
        self.D, self.bias = mk(self.dim), mk(self.dim) * 0.1
        self.leaves = [self.u, self.delta, self.A, self.B, self.C, self.D, self.bias]
        for t in self.leaves:
            t.requires_grad_(True)
        nb = lambda *ts: sum(t.numel() * t.element_size() for t in ts)
        u, d, B, C = self.u, self.delta, self.B, self.C
        self.bytes_fwd = nb(u, d, B, C, self.A, self.D, self.bias) + nb(u)  # + y (the size of u)
        self.bytes_fb = self.bytes_fwd + nb(u, d, B, C, u) + nb(u, d, B, C)  # + read inputs, dy; write grads

    def sequences(self):
        """u as (batch, dim, L): the four traversals of the map in cross-2D."""
        return cross_scan_reference(self.u).reshape(self.batch, self.dim, self.L) if self.hw else self.u

    def merge(self, y):
        if not self.hw:
            return y
        return cross_merge_reference(y.reshape(self.batch, 4, self.dim // 4, *self.hw)).reshape(self.u.shape)


def kernel(p):
    if p.hw:
        return lambda: selective_scan_cuda.selective_scan_cross2d(p.u, p.delta, p.A, p.B, p.C, p.D,
                                                                  delta_bias=p.bias, delta_softplus=True,
                                                                  backend="cuda")
    return lambda: selective_scan(p.u, p.delta, p.A, p.B, p.C, p.D, delta_bias=p.bias, delta_softplus=True,
                                  backend="cuda")


def mambapy_pscan(p):
    from mambapy.pscan import pscan  # imported here: the GPU machine gets it through gpu_check --prepare

    def run():
        u = p.sequences()
        d = F.softplus(p.delta + p.bias[None, :, None])                              # (B, D, L)
        reps = p.dim // p.groups
        Bx, Cx = p.B.repeat_interleave(reps, dim=1), p.C.repeat_interleave(reps, dim=1)  # (B, D, N, L)
        dA = torch.exp(d.unsqueeze(2) * p.A[None, :, :, None])
        dBu = d.unsqueeze(2) * Bx * u.unsqueeze(2)
        h = pscan(dA.permute(0, 3, 1, 2), dBu.permute(0, 3, 1, 2))                  # (B, L, D, N)
        return p.merge((h * Cx.permute(0, 3, 1, 2)).sum(-1).transpose(1, 2) + p.D[None, :, None] * u)
    return run


def reference(p):
    if p.hw:
        return lambda: selective_scan_cuda.selective_scan_cross2d_reference(p.u, p.delta, p.A, p.B, p.C, p.D, None,
                                                                            p.bias, True)
    return lambda: selective_scan_reference(p.u, p.delta, p.A, p.B, p.C, p.D, None, p.bias, True)


@functools.lru_cache(maxsize=None)
def _compiled_parts():
    def discretize(u, delta, A, B, C, bias, reps):  # selective_scan_reference up to its loop
        d = F.softplus(delta + bias[:, None])
        dA = torch.exp(d[:, :, None, :] * A[None, :, :, None])
        dBu = d[:, :, None, :] * B.repeat_interleave(reps, dim=1) * u[:, :, None, :]
        return dA.unbind(-1), dBu.unbind(-1), C.repeat_interleave(reps, dim=1).unbind(-1)

    def step(h, dA_t, dBu_t, C_t):  # its loop body
        h = dA_t * h + dBu_t
        return h, (h * C_t).sum(-1)
    return torch.compile(discretize, dynamic=False), torch.compile(step, dynamic=False)


def compiled_reference(p):
    discretize, step = _compiled_parts()

    def run():
        u = p.sequences()
        dA, dBu, Cs = discretize(u, p.delta, p.A, p.B, p.C, p.bias, p.dim // p.groups)
        h = u.new_zeros(dA[0].shape)
        ys = []
        for dA_t, dBu_t, C_t in zip(dA, dBu, Cs):
            h, y_t = step(h, dA_t, dBu_t, C_t)
            ys.append(y_t)
        return p.merge(torch.stack(ys, -1) + p.D[None, :, None] * u)
    return run


def _fwd_bwd(fn, leaves):
    def run():
        for t in leaves:
            t.grad = None
        out = fn()
        out.backward(torch.ones_like(out))
    return run


def _self_check_failed():
    return [k for k, ok in _cuda_dispatch._VERIFIED.items() if not ok and k[0].startswith("selective_scan")]


COPY = "device-to-device copy of the same bytes"
FAST = [(COPY, None), ("**cuda kernel**", "kernel"), (ANCHOR, "mambapy_pscan")]
SLOW = [("sequential reference", "reference"), ("torch.compile(reference), per step", "compiled_reference")]


def bench(rows, args, measure, sync, name, batch, groups, dim_per_group, L, N, hw=None, on_row=lambda: None,
          dev="cuda", stage="fast"):
    """Appends this shape's rows to `rows` (dicts). stage "fast": the copy, the kernel and mambapy;
    "slow": the sequential reference and its torch.compile (seconds each, and compiling): run the
    fast stage of every shape first, so a time limit cuts the slow rows, not the kernel's. args:
    repeat, no_compile. dev: "cpu" only for the smoke test (tools:bench_selective_scan_cuda_test)."""
    p = Problem(torch.device(dev), batch, groups, dim_per_group, L, N, hw)
    shape = f"{name}: B{batch} D{p.dim} (G{groups}) L{L} N{N}" + (f", fused cross-2D {hw[0]}x{hw[1]}" if hw else "")
    src = torch.empty(p.bytes_fb // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    # A copy of n bytes reads n and writes n: copy half of each total, so both move the same bytes.
    copy = dict(fwd=measure(lambda: dst[:p.bytes_fwd // 2].copy_(src[:p.bytes_fwd // 2]), args.repeat, sync),
                fb=measure(lambda: dst.copy_(src), args.repeat, sync))
    del src, dst
    impls = FAST if stage == "fast" else SLOW[:1] if args.no_compile else SLOW
    for impl, maker in impls:
        row = dict(op="selective_scan", shape=shape, impl=impl, fwd_ms=None, fb_ms=None, note="")
        try:
            if maker is None:
                t_f, t_fb = copy["fwd"], copy["fb"]
            else:
                fn = globals()[maker](p)  # looked up at call time (the smoke test substitutes the kernel)
                repeat = args.repeat if stage == "fast" else 1  # the sequential loops take seconds
                t_f = measure(fn, repeat, sync)
                if maker == "kernel" and _self_check_failed():
                    raise RuntimeError(f"the kernel failed its self-check {_self_check_failed()}: its "
                                       "calls ran the reference, so no kernel time exists")
                t_fb = measure(_fwd_bwd(fn, p.leaves), repeat, sync)
            row.update(fwd_ms=t_f * 1e3, fb_ms=t_fb * 1e3)
            for key, t, nbytes in (("fwd", t_f, p.bytes_fwd), ("fb", t_fb, p.bytes_fb)):
                row[f"{key}_gbps"] = nbytes / t / 1e9
                row[f"{key}_pct_copy"] = 100 * copy[key] / t
        except Exception as exc:  # one failing implementation must not end the benchmark
            row["note"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        _anchor_ratios(rows)
        on_row()


def _anchor_ratios(rows):
    """fwd/fwd+bwd speed of each row relative to mambapy's pscan of its shape."""
    anchors = {r["shape"]: r for r in rows if r["impl"] == ANCHOR and r["fwd_ms"]}
    for r in rows:
        a = anchors.get(r["shape"])
        if a and r["fwd_ms"]:
            r["fwd_vs_anchor"], r["fb_vs_anchor"] = a["fwd_ms"] / r["fwd_ms"], a["fb_ms"] / r["fb_ms"]


def markdown(rows):
    lines = ["| op | shape | implementation | fwd ms | fwd GB/s | fwd % of copy | fwd+bwd ms | fwd+bwd GB/s "
             "| fwd+bwd % of copy | fwd vs mambapy | fwd+bwd vs mambapy |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    num = lambda r, k, f: f.format(r[k]) if r.get(k) is not None else "—"
    for r in rows:
        if r["note"]:
            lines.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['note']} |" + " |" * 7)
            continue
        lines.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {num(r, 'fwd_ms', '{:.3f}')} | "
                     f"{num(r, 'fwd_gbps', '{:.0f}')} | {num(r, 'fwd_pct_copy', '{:.1f}%')} | "
                     f"{num(r, 'fb_ms', '{:.3f}')} | {num(r, 'fb_gbps', '{:.0f}')} | "
                     f"{num(r, 'fb_pct_copy', '{:.1f}%')} | {num(r, 'fwd_vs_anchor', '{:.2f}×')} | "
                     f"{num(r, 'fb_vs_anchor', '{:.2f}×')} |")
    return "\n".join(lines)


def write_json(path, header, rows):
    with open(path, "w") as f:
        json.dump(dict(header=header, selective_scan=rows), f, indent=1)
