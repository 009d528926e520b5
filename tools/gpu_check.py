#!/usr/bin/env python3
"""The one prepared GPU check of the CUDA kernels (none of which has run on a GPU before this).

    python3 tools/gpu_check.py                 # on the GPU machine, from the repository root
    python3 tools/gpu_check.py --no-build      # use the extensions already built (e.g. by Bazel)

Steps, each under its own time budget so the whole run ends within --budget seconds (default 480):
  1. build selective_scan_cuda and cross_scan_cuda with tools/build_kernels.py for sm_90a, print
     the ptxas table (registers, smem, spills);
  2. stop here, with a clear message and exit code 2, if torch sees no usable CUDA device;
  3. every CUDA op against the float64 reference on fresh random shapes (ragged L, L > 2048,
     d_state 1/16/64/128, float32/bfloat16/float16, groups, z/D/bias/softplus, cross-2D) with
     outputs poisoned (NaN-filled allocator memory), forward, last state, every gradient, and the
     backward run twice for bitwise determinism;
  4. compute-sanitizer memcheck and racecheck on small sizes (a subprocess per tool);
  5. tools/bench_ops.py --device=cuda (reference, mambapy's pscan, copy bandwidth) plus torch.compile
     of the reference scan, and a VMamba-T and Vim-S bf16-autocast training step, kernels vs reference;
  6. a short table of every step's result, printed last.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXTENSIONS = ["selective_scan_cuda", "cross_scan_cuda"]
RESULTS = []  # (step, status, detail)


def record(step, status, detail=""):
    RESULTS.append((step, status, detail))
    print(f"[gpu_check] {step}: {status} {detail}", flush=True)


def build_command(archs="90a"):
    return [sys.executable, str(ROOT / "tools" / "build_kernels.py"), "--cuda-archs", archs, *EXTENSIONS]


def step_build():
    t = time.time()
    res = subprocess.run(build_command(), cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        record("build (sm_90a)", "FAIL", res.stdout[-2000:] + res.stderr[-4000:])
        return False
    from tools import ptxas_report
    reports = sorted((ROOT / "cc" / "kernels" / "_ptxas").glob("*_cuda_*.ptxas.txt"))
    kernels = [k for p in reports for k in ptxas_report.parse(p.read_text())]
    print(ptxas_report.table(kernels))
    bad = ptxas_report.problems(kernels)
    record("build (sm_90a)", "ok" if not bad else "SPILLS", f"{time.time() - t:.0f} s, {len(kernels)} kernels"
           + (f"; {bad}" if bad else ""))
    return True


def gpu_or_stop():
    import torch
    if not torch.cuda.is_available():
        msg = ("no usable CUDA device (torch.cuda.is_available() is False): stopping before the GPU steps; "
               "no kernel has run on a GPU")
        record("GPU", "STOP", msg)
        print_table()
        sys.exit(2)
    record("GPU", "ok", torch.cuda.get_device_name(0))


def poison():
    """Fill the caching allocator's free memory with NaN, so unwritten outputs show up."""
    import torch
    blob = torch.empty(256 * 2**20 // 4, device="cuda").fill_(float("nan"))
    del blob


def step_correctness(deadline):
    import torch
    from py.ops import cross_scan as cs_ops
    from py.ops import selective_scan_cuda as ssc
    from py.ops.selective_scan import selective_scan, selective_scan_reference
    g = torch.Generator().manual_seed(int(time.time()))
    cases = [  # (dtype, batch, dim, groups, N, L, z, D, bias, softplus)
        (torch.float32, 2, 8, 2, 1, 300, False, True, True, True),
        (torch.float32, 1, 6, 3, 16, 2049 + 77, True, True, True, True),
        (torch.bfloat16, 2, 8, 4, 1, 3136, False, True, True, True),
        (torch.float16, 2, 4, 1, 16, 197, True, False, False, False),
        (torch.float32, 1, 4, 1, 64, 513, False, True, False, True),
        (torch.bfloat16, 1, 4, 2, 128, 255, True, True, True, True),
        (torch.float32, 1, 2, 1, 256, 17, False, False, True, True),
    ]
    failures = 0
    for dtype, batch, dim, groups, N, L, z, D, bias, softplus in cases:
        if time.time() > deadline:
            record("correctness", "TIMEOUT", "budget spent before all cases")
            return
        mk = lambda *s: torch.randn(*s, generator=g).cuda()
        t = dict(u=mk(batch, dim, L), delta=mk(batch, dim, L) * 0.5, A=-torch.rand(dim, N, generator=g).cuda() - 0.5,
                 B=mk(batch, groups, N, L), C=mk(batch, groups, N, L), D=mk(dim) if D else None,
                 z=mk(batch, dim, L) if z else None, delta_bias=mk(dim) * 0.1 if bias else None)
        names = [k for k, v in t.items() if v is not None]
        ref_in = {k: None if v is None else v.double().requires_grad_(True) for k, v in t.items()}
        y_ref, last_ref = selective_scan_reference(**ref_in, delta_softplus=softplus, return_last_state=True)
        gy = torch.randn(y_ref.shape, generator=g).cuda()
        ref_grads = torch.autograd.grad(y_ref, [ref_in[k] for k in names], gy.double())
        outs = []
        for _ in range(2):
            k_in = {k: None if v is None else v.to(dtype if k in ("u", "delta", "B", "C", "z") else torch.float32)
                    .requires_grad_(True) for k, v in t.items()}
            poison()
            y, last = selective_scan(**k_in, delta_softplus=softplus, return_last_state=True, backend="cuda")
            grads = torch.autograd.grad(y, [k_in[k] for k in names], gy.to(dtype))
            outs.append([y, last] + list(grads))
        rtol, atol = ssc._TOL[dtype]
        bad = [n for n, a, b in zip(["y", "last_state"] + names, outs[0], [y_ref, last_ref] + list(ref_grads))
               if not torch.allclose(a.double(), b.double(), rtol=rtol * 5, atol=atol * 5)]
        nondet = [n for n, a, b in zip(["y", "last_state"] + names, outs[0], outs[1]) if not torch.equal(a, b)]
        label = f"{str(dtype)[6:]} B{batch} D{dim} G{groups} N{N} L{L}"
        if bad or nondet:
            failures += 1
            record(f"selective_scan {label}", "FAIL", f"mismatch {bad}, nondeterministic {nondet}")
        else:
            record(f"selective_scan {label}", "ok")
    # cross-2D fused op and the standalone cross-scan/merge
    for dtype, (H, W), N in ((torch.float32, (7, 9), 1), (torch.bfloat16, (56, 56), 1), (torch.float32, (5, 6), 16)):
        di, batch = 3, 2
        mk = lambda *s: torch.randn(*s, generator=g).cuda()
        x, delta = mk(batch, di, H, W), mk(batch, 4 * di, H * W) * 0.5
        A = -torch.rand(4 * di, N, generator=g).cuda() - 0.5
        B, C, D, bias = mk(batch, 4, N, H * W), mk(batch, 4, N, H * W), mk(4 * di), mk(4 * di) * 0.1
        want = ssc.selective_scan_cross2d_reference(x.double(), delta.double(), A, B.double(), C.double(), D, None,
                                                    bias, True)
        poison()
        got = ssc.selective_scan_cross2d(x.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, None, bias,
                                         True, backend="cuda")
        rtol, atol = ssc._TOL[dtype]
        ok = torch.allclose(got.double(), want, rtol=rtol * 5, atol=atol * 5)
        failures += not ok
        record(f"selective_scan_cross2d {str(dtype)[6:]} {H}x{W} N{N}", "ok" if ok else "FAIL")
        xs = cs_ops.cross_scan(x.to(dtype), backend="cuda")
        ok = torch.equal(xs.double(), cs_ops.cross_scan_reference(x.to(dtype)).double())
        ys = mk(batch, 4, di, H, W).to(dtype)
        ok &= torch.allclose(cs_ops.cross_merge(ys, backend="cuda").double(),
                             cs_ops.cross_merge_reference(ys.double()), rtol=1e-2, atol=1e-2)
        failures += not ok
        record(f"cross_scan/merge {str(dtype)[6:]} {H}x{W}", "ok" if ok else "FAIL")
    record("correctness", "ok" if not failures else "FAIL", f"{failures} failing case(s)")


def sanitize_case():
    """Tiny problems for compute-sanitizer (run in a subprocess under each tool)."""
    import torch
    from py.ops import cross_scan, selective_scan
    from py.ops import selective_scan_cuda as ssc
    for N, L in ((1, 300), (16, 40)):
        u = torch.randn(1, 8, L, device="cuda", requires_grad=True)
        y = selective_scan(u, u.detach() * 0.1, -torch.ones(8, N, device="cuda"), torch.randn(1, 2, N, L, device="cuda"),
                           torch.randn(1, 2, N, L, device="cuda"), torch.ones(8, device="cuda"), delta_softplus=True,
                           backend="cuda")
        y.sum().backward()
    x = torch.randn(1, 3, 7, 9, device="cuda", requires_grad=True)
    ssc.selective_scan_cross2d(x, torch.randn(1, 12, 63, device="cuda"), -torch.ones(12, 1, device="cuda"),
                               torch.randn(1, 4, 1, 63, device="cuda"), torch.randn(1, 4, 1, 63, device="cuda"),
                               backend="cuda").sum().backward()
    cross_scan.cross_merge(cross_scan.cross_scan(x.detach(), backend="cuda").unflatten(-1, (7, 9)), backend="cuda")
    torch.cuda.synchronize()


def step_sanitizer(deadline):
    for tool in ("memcheck", "racecheck"):
        left = deadline - time.time()
        if left < 20:
            record(f"compute-sanitizer {tool}", "SKIPPED", "time budget spent")
            continue
        cmd = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "9", sys.executable, __file__,
               "--sanitize-case"]
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
            summary = [l for l in (res.stdout + res.stderr).splitlines() if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l]
            record(f"compute-sanitizer {tool}", "ok" if res.returncode == 0 else "FAIL",
                   "; ".join(summary) or (res.stdout + res.stderr)[-800:])
        except FileNotFoundError:
            record(f"compute-sanitizer {tool}", "SKIPPED", "compute-sanitizer not on PATH")
        except subprocess.TimeoutExpired:
            record(f"compute-sanitizer {tool}", "TIMEOUT")


