#!/usr/bin/env python3
"""Benchmarks the ops against their anchors, all measured in the same run.

    ./bazelw run //tools:bench_ops -- [--device=cpu] [--threads=2] [--repeat=5] [--full] [--out=FILE.md]
    python3 tools/bench_ops.py --device=cuda [--json=FILE] [--no-compile]    # on a GPU machine

For each op and shape: forward and forward+backward time of every backend, with ratios against
(a) the plain-PyTorch reference, (b) the best pure-PyTorch formulation (mambapy's parallel scan for
the selective scan, the chunked einsum SSD, grid_sample DCNv4, flip/transpose cross-scan), and
(c) the memory-bandwidth floor: the bytes the op must move (each input read once, each output
written once) over the device-to-device copy rate measured at the start of the run.

The sequential selective-scan reference takes minutes for forward+backward at the VMamba-T shape;
without --full it is timed at batch 1 and scaled by the batch (marked "~").
Times are medians of --repeat runs after one warm-up.

--device=cuda: the selective-scan rows come from tools/bench_selective_scan_cuda.py (the CUDA
kernels, VMamba-T stage 1 through the fused cross-2D op, against the reference, torch.compile of
the reference, mambapy's pscan and a device-to-device copy of the same bytes, with achieved GB/s
and % of the copy's rate); dcnv4 times its CUDA kernels; ssd has no CUDA kernel, so only its anchors are timed.
Without a usable GPU it stops with exit code 2 before measuring anything.
"""
import argparse
import importlib
import pathlib
import statistics
import sys
import time

import torch

if __package__ in (None, ""):  # `python3 tools/bench_ops.py` (GPU machine): the repository root is the import root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from py.ops import _native, cpu_allocator  # noqa: E402

# The op modules (py.ops exports functions of the same names).
cs_ops = importlib.import_module("py.ops.cross_scan")
dcn_ops = importlib.import_module("py.ops.dcnv4")
ss_ops = importlib.import_module("py.ops.selective_scan")
ssd_ops = importlib.import_module("py.ops.ssd")


def measure(fn, repeat, sync):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(device, sync, repeat):
    """Bytes read + written per second by a large tensor copy."""
    n = 64 * 2**20  # 256 MB of float32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), repeat, sync)
    return 2 * src.numel() * 4 / t


