#!/usr/bin/env python3
"""SSD on CUDA: the chunked kernels (py.ops.ssd_cuda) against mamba_ssm's Triton
`mamba_chunk_scan_combined` and torch.compile of the chunked PyTorch reference.

    python3 tools/bench_ssd_cuda.py [--repeat 10] [--no-compile] [--shapes 0,1] [--json rows.json]   # GPU machine

Shapes: the goal shapes of issue #15 (causal, bfloat16, one group, chunk 256, dt_bias + softplus,
D): B8 L3136 H8xP64 N64 and B4 L4096 H24xP64 N128. The kernels are called directly
(ssd_cuda.kernel_forward/kernel_backward), not through the op, whose first-call self-check could
fall back to the reference and time that instead. mamba_ssm comes from the sdist that
`tools/gpu_check.py --prepare` carries (.gpu_carry/site: its pure-Python Triton ops only).
Goal: forward+backward >= 1.3x faster than mamba_chunk_scan_combined. The Triton op autotunes on
its first call per shape (about 200 configurations over its kernels), which can take minutes.
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SHAPES = [(8, 3136, 8, 64, 64), (4, 4096, 24, 64, 128)]  # (batch, L, heads, headdim, dstate)
CHUNK = 256
GOAL = 1.3
ANCHOR = "mamba_chunk_scan_combined (Triton)"


def inputs(batch, L, heads, headdim, dstate, dtype=torch.bfloat16, device="cuda"):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device)
    return dict(x=mk(batch, L, heads, headdim).to(dtype), dt=(mk(batch, L, heads) * 0.5 - 1).to(dtype),
                A=-torch.rand(heads, generator=g).add(0.5).to(device), B=(mk(batch, L, 1, dstate) * 0.3).to(dtype),
                C=(mk(batch, L, 1, dstate) * 0.3).to(dtype), D=mk(heads), dt_bias=mk(heads) * 0.1)


def measure(fn, repeat, sync=torch.cuda.synchronize):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def implementations(t, dy, compile_reference):
    """{name: (forward fn, forward+backward fn)}."""
    from py.ops import ssd_cuda
    from py.ops.ssd import ssd_reference_chunked
    kw = dict(chunk_size=CHUNK, D=t["D"], dt_bias=t["dt_bias"], softplus=True, causal=True)

    def kernel_fb():
        y, _, pregate = ssd_cuda.kernel_forward(**{k: t[k] for k in ("x", "dt", "A", "B", "C")}, **kw, save=True)
        return ssd_cuda.kernel_backward(dy, None, **{k: t[k] for k in ("x", "dt", "A", "B", "C")}, **kw,
                                        pregate=pregate)

    impls = {"**cuda kernel**": (lambda: ssd_cuda.kernel_forward(**{k: t[k] for k in ("x", "dt", "A", "B", "C")},
                                                                 **kw), kernel_fb)}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}

    def autograd_pair(fn):
        def fb():
            for v in leaves.values():
                v.grad = None
            fn().backward(dy)
        return (lambda: fn()), fb

    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        impls[ANCHOR] = autograd_pair(lambda: mamba_chunk_scan_combined(
            leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], CHUNK, D=leaves["D"],
            dt_bias=leaves["dt_bias"], dt_softplus=True))
    except ImportError as exc:
        impls[ANCHOR] = f"not importable ({exc}); run tools/gpu_check.py --prepare here and carry .gpu_carry"
    if compile_reference:
        ref = torch.compile(ssd_reference_chunked, dynamic=False)
        impls["torch.compile(chunked reference)"] = autograd_pair(lambda: ref(
            leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], CHUNK, D=leaves["D"],
            dt_bias=leaves["dt_bias"], dt_softplus=True))
    return impls


def bench(rows, repeat=10, deadline=float("inf"), compile_reference=True, on_row=print, shapes=SHAPES):
    """Appends one dict per (shape, implementation): fwd_ms, fb_ms or a note saying why not."""
    for batch, L, heads, headdim, dstate in shapes:
        shape = f"B{batch} L{L} H{heads}xP{headdim} N{dstate}"
        t = inputs(batch, L, heads, headdim, dstate)
        dy = torch.randn(t["x"].shape, generator=torch.Generator().manual_seed(1)).to(t["x"])
        for name, fns in implementations(t, dy, compile_reference and time.time() < deadline - 60).items():
            row = dict(shape=shape, impl=name, fwd_ms=None, fb_ms=None, note="")
            if isinstance(fns, str):
                row["note"] = fns
            elif time.time() > deadline:
                row["note"] = "skipped: time budget spent"
            else:
                try:
                    row["fwd_ms"] = measure(fns[0], repeat) * 1e3
                    row["fb_ms"] = measure(fns[1], repeat) * 1e3
                except Exception as exc:  # one failing implementation does not stop the others
                    row["note"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            on_row(row)
        del t, dy
        torch.cuda.empty_cache()
    return rows


def summary(rows):
    """Per shape: the kernel's times and its speed-up over each other implementation; goal met?"""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        impls = {r["impl"]: r for r in rows if r["shape"] == shape}
        k = impls.get("**cuda kernel**")
        if k is None or k["note"]:
            out.append((shape, False, k["note"] if k else "no kernel row"))
            continue
        vs = {n: (o["fwd_ms"] / k["fwd_ms"], o["fb_ms"] / k["fb_ms"]) for n, o in impls.items()
              if n != "**cuda kernel**" and not o["note"]}
        met = ANCHOR in vs and vs[ANCHOR][1] >= GOAL
        out.append((shape, met, f"fwd {k['fwd_ms']:.3f} ms, fwd+bwd {k['fb_ms']:.3f} ms; faster than (fwd/fwd+bwd) "
                    + ", ".join(f"{n} {a:.2f}x/{b:.2f}x" for n, (a, b) in vs.items())
                    + f"; goal fwd+bwd >= {GOAL}x {ANCHOR}: {'met' if met else 'NOT met'}"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--shapes", default="0,1", help="indices into SHAPES (default: both)")
    parser.add_argument("--json", help="also write the rows measured so far to this file, after every row")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: torch sees no usable CUDA device; nothing was measured", file=sys.stderr)
        return 2
    carry = ROOT / ".gpu_carry" / "site"
    if carry.is_dir():
        sys.path.insert(0, str(carry))
    rows = []

    def on_row(row):
        print(row, flush=True)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows))

    bench(rows, args.repeat, compile_reference=not args.no_compile, on_row=on_row,
          shapes=[SHAPES[int(i)] for i in args.shapes.split(",")])
    print("\n| shape | implementation | fwd ms | fwd+bwd ms | note |\n| --- | --- | ---: | ---: | --- |")
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.3f}"
        print(f"| {r['shape']} | {r['impl']} | {fmt(r['fwd_ms'])} | {fmt(r['fb_ms'])} | {r['note']} |")
    for shape, met, detail in summary(rows):
        print(f"{shape}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