def step_bench(deadline):
    left = deadline - time.time()
    cmd = [sys.executable, str(ROOT / "tools" / "bench_ops.py"), "--device=cuda", "--ops=selective_scan,cross_scan",
           "--repeat=3"]
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(left * 0.5, 10))
        print(res.stdout[-6000:])
        record("bench_ops --device=cuda", "ok" if res.returncode == 0 else "FAIL", res.stderr[-600:] if res.returncode else "")
    except subprocess.TimeoutExpired:
        record("bench_ops --device=cuda", "TIMEOUT")
    import torch
    from py.ops.selective_scan import selective_scan, selective_scan_reference
    # torch.compile of the reference scan vs the kernel at the VMamba-T stage-1 shape (forward).
    b, dim, L = 8, 384, 3136
    u, delta = torch.randn(b, dim, L, device="cuda"), torch.randn(b, dim, L, device="cuda") * 0.5
    A, B, C = -torch.ones(dim, 1, device="cuda"), torch.randn(b, 4, 1, L, device="cuda"), torch.randn(b, 4, 1, L, device="cuda")
    def timed(fn, n=3):
        fn(); torch.cuda.synchronize(); t = time.time()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.time() - t) / n
    try:
        compiled = torch.compile(selective_scan_reference)
        t_c = timed(lambda: compiled(u, delta, A, B, C, None, None, None, True), 1) if time.time() < deadline - 60 else None
    except Exception as exc:  # the sequential loop may not compile in the budget
        t_c = None
        record("torch.compile reference", "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
    t_k = timed(lambda: selective_scan(u, delta, A, B, C, delta_softplus=True, backend="cuda"))
    moved = 4 * (u.numel() * 3 + B.numel() * 2)
    record("scan fwd VMamba-T stage 1 (B8)", "ok", f"kernel {t_k * 1e3:.2f} ms ({moved / t_k / 1e9:.0f} GB/s); "
           f"torch.compile(reference) {'n/a' if t_c is None else f'{t_c * 1e3:.1f} ms'}")


def step_models(deadline):
    import torch
    import py.models
    from py.ops import _common
    for name in ("vmamba_tiny_s1l8", "vim_small"):
        if time.time() > deadline - 30:
            record(f"train step {name}", "SKIPPED", "time budget spent")
            continue
        model = py.models.create_model(name).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        row = []
        for backend, batch in (("cuda", 128), ("reference", 8)):  # the reference path is timed at batch 8
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            target = torch.randint(0, 1000, (batch,), device="cuda")

            def step():
                with _common.force_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(model(x), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            try:
                step(); torch.cuda.synchronize(); t = time.time(); step(); torch.cuda.synchronize()
                row.append(f"{backend} {batch / (time.time() - t):.0f} img/s (batch {batch})")
            except Exception as exc:
                row.append(f"{backend} failed: {type(exc).__name__}: {str(exc)[:150]}")
            if time.time() > deadline:
                break
        record(f"train step {name} (bf16 autocast)", "ok", "; ".join(row))
        del model, opt
        torch.cuda.empty_cache()


def print_table():
    print("\n| step | result | detail |\n| --- | --- | --- |")
    for step, status, detail in RESULTS:
        print(f"| {step} | {status} | {detail.replace(chr(10), ' ')[:160]} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the extensions already built")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    parser.add_argument("--sanitize-case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sanitize_case:
        return sanitize_case()
    start = time.time()
    if not args.no_build and not step_build():
        print_table()
        sys.exit(1)
    gpu_or_stop()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    end = start + args.budget
    step_correctness(start + 0.35 * args.budget)
    step_sanitizer(start + 0.55 * args.budget)
    step_bench(start + 0.8 * args.budget)
    step_models(end - 10)
    print_table()
    return 1 if any(s in ("FAIL", "SPILLS") for _, s, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