def fwd_bwd(fn, inputs):
    def run():
        for t in inputs:
            t.grad = None
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))
    return run


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class Table:
    def __init__(self):
        self.rows = []

    def add(self, op, shape, impl, fwd, fb, floor_fwd, floor_fb, anchor_fwd=None, anchor_fb=None, approx=False):
        self.rows.append((op, shape, impl, fwd, fb, floor_fwd, floor_fb, anchor_fwd, anchor_fb, approx))

    def markdown(self):
        lines = ["| op | shape | implementation | fwd ms | fwd+bwd ms | fwd vs anchor | fwd+bwd vs anchor "
                 "| fwd / floor | fwd+bwd / floor |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for op, shape, impl, fwd, fb, ff, ffb, af, afb, approx in self.rows:
            mark = "~" if approx else ""
            ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "—"
            ms = lambda x: f"{mark}{x * 1e3:.2f}" if x is not None else "—"
            lines.append(f"| {op} | {shape} | {impl} | {ms(fwd)} | {ms(fb)} | "
                         f"{ratio(af, fwd)} | {ratio(afb, fb)} | {ratio(fwd, ff)} | {ratio(fb, ffb)} |")
        return "\n".join(lines)


def bench_selective_scan(table, args, dev, sync, bw, name, batch, groups, dim_per_group, L, N):
    dim = groups * dim_per_group
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(dev)
    u, delta = mk(batch, dim, L), mk(batch, dim, L) * 0.5
    A = -torch.rand(dim, N, generator=g).add(0.5).to(dev)
    B, C = mk(batch, groups, N, L), mk(batch, groups, N, L)
    D, bias = mk(dim), mk(dim) * 0.1
    tensors = [u, delta, A, B, C, D, bias]
    for t in tensors:
        t.requires_grad_(True)
    shape = f"{name}: B{batch} D{dim} (G{groups}) L{L} N{N}"
    floor_fwd = nbytes(u, delta, B, C, D, bias, u) / bw  # + y written
    floor_fb = floor_fwd + nbytes(u, delta, B, C, u, u, delta, B, C) / bw  # + bwd: read inputs, dout; write grads

    call = lambda backend: lambda: ss_ops.selective_scan(u, delta, A, B, C, D, delta_bias=bias,
                                                        delta_softplus=True, backend=backend)
    # (b) mambapy's parallel scan: discretise, pscan, contract with C (same math, pure PyTorch).
    from mambapy.pscan import pscan

    def mambapy_scan():
        d = torch.nn.functional.softplus(delta + bias[None, :, None])               # (B, D, L)
        reps = dim // groups
        Bx = B.repeat_interleave(reps, dim=1)                                      # (B, D, N, L)
        Cx = C.repeat_interleave(reps, dim=1)
        dA = torch.exp(d.unsqueeze(2) * A[None, :, :, None])                       # (B, D, N, L)
        dBu = d.unsqueeze(2) * Bx * u.unsqueeze(2)
        h = pscan(dA.permute(0, 3, 1, 2), dBu.permute(0, 3, 1, 2))                 # (B, L, D, N)
        return (h * Cx.permute(0, 3, 1, 2)).sum(-1).transpose(1, 2) + D[None, :, None] * u

    anchor_f = measure(mambapy_scan, args.repeat, sync)
    anchor_fb = measure(fwd_bwd(mambapy_scan, tensors), args.repeat, sync)
    table.add("selective_scan", shape, "mambapy pscan (anchor)", anchor_f, anchor_fb, floor_fwd, floor_fb,
              anchor_f, anchor_fb)

    ref_f = measure(call("reference"), 1, sync)
    if args.full or batch == 1:
        ref_fb, approx = measure(fwd_bwd(call("reference"), tensors), 1, sync), False
    else:  # minutes at full batch: time batch 1 and scale
        # batch-1 slices of the per-sample tensors (u, delta, B, C); A, D, bias are shared
        ub, db, Bb, Cb = (t[:1].detach().requires_grad_(True) for t in (u, delta, B, C))
        sub = [ub, db, A, Bb, Cb, D, bias]
        one = lambda: ss_ops.selective_scan(ub, db, A, Bb, Cb, D, delta_bias=bias, delta_softplus=True,
                                            backend="reference")
        ref_fb, approx = measure(fwd_bwd(one, sub), 1, sync) * batch, True
    table.add("selective_scan", shape, "sequential reference", ref_f, ref_fb, floor_fwd, floor_fb,
              anchor_f, anchor_fb, approx=approx)
    backend = "cuda" if dev.type == "cuda" else "cpu"
    f = measure(call(backend), args.repeat, sync)
    fb = measure(fwd_bwd(call(backend), tensors), args.repeat, sync)
    table.add("selective_scan", shape, f"**{backend} kernel**", f, fb, floor_fwd, floor_fb, anchor_f, anchor_fb)
    mod = _native.require("selective_scan_cpu") if backend == "cpu" else None
    if mod is not None and mod.n1_path(N, False, dim_per_group):  # the same kernel without its N = 1 path
        mod.set_n1_path(False)
        try:
            f = measure(call(backend), args.repeat, sync)
            fb = measure(fwd_bwd(call(backend), tensors), args.repeat, sync)
        finally:
            mod.set_n1_path(True)
        table.add("selective_scan", shape, "cpu kernel, general path (N = 1 path off)", f, fb, floor_fwd, floor_fb,
                  anchor_f, anchor_fb)


def bench_ssd(table, args, dev, sync, bw, batch, L, heads, headdim, N, chunk, causal):
    g = torch.Generator(device="cpu").manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g).to(dev)
    x, dt = mk(batch, L, heads, headdim), mk(batch, L, heads) * 0.5
    A = -torch.rand(heads, generator=g).add(0.5).to(dev)
    B, C = mk(batch, L, 1, N) * 0.3, mk(batch, L, 1, N) * 0.3
    D, dt_bias = mk(heads), mk(heads) * 0.1
    tensors = [x, dt, A, B, C, D, dt_bias]
    for t in tensors:
        t.requires_grad_(True)
    kind = "causal" if causal else "non-causal"
    shape = f"B{batch} L{L} H{heads}×P{headdim} N{N} chunk{chunk}"
    floor_fwd = nbytes(x, dt, B, C, x) / bw
    floor_fb = floor_fwd + nbytes(x, dt, B, C, x, x, dt, B, C) / bw
    call = lambda backend: lambda: ssd_ops.ssd(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True,
                                               causal=causal, backend=backend)
    anchor_f = measure(call("reference"), args.repeat, sync)
    anchor_fb = measure(fwd_bwd(call("reference"), tensors), args.repeat, sync)
    table.add(f"ssd {kind}", shape, "chunked PyTorch reference (anchor)", anchor_f, anchor_fb, floor_fwd, floor_fb,
              anchor_f, anchor_fb)
    if dev.type == "cuda":  # the CUDA kernels against their anchors: tools/bench_ssd_cuda.py
        return
    backend = "cpu"
    f = measure(call(backend), args.repeat, sync)
    fb = measure(fwd_bwd(call(backend), tensors), args.repeat, sync)
    table.add(f"ssd {kind}", shape, f"**{backend} kernel**", f, fb, floor_fwd, floor_fb, anchor_f, anchor_fb)


def bench_dcnv4(table, args, dev, sync, bw, batch, H, W, group, gc):
    g = torch.Generator(device="cpu").manual_seed(2)
    K = 9
    pad = ((3 * group * K + 7) // 8) * 8
    value = torch.randn(batch, H, W, group * gc, generator=g).to(dev).requires_grad_(True)
    om = (torch.randn(batch, H, W, pad, generator=g) * 0.5).to(dev).requires_grad_(True)
    shape = f"B{batch} {H}×{W} G{group}×{gc} 3×3"
    floor_fwd = nbytes(value, om, value) / bw
    floor_fb = floor_fwd + nbytes(value, om, value, value, om) / bw
    call = lambda backend: lambda: dcn_ops.dcnv4(value, om, 3, 3, 1, 1, 1, 1, 1, 1, group, gc, 1.0, False,
                                                 backend=backend)
    anchor_f = measure(call("reference"), args.repeat, sync)
    anchor_fb = measure(fwd_bwd(call("reference"), [value, om]), args.repeat, sync)
    table.add("dcnv4", shape, "grid_sample reference (anchor)", anchor_f, anchor_fb, floor_fwd, floor_fb,
              anchor_f, anchor_fb)
    backend = dev.type  # the CUDA kernels (not yet run on a GPU) or the CPU kernel
    f = measure(call(backend), args.repeat, sync)
    fb = measure(fwd_bwd(call(backend), [value, om]), args.repeat, sync)
    table.add("dcnv4", shape, f"**{backend} kernel**", f, fb, floor_fwd, floor_fb, anchor_f, anchor_fb)


def bench_cross_scan(table, args, dev, sync, bw, batch, C, H, W):
    x = torch.randn(batch, C, H, W, device=dev, requires_grad=True)
    shape = f"B{batch} C{C} {H}×{W}"
    floor = nbytes(x) * 5 / bw  # read x once, write 4 copies
    call = lambda backend: lambda: cs_ops.cross_scan(x, backend=backend)
    anchor_f = measure(call("reference"), args.repeat, sync)
    anchor_fb = measure(fwd_bwd(call("reference"), [x]), args.repeat, sync)
    table.add("cross_scan", shape, "flip/transpose reference (anchor)", anchor_f, anchor_fb, floor, 2 * floor,
              anchor_f, anchor_fb)
    backend = "cuda" if dev.type == "cuda" else "cpu"
    f = measure(call(backend), args.repeat, sync)
    fb = measure(fwd_bwd(call(backend), [x]), args.repeat, sync)
    table.add("cross_scan", shape, f"**{backend} kernel**", f, fb, floor, 2 * floor, anchor_f, anchor_fb)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="time the slow sequential reference at full batch")
    parser.add_argument("--ops", default="selective_scan,ssd,dcnv4,cross_scan")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--json", help="--device=cuda: write the selective-scan rows as JSON (after each row)")
    parser.add_argument("--no-compile", action="store_true", help="--device=cuda: skip torch.compile rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ops = set(args.ops.split(","))
    if dev.type == "cuda":
        _cuda_or_exit(ops)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # Every implementation runs under the same allocator setting (VISIONSSM_MALLOC_TUNING=0: glibc's).
    tuned = cpu_allocator.keep_freed_memory()
    bw = copy_bandwidth(dev, sync, args.repeat)
    header = (f"device {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
              f"measured copy bandwidth {bw / 1e9:.1f} GB/s (read + write), "
              f"freed CPU memory {'kept for reuse' if tuned else 'returned to the OS (glibc default)'}")
    print(header, file=sys.stderr)
    table = Table()
    scan_rows = []
    if "selective_scan" in ops and dev.type == "cuda":
        from tools import bench_selective_scan_cuda as ssc
        save = (lambda: ssc.write_json(args.json, header, scan_rows)) if args.json else (lambda: None)
        for stage in ("fast", "slow"):  # every shape's kernel rows before the slow reference rows
            ssc.bench(scan_rows, args, measure, sync, "VMamba-T stage 1", 8, 4, 96, 3136, 1, hw=(56, 56),
                      on_row=save, stage=stage)
            ssc.bench(scan_rows, args, measure, sync, "Vim-S layer", 8, 1, 1536, 197, 16, on_row=save, stage=stage)
        print(ssc.markdown(scan_rows) + "\n", flush=True)
    elif "selective_scan" in ops:
        bench_selective_scan(table, args, dev, sync, bw, "VMamba-T stage 1", 8, 4, 96, 3136, 1)
        bench_selective_scan(table, args, dev, sync, bw, "Vim-S layer", 8, 1, 1536, 197, 16)
        # the default run's model (vim_mnist: 37 tokens, a 5-step tail per time block), one training batch
        bench_selective_scan(table, args, dev, sync, bw, "vim_mnist layer", 32, 1, 64, 37, 8)
    if "ssd" in ops:
        for causal in (True, False):
            bench_ssd(table, args, dev, sync, bw, 8, 3136, 8, 64, 64, 256, causal)
    if "dcnv4" in ops:
        bench_dcnv4(table, args, dev, sync, bw, 8, 56, 56, 4, 16)
    if "cross_scan" in ops:
        bench_cross_scan(table, args, dev, sync, bw, 8, 96, 56, 56)
        bench_cross_scan(table, args, dev, sync, bw, 8, 768, 7, 7)
    text = f"{header}\n\n{table.markdown()}\n"
    if scan_rows:
        from tools import bench_selective_scan_cuda as ssc
        text += f"\n{ssc.markdown(scan_rows)}\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def _cuda_or_exit(ops):
    """--device=cuda needs a usable GPU and, for the selective scan, the built CUDA extension."""
    if not torch.cuda.is_available():
        print("error: --device=cuda but torch sees no usable CUDA device (torch.cuda.is_available() is False); "
              "nothing was measured", file=sys.stderr)
        sys.exit(2)
    if "selective_scan" in ops and _native.load("selective_scan_cuda") is None:
        print(f"error: --device=cuda: {_native.unavailable_reason('selective_scan_cuda')}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
