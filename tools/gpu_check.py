#!/usr/bin/env python3
"""The one prepared GPU check of the CUDA kernels (none of which has run on a GPU before this).

    <pinned python> tools/gpu_check.py --prepare   # here, once: copy what the GPU machine lacks into .gpu_carry/
    python3 tools/gpu_check.py                 # on the GPU machine, from the repository root
    python3 tools/gpu_check.py --no-build      # use the extensions already built (e.g. by Bazel)

The GPU machine has no network and its image lacks three things: mambapy (bench anchor), the
CUTLASS/CuTe headers (nvidia-cutlass, needed to build the kernels) and mamba_ssm's Triton SSD ops
(the SSD bench's anchor; --prepare downloads the mamba-ssm sdist from PyPI and keeps only those).
`--prepare`, run with the pinned interpreter (~/.cache/visionssm/pyenv/*/bin/python or
`./bazelw run //:python -- tools/gpu_check.py --prepare`), copies both into the git-ignored
.gpu_carry/site (about 29 MB); name `.gpu_carry` in the device tool's `carry`, and gpu_check puts
that folder on sys.path and PYTHONPATH of its subprocesses.

Steps, each under its own time budget so the whole run ends within --budget seconds (default 450):
  1. build selective_scan_cuda, cross_scan_cuda and dcnv4_cuda with tools/build_kernels.py for sm_90a, print
     the ptxas table (registers, smem, spills);
  2. stop here, with a clear message and exit code 2, if torch sees no usable CUDA device;
  3. every CUDA kernel, called directly (not through the ops' self-check, which would fall back to
     the reference and hide a failure), against the float64 reference on fresh random shapes (ragged
     L, L > 2048, d_state 1/16/64/128/256, float32/bfloat16/float16, groups, z/D/bias/softplus,
     cross-2D with strided maps) with outputs poisoned (NaN-filled allocator memory): forward, last
     state, every gradient, and everything run twice for bitwise determinism;
  3b. DCNv4 (until 52% of the budget): the kernels against the float64 reference on both chunk
     paths, float32/float16/bfloat16, deterministic backward twice (bitwise) and atomic once; then
     forward and forward+backward timed against the grid_sample reference and a copy of the same
     bytes (the goal: forward >= 60% of the copy rate);
  3c. SSD (until 68%): the chunked kernels (causal and non-causal, float32/float16/bfloat16, ragged
     tiles, groups, z/D/initial states/dt_limit) against the float64 reference, backward twice
     (bitwise); then tools/bench_ssd_cuda.py: vs mamba_ssm's Triton mamba_chunk_scan_combined
     (carried as its sdist's pure-Python ops) and torch.compile of the chunked reference;
  4. compute-sanitizer memcheck and racecheck on small sizes (a subprocess per tool);
  5. tools/bench_ops.py --device=cuda (kernels vs the reference, torch.compile of the reference,
     mambapy's pscan and a copy of the same bytes; its rows also go into the table), and a VMamba-T
     and Vim-S bf16-autocast training step, kernels vs reference;
  6. a short table of every step's result, printed last (also when a step raised: each step's
     exception becomes a FAIL row and the next step runs).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXTENSIONS = ["selective_scan_cuda", "cross_scan_cuda", "dcnv4_cuda", "ssd_cuda"]
CARRY = ROOT / ".gpu_carry" / "site"  # what --prepare copies (git-ignored), on sys.path when present
RESULTS = []  # (step, status, detail)


def record(step, status, detail=""):
    RESULTS.append((step, status, detail))
    print(f"[gpu_check] {step}: {status} {detail}", flush=True)


def build_command(archs="90a"):
    return [sys.executable, str(ROOT / "tools" / "build_kernels.py"), "--cuda-archs", archs, *EXTENSIONS]


def subprocess_env():
    """The environment of every subprocess: the carried packages first on PYTHONPATH."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if CARRY.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(CARRY), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def step_build(deadline):
    t = time.time()
    try:
        res = subprocess.run(build_command(), cwd=ROOT, capture_output=True, text=True, env=subprocess_env(),
                             timeout=max(deadline - t, 30))
    except subprocess.TimeoutExpired:
        record("build (sm_90a)", "TIMEOUT", f"after {time.time() - t:.0f} s")
        return False
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
        sys.exit(2)  # main's `finally` prints the table
    record("GPU", "ok", torch.cuda.get_device_name(0))


def poison():
    """Fill the caching allocator's free memory with NaN, so unwritten outputs show up."""
    import torch
    blob = torch.empty(256 * 2**20 // 4, device="cuda").fill_(float("nan"))
    del blob


KERNEL_DTYPE_INPUTS = ("u", "delta", "B", "C", "z")  # in the case's dtype; A, D, delta_bias stay float32


def compare_twice(label, dtype, t, gy, kernel, reference):
    """kernel(**inputs) twice on poisoned memory vs reference(**float64 inputs) once: outputs (a tuple)
    and every input gradient within the self-check tolerance x5, the two runs bitwise equal."""
    import torch
    from py.ops import selective_scan_cuda as ssc
    names = [k for k, v in t.items() if v is not None]
    cast = lambda k, v: v.to(dtype if k in KERNEL_DTYPE_INPUTS else torch.float32)
    # The reference gets the kernel's rounded inputs: the comparison measures the kernel's arithmetic.
    ref_in = {k: None if v is None else cast(k, v).double().requires_grad_(True) for k, v in t.items()}
    ref_out = reference(**ref_in)
    gy = gy.to(dtype)
    want = list(ref_out) + list(torch.autograd.grad(ref_out[0], [ref_in[k] for k in names], gy.double()))
    runs = []
    for _ in range(2):
        k_in = {k: None if v is None else cast(k, v).requires_grad_(True) for k, v in t.items()}
        poison()
        out = kernel(**k_in)
        runs.append(list(out) + list(torch.autograd.grad(out[0], [k_in[k] for k in names], gy)))
    labels = ["y", "last_state"][:len(ref_out)] + ["d" + n for n in names]
    rtol, atol = ssc._TOL[dtype]
    bad = {n: f"{(a.double() - b.double()).abs().max().item():.2g}" for n, a, b in zip(labels, runs[0], want)
           if not torch.allclose(a.double(), b.double(), rtol=rtol * 5, atol=atol * 5)}
    nondet = [n for n, a, b in zip(labels, runs[0], runs[1]) if not torch.equal(a, b)]
    record(label, "FAIL" if bad or nondet else "ok",
           f"max |err| {bad}; nondeterministic {nondet}" if bad or nondet else "")
    return not (bad or nondet)


def step_correctness(deadline):
    """The kernels are called directly (selective_scan_cuda._apply, the cross-scan autograd Functions):
    the ops' first-call self-check would fall back to the reference and hide a failing kernel."""
    import importlib
    import torch
    from py.ops import cross_scan_cuda
    from py.ops import selective_scan_cuda as ssc
    cs_ops = importlib.import_module("py.ops.cross_scan")  # `from py.ops import cross_scan` is the function
    from py.ops.selective_scan import selective_scan_reference
    g = torch.Generator().manual_seed(int(time.time()))
    mk = lambda *s: torch.randn(*s, generator=g).cuda()
    failures = 0
    cases = [  # (dtype, batch, dim, groups, N, L, z, D, bias, softplus)
        (torch.float32, 2, 8, 2, 1, 300, False, True, True, True),
        (torch.float32, 1, 6, 3, 16, 2049 + 77, True, True, True, True),
        (torch.bfloat16, 2, 8, 4, 1, 3136, False, True, True, True),
        (torch.float16, 2, 4, 1, 16, 197, True, False, False, False),
        (torch.float32, 1, 4, 1, 64, 513, False, True, False, True),
        (torch.bfloat16, 1, 4, 2, 128, 255, True, True, True, True),
        (torch.float32, 1, 2, 1, 256, 17, False, False, True, True),
        (torch.float32, 1, 9, 1, 3, 40, True, True, True, True),  # 9 channels: padding warps, 2 slices
    ]
    for dtype, batch, dim, groups, N, L, z, D, bias, softplus in cases:
        label = f"selective_scan {str(dtype)[6:]} B{batch} D{dim} G{groups} N{N} L{L}"
        if time.time() > deadline:
            record(label, "SKIPPED", "correctness budget spent")
            continue
        try:
            # |A| ~ 0.05: states outlive a 256-position chunk, so a wrong carry between chunks shows.
            t = dict(u=mk(batch, dim, L), delta=mk(batch, dim, L) * 0.5,
                     A=(-torch.rand(dim, N, generator=g) - 0.5).cuda() * 0.05, B=mk(batch, groups, N, L),
                     C=mk(batch, groups, N, L), D=mk(dim) if D else None, z=mk(batch, dim, L) if z else None,
                     delta_bias=mk(dim) * 0.1 if bias else None)
            failures += not compare_twice(
                label, dtype, t, mk(batch, dim, L),
                lambda **q: ssc._apply(**q, softplus=softplus, return_last_state=True, hw=None),
                lambda **q: selective_scan_reference(**q, delta_softplus=softplus, return_last_state=True))
        except Exception as exc:  # e.g. an illegal address: recorded, and the next case still tries
            failures += 1
            record(label, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
    # the fused cross-2D scan (every gradient) and the standalone cross-scan/merge
    for dtype, (H, W), N, z, layout in ((torch.float32, (7, 9), 1, False, "contiguous"),
                                        (torch.bfloat16, (56, 56), 1, False, "contiguous"),
                                        (torch.float32, (17, 19), 1, True, "channels_last"),
                                        (torch.float32, (5, 6), 16, False, "contiguous")):
        label = f"selective_scan_cross2d {str(dtype)[6:]} {H}x{W} N{N} {layout}"
        if time.time() > deadline:
            record(label, "SKIPPED", "correctness budget spent")
            continue
        di, batch, L = 3, 2, H * W
        try:
            x = mk(batch, di, H, W)
            if layout == "channels_last":
                x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            t = dict(u=x, delta=mk(batch, 4 * di, L) * 0.5,
                     A=(-torch.rand(4 * di, N, generator=g) - 0.5).cuda() * 0.05, B=mk(batch, 4, N, L),
                     C=mk(batch, 4, N, L), D=mk(4 * di), z=mk(batch, 4 * di, L) if z else None,
                     delta_bias=mk(4 * di) * 0.1)
            failures += not compare_twice(
                label, dtype, t, mk(batch, di, H, W),
                lambda u, **q: (ssc._apply(u, **q, softplus=True, return_last_state=False, hw=(H, W)),),
                lambda u, **q: (ssc.selective_scan_cross2d_reference(u, **q, delta_softplus=True),))
            xs = cross_scan_cuda.CrossScanCudaFn.apply(x.to(dtype))
            ok = torch.equal(xs, cs_ops.cross_scan_reference(x.to(dtype)))
            ys = mk(batch, 4, di, H, W).to(dtype)
            tol = 1e-6 if dtype == torch.float32 else 2e-2  # one rounding of a float sum
            ok &= torch.allclose(cross_scan_cuda.CrossMergeCudaFn.apply(ys).double(),
                                 cs_ops.cross_merge_reference(ys.double()), rtol=tol, atol=tol)
            failures += not ok
            record(f"cross_scan/merge {str(dtype)[6:]} {H}x{W} {layout}", "ok" if ok else "FAIL")
        except Exception as exc:
            failures += 1
            record(label, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
    record("correctness", "ok" if not failures else "FAIL", f"{failures} failing case(s)")


def record_self_checks():
    """The ops' first-call self-checks (run by the training steps): a False means the op fell back."""
    from py.ops import _cuda_dispatch as dispatch
    if not dispatch._VERIFIED:
        return
    failed = [f"{op} {dtype}" for (op, dtype, _), ok in dispatch._VERIFIED.items() if not ok]
    record("ops' first-call self-checks", "FAIL" if failed else "ok",
           f"{len(dispatch._VERIFIED) - len(failed)} passed" + (f"; failed (fell back to the reference): {failed}"
                                                                 if failed else ""))


def sanitize_case():
    """Tiny problems for compute-sanitizer (run in a subprocess under each tool): the kernels called
    directly, every path (N = 1, tiled, cross-2D, cross-scan/merge), forward and backward."""
    import torch
    from py.ops import cross_scan_cuda
    from py.ops import selective_scan_cuda as ssc
    cuda = dict(device="cuda")
    for N, L in ((1, 300), (16, 40)):
        u = torch.randn(1, 8, L, **cuda, requires_grad=True)
        y, _ = ssc._apply(u, u.detach() * 0.1, -torch.ones(8, N, **cuda), torch.randn(1, 2, N, L, **cuda),
                          torch.randn(1, 2, N, L, **cuda), torch.ones(8, **cuda), None, None, True, True, None)
        y.sum().backward()
    x = torch.randn(1, 3, 7, 9, **cuda, requires_grad=True)
    ssc._apply(x, torch.randn(1, 12, 63, **cuda), -torch.ones(12, 1, **cuda), torch.randn(1, 4, 1, 63, **cuda),
               torch.randn(1, 4, 1, 63, **cuda), None, None, None, False, False, (7, 9)).sum().backward()
    xs = cross_scan_cuda.CrossScanCudaFn.apply(x.detach())
    cross_scan_cuda.CrossMergeCudaFn.apply(xs.unflatten(-1, (7, 9)))
    from py.ops import dcnv4_cuda
    from py.ops.dcnv4 import _cfg
    for case in (DCNV4_CASES[1], DCNV4_CASES[3]):  # vector and scalar paths, both backward modes
        value, om, gy, conv = dcnv4_inputs(torch.Generator().manual_seed(0), *case)
        cfg = _cfg(value, om, *conv)
        dcnv4_cuda.kernel_forward(value, om, cfg)
        for deterministic in (True, False):
            dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic=deterministic)
    from py.ops import ssd_cuda
    for causal in (True, False):  # ragged tiles, z, D, initial states
        t = ssd_inputs(torch.Generator().manual_seed(0), "bfloat16", 1, 70, 2, 80, 1, 70, causal, True, "h", causal)
        _, _, pregate = ssd_cuda.kernel_forward(**t, chunk_size=64, softplus=True, causal=causal, save=True)
        ssd_cuda.kernel_backward(torch.ones_like(t["x"]), None, **t, chunk_size=64, softplus=True, causal=causal,
                                 pregate=pregate)
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
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left, env=subprocess_env())
            out = res.stdout + res.stderr
            summary = [l for l in out.splitlines() if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l]
            if res.returncode and "Device not supported" in out:  # gVisor machines (device README)
                record(f"compute-sanitizer {tool}", "UNSUPPORTED", "the sanitizer refused this machine's device")
                continue
            record(f"compute-sanitizer {tool}", "ok" if res.returncode == 0 else "FAIL",
                   "; ".join(summary) or out[-800:])
        except FileNotFoundError:
            record(f"compute-sanitizer {tool}", "SKIPPED", "compute-sanitizer not on PATH")
        except subprocess.TimeoutExpired:
            record(f"compute-sanitizer {tool}", "TIMEOUT")


def bench_summary(rows):
    """One table row per shape from bench_ops' JSON: the kernel's times, GB/s and % of the copy of
    the same bytes, and how many times faster it is than each other implementation."""
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["impl"]] = r
    for shape, impls in by_shape.items():
        k = impls.get("**cuda kernel**")
        if k is None or k["note"] or not k.get("fb_ms"):
            record(f"bench {shape}", "FAIL", k["note"] if k else "no kernel row (bench ended early)")
            continue
        vs = [f"{name.split(' of ')[0]} {o['fwd_ms'] / k['fwd_ms']:.1f}x/{o['fb_ms'] / k['fb_ms']:.1f}x"
              for name, o in impls.items() if name != "**cuda kernel**" and not o["note"] and o.get("fb_ms")]
        record(f"bench {shape}", "ok", f"fwd {k['fwd_ms']:.3f} ms {k['fwd_gbps']:.0f} GB/s "
               f"({k['fwd_pct_copy']:.0f}% of copy), fwd+bwd {k['fb_ms']:.3f} ms ({k['fb_pct_copy']:.0f}% of copy); "
               f"kernel faster than (fwd/fwd+bwd): " + ", ".join(vs))


def step_bench(deadline):
    """tools/bench_ops.py --device=cuda in a subprocess (its JSON is written after every row, so a
    timeout still leaves the rows measured so far)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bench.json"
        cmd = [sys.executable, str(ROOT / "tools" / "bench_ops.py"), "--device=cuda",
               "--ops=selective_scan,cross_scan", "--repeat=5", f"--json={path}"]
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=subprocess_env(),
                                 timeout=max(deadline - time.time(), 30))
            print(res.stdout[-8000:], flush=True)
            if res.returncode:
                record("bench_ops --device=cuda", "FAIL", res.stderr[-600:])
        except subprocess.TimeoutExpired:
            record("bench_ops --device=cuda", "TIMEOUT", "rows measured before the timeout follow")
        if path.exists():
            bench_summary(json.loads(path.read_text())["selective_scan"])


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
        row, failed = [], False
        for backend, batch in (("cuda", 128), ("reference", 8)):  # the reference path is timed at batch 8
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            target = torch.randint(0, 1000, (batch,), device="cuda")

            def step():
                with _common.force_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(model(x), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss
            try:
                step(); torch.cuda.synchronize(); t = time.time(); loss = step(); torch.cuda.synchronize()
                finite = bool(torch.isfinite(loss))
                failed |= not finite
                row.append(f"{backend} {batch / (time.time() - t):.0f} img/s (batch {batch})"
                           + ("" if finite else ", NON-FINITE loss"))
            except Exception as exc:
                failed = True
                row.append(f"{backend} failed: {type(exc).__name__}: {str(exc)[:150]}")
            if time.time() > deadline:
                break
        record(f"train step {name} (bf16 autocast)", "FAIL" if failed else "ok", "; ".join(row))
        del model, opt
        torch.cuda.empty_cache()


# ---- DCNv4 ----
DCNV4_CASES = [  # dtype, N, H, W, G, D, (kh, kw), stride, pad, dilation, offset_scale, remove_center
    ("float32", 2, 9, 11, 2, 16, (3, 3), 1, 1, 1, 1.0, False),    # vector path (8 channels per thread)
    ("float16", 2, 14, 14, 4, 16, (3, 3), 1, 1, 1, 1.0, False),
    ("bfloat16", 1, 28, 28, 8, 32, (3, 3), 1, 1, 1, 1.0, True),
    ("float32", 2, 7, 6, 3, 5, (3, 3), 2, 1, 2, 0.5, False),       # scalar path (D % 8 != 0)
    ("float16", 1, 10, 9, 2, 12, (5, 3), 1, 2, 1, 0.25, False),
    ("float32", 1, 6, 7, 1, 264, (3, 3), 1, 1, 1, 1.0, False),     # 33 chunks: the lanes loop
]


# FlashInternImage-T stages 1-2 (C = 64/128, 16 channels per group) and a wide-group case:
# dtype, N, H = W, G, D.
DCNV4_BENCH = [("float16", 64, 56, 4, 16), ("float16", 64, 28, 8, 16), ("float32", 64, 56, 4, 16),
               ("bfloat16", 32, 28, 4, 64)]


def dcnv4_inputs(g, dtype, N, H, W, G, D, kernel, stride, pad, dilation, scale, rc):
    import torch
    from py.ops.dcnv4 import _out_size
    kh, kw = kernel
    K = kh * kw - int(rc)
    Ho, Wo = _out_size(H, kh, stride, pad, dilation), _out_size(W, kw, stride, pad, dilation)
    P = -(-3 * G * K // 8) * 8
    from py.ops.dcnv4_cuda import random_offset_mask  # samples away from pixel edges
    dt = getattr(torch, dtype)
    mk = lambda *s: torch.randn(*s, generator=g).to(dt).cuda()
    conv = (kh, kw, stride, stride, pad, pad, dilation, dilation, G, D, scale, rc)
    return mk(N, H, W, G * D), random_offset_mask((N, Ho, Wo, P), dt, g).cuda(), mk(N, Ho, Wo, G * D), conv


def step_dcnv4(deadline):
    """The DCNv4 kernels called directly (dcnv4_cuda.kernel_forward/kernel_backward, not the op's
    self-check) against the float64 reference on the kernels' rounded inputs, outputs poisoned:
    deterministic backward twice (bitwise equal), atomic once; then the benchmark."""
    import torch
    from py.ops import dcnv4_cuda
    from py.ops.dcnv4 import _cfg, dcnv4_reference
    g = torch.Generator().manual_seed(int(time.time()))
    failures = 0
    for case in DCNV4_CASES:
        label = f"dcnv4 {case[0]} N{case[1]} {case[2]}x{case[3]} G{case[4]} D{case[5]} k{case[6]} s{case[7]}"
        if time.time() > deadline:
            record(label, "SKIPPED", "dcnv4 budget spent")
            continue
        try:
            value, om, gy, conv = dcnv4_inputs(g, *case)
            v64, o64 = value.double().requires_grad_(True), om.double().requires_grad_(True)
            ref = dcnv4_reference(v64, o64, *conv)
            want = [ref.detach(), *torch.autograd.grad(ref, (v64, o64), gy.double())]
            cfg = _cfg(value, om, *conv)
            runs = []
            for deterministic in (True, True, False):
                poison()
                runs.append([dcnv4_cuda.kernel_forward(value, om, cfg),
                             *dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic=deterministic)])
            rtol, atol = dcnv4_cuda._TOL[value.dtype]
            names = ("out", "grad_value", "grad_offset_mask")
            bad = {f"{n}{'' if i < 2 else ' (atomic)'}": f"{(a.double() - b).abs().max().item():.2g}"
                   for i, run in enumerate(runs) for n, a, b in zip(names, run, want)
                   if not torch.allclose(a.double(), b, rtol=rtol * 5, atol=atol * 5)}
            nondet = [n for n, a, b in zip(names, runs[0], runs[1]) if not torch.equal(a, b)]
            failures += bool(bad or nondet)
            record(label, "FAIL" if bad or nondet else "ok",
                   f"max |err| {bad}; nondeterministic {nondet}" if bad or nondet else "")
        except Exception as exc:
            failures += 1
            record(label, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
    record("dcnv4 correctness", "ok" if not failures else "FAIL", f"{failures} failing case(s)")
    dcnv4_bench(deadline)


def dcnv4_bench(deadline):
    """Forward and forward+backward of the kernels vs the grid_sample reference and vs a copy of the
    bytes the op must move (value, offset_mask read once, out written once; goal: forward >= 60%)."""
    import torch
    from py.ops import dcnv4_cuda
    from py.ops.dcnv4 import _cfg, dcnv4_reference
    from tools.bench_ops import copy_bandwidth, measure, nbytes
    sync = torch.cuda.synchronize
    bw = copy_bandwidth(torch.device("cuda"), sync, 5)
    g = torch.Generator().manual_seed(0)
    for dtype, N, H, G, D in DCNV4_BENCH:
        label = f"dcnv4 bench {dtype} N{N} {H}x{H} G{G}xD{D} 3x3"
        if time.time() > deadline:
            record(label, "SKIPPED", "dcnv4 budget spent")
            continue
        try:
            value, om, gy, conv = dcnv4_inputs(g, dtype, N, H, H, G, D, (3, 3), 1, 1, 1, 1.0, False)
            om = om * 0.5  # offsets of a trained layer: about a pixel
            cfg = _cfg(value, om, *conv)
            fwd = measure(lambda: dcnv4_cuda.kernel_forward(value, om, cfg), 10, sync)
            modes = {m: measure(lambda: (dcnv4_cuda.kernel_forward(value, om, cfg),
                                         dcnv4_cuda.kernel_backward(gy, value, om, cfg, deterministic=m == "det")),
                                5, sync) for m in ("det", "atomic")}
            ref = measure(lambda: dcnv4_reference(value, om, *conv), 3, sync)
            moved = nbytes(value, om, gy)  # gy has the output's size
            record(label, "ok", f"fwd {fwd * 1e3:.3f} ms {moved / fwd / 1e9:.0f} GB/s ({100 * moved / fwd / bw:.0f}% "
                   f"of copy), reference / kernel {ref / fwd:.1f}x; fwd+bwd {modes['det'] * 1e3:.3f} ms deterministic, "
                   f"{modes['atomic'] * 1e3:.3f} ms atomic")
            del value, om, gy
            torch.cuda.empty_cache()
        except Exception as exc:
            record(label, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")


# ---- SSD ----
SSD_CASES = [  # dtype, batch, L, heads, headdim, groups, dstate, chunk, causal, z, D, initial states, dt_limit
    ("bfloat16", 2, 3136, 8, 64, 1, 64, 256, True, False, "h", False, None),     # goal shape 1, smaller batch
    ("float16", 2, 300, 4, 64, 2, 128, 128, True, True, "hp", True, None),
    ("float32", 1, 150, 4, 80, 2, 70, 64, True, True, "h", True, None),          # every tile edge ragged (TF32)
    ("bfloat16", 1, 2049 + 77, 4, 64, 1, 64, 256, True, False, "h", True, (0.01, 0.5)),
    ("float32", 2, 600, 4, 32, 2, 64, 256, False, True, "h", False, None),       # non-causal (VSSD)
    ("bfloat16", 1, 1000, 2, 64, 1, 128, 256, False, False, None, False, None),
]
DEVICE = "cuda"  # the test runs the step on the CPU with the kernels' model in their place


def ssd_inputs(g, dtype, b, L, h, p, groups, n, causal, z, D, init):
    """Inputs in the kernels' types: activations in `dtype`, A/D/dt_bias/initial states float32."""
    import torch
    mk = lambda *s: torch.randn(*s, generator=g)
    act = lambda t: t.to(getattr(torch, dtype)).to(DEVICE)
    f32 = lambda t: t.to(DEVICE)
    return dict(x=act(mk(b, L, h, p)), dt=act(mk(b, L, h) * 0.5 - 1), A=f32(-torch.rand(h, generator=g) - 0.2),
                B=act(mk(b, L, groups, n) * 0.3), C=act(mk(b, L, groups, n) * 0.3),
                D=None if D is None else f32(mk(h) if D == "h" else mk(h, p)), z=act(mk(b, L, h, p)) if z else None,
                dt_bias=f32(mk(h) * 0.3), initial_states=f32(mk(b, h, p, n) * 0.5) if init else None)


def step_ssd(deadline):
    """The SSD kernels called directly (ssd_cuda.kernel_forward/kernel_backward, not the op's
    self-check) against the float64 reference on the kernels' rounded inputs, outputs poisoned, the
    backward twice (bitwise equal); then tools/bench_ssd_cuda.py's goal shapes until the deadline."""
    import torch
    from py.ops import ssd_cuda
    g = torch.Generator().manual_seed(int(time.time()))
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
    failures = 0
    bench_from = deadline - 0.6 * (deadline - time.time())  # 40% of the step for correctness
    for case in SSD_CASES:
        dtype, b, L, h, p, groups, n, chunk, causal, z, D, init, limit = case
        label = (f"ssd {'causal' if causal else 'non-causal'} {dtype} B{b} L{L} H{h}xP{p} G{groups} N{n} chunk{chunk}"
                 + (f" dt_limit{limit}" if limit else ""))
        if time.time() > bench_from:
            record(label, "SKIPPED", "ssd correctness budget spent")
            continue
        try:
            t = ssd_inputs(g, dtype, b, L, h, p, groups, n, causal, z, D, init)
            limit = limit or (0.0, float("inf"))
            kw = dict(chunk_size=chunk, softplus=True, causal=causal, dt_limit=limit)
            dy = torch.randn(t["x"].shape, generator=g).to(t["x"])
            dfinal = torch.randn(b, h, p, n, generator=g).to(DEVICE)
            leaves = {k: None if v is None else v.double().requires_grad_(True) for k, v in t.items()}
            y, final = ssd_cuda.reference(**leaves, **kw)
            present = [k for k in names if t[k] is not None]
            want = [y, final, *torch.autograd.grad([y, final], [leaves[k] for k in present], [dy.double(), dfinal.double()])]
            runs = []
            for _ in range(2):
                poison()
                ky, kfinal, pregate = ssd_cuda.kernel_forward(**t, **kw, save=True)
                grads = ssd_cuda.kernel_backward(dy, dfinal, **t, **kw, pregate=pregate)
                runs.append([ky, kfinal] + [gr for k, gr in zip(names, grads) if t[k] is not None])
            labels = ["y", "final_states"] + ["d" + k for k in present]
            err = {k: (a.double() - w).abs().max().item() / max(w.abs().max().item(), 1e-30)
                   for k, a, w in zip(labels, runs[0], want)}
            bad = {k: f"{e:.2g}" for k, e in err.items() if not e <= ssd_cuda._TOL[getattr(torch, dtype)]}
            nondet = [k for k, a, c in zip(labels, runs[0], runs[1]) if not torch.equal(a, c)]
            failures += bool(bad or nondet)
            record(label, "FAIL" if bad or nondet else "ok",
                   f"relative max |err| {bad}; nondeterministic {nondet}" if bad or nondet
                   else f"largest relative error {max(err.values()):.2g} ({max(err, key=err.get)})")
        except Exception as exc:
            failures += 1
            record(label, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
    record("ssd correctness", "ok" if not failures else "FAIL", f"{failures} failing case(s)")
    if DEVICE == "cuda":
        ssd_bench(deadline)


def ssd_bench(deadline):
    """tools/bench_ssd_cuda.py in a subprocess (its JSON is written after every row, so a timeout
    still leaves the rows measured so far), first goal shape only: the Triton op's first-call
    autotuning may take longer than this step's budget; the standalone bench measures both shapes."""
    from tools import bench_ssd_cuda
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "ssd_bench.json"
        cmd = [sys.executable, str(ROOT / "tools" / "bench_ssd_cuda.py"), "--repeat=5", "--shapes=0", f"--json={path}"]
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=subprocess_env(),
                                 timeout=max(deadline - time.time(), 20))
            print(res.stdout[-4000:], flush=True)
            if res.returncode:
                record("ssd bench", "FAIL", res.stderr[-600:])
        except subprocess.TimeoutExpired:
            record("ssd bench", "INCOMPLETE", "step budget spent (the Triton op autotunes on its first call); "
                   "rows measured before follow; run tools/bench_ssd_cuda.py alone for both shapes")
        rows = json.loads(path.read_text()) if path.exists() else []
    for shape, met, detail in bench_ssd_cuda.summary(rows):
        record(f"ssd bench {shape}", "ok" if met else "BELOW GOAL", detail)

def run_step(name, fn, *args):
    """A step that raises becomes one FAIL row; the check goes on with the next step."""
    try:
        return fn(*args)
    except Exception as exc:
        traceback.print_exc()
        record(name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
        return None


MAMBA_SSM_VERSION = "2.3.2.post1"  # the SSD bench's anchor (mamba_chunk_scan_combined)
MAMBA_SSM_SHA256 = "104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028"  # its sdist, pinned


def carry_mamba_ssm_triton(dest):
    """mamba_ssm's pure-Python Triton ops from its sdist on PyPI (pip download; MAMBA_SKIP_CUDA_BUILD
    keeps pip's metadata step from compiling anything): ops/triton/*.py and the two utils modules
    they import, under an empty package __init__ (the real one imports the CUDA extensions, which
    are not built). The GPU image has triton and einops."""
    import hashlib
    import tarfile
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               "-q", "-d", tmp, f"mamba-ssm=={MAMBA_SSM_VERSION}"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE"))
        sdists = list(pathlib.Path(tmp).glob("mamba_ssm-*.tar.gz"))
        if res.returncode or not sdists:
            sys.exit(f"error: --prepare could not download the mamba-ssm sdist: {res.stderr[-800:]}")
        digest = hashlib.sha256(sdists[0].read_bytes()).hexdigest()
        if digest != MAMBA_SSM_SHA256:
            sys.exit(f"error: the mamba-ssm {MAMBA_SSM_VERSION} sdist has sha256 {digest}, expected the pinned "
                     f"{MAMBA_SSM_SHA256}")
        keep = lambda name: (name.startswith("mamba_ssm/ops/triton/") and name.count("/") == 3
                             and name.endswith(".py")) or name in ("mamba_ssm/utils/torch.py",
                                                                   "mamba_ssm/utils/determinism.py")
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = member.name.split("/", 1)[-1]  # drop mamba_ssm-<version>/
                if member.isfile() and keep(name):
                    out = dest / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())
    for pkg in ("mamba_ssm", "mamba_ssm/ops", "mamba_ssm/utils"):  # (ops/triton/__init__.py is the sdist's)
        (dest / pkg / "__init__.py").write_text(f'"""mamba_ssm {MAMBA_SSM_VERSION}: its Triton ops only '
                                                '(carried by gpu_check --prepare)."""\n')


def prepare(dest=CARRY):
    """Copies mambapy and the CUTLASS/CuTe headers of this interpreter's environment into `dest`, and
    mamba_ssm's Triton ops from its sdist (`carry_mamba_ssm_triton`)."""
    import importlib.util
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copied = []
    spec = importlib.util.find_spec("mambapy")
    if spec is None:
        sys.exit("error: --prepare needs the pinned environment's interpreter (mambapy is not installed here): "
                 "~/.cache/visionssm/pyenv/*/bin/python tools/gpu_check.py --prepare")
    shutil.copytree(pathlib.Path(spec.origin).parent, dest / "mambapy",
                    ignore=shutil.ignore_patterns("__pycache__", "onnx"))
    copied.append("mambapy")
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None:
        sys.exit("error: --prepare needs nvidia-cutlass (the pinned environment has it)")
    src = pathlib.Path(list(spec.submodule_search_locations)[0]) / "source"
    # Only what tools/build_kernels.py reads: <cutlass_library>/source/{include,tools/util/include}.
    # An empty package marks the folder for its importlib.util.find_spec("cutlass_library").
    (dest / "cutlass_library").mkdir()
    (dest / "cutlass_library" / "__init__.py").write_text('"""CUTLASS headers carried by gpu_check --prepare."""\n')
    shutil.copytree(src / "include", dest / "cutlass_library" / "source" / "include")
    shutil.copytree(src / "tools" / "util" / "include", dest / "cutlass_library" / "source" / "tools" / "util" / "include")
    copied.append("CUTLASS headers")
    carry_mamba_ssm_triton(dest)
    copied.append(f"mamba_ssm {MAMBA_SSM_VERSION} Triton ops")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"[gpu_check] copied {', '.join(copied)} into {dest} ({size / 2**20:.1f} MiB); "
          "carry `.gpu_carry` to the GPU machine and run `python3 tools/gpu_check.py` there")


def use_carry():
    """On the GPU machine: the carried packages come first, here and in every subprocess."""
    if CARRY.is_dir():
        sys.path.insert(0, str(CARRY))
        record("carried packages", "ok", ", ".join(sorted(p.name for p in CARRY.iterdir())))
    else:
        record("carried packages", "MISSING", "no .gpu_carry/site: the build needs CUTLASS headers and the bench "
               "mambapy; run `tools/gpu_check.py --prepare` with the pinned interpreter, carry `.gpu_carry`")


def print_table():
    print("\n| step | result | detail |\n| --- | --- | --- |")
    for step, status, detail in RESULTS:
        print(f"| {step} | {status} | {detail.replace(chr(10), ' ')[:240]} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the extensions already built")
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole check (default 450)")
    parser.add_argument("--prepare", action="store_true",
                        help="copy mambapy, the CUTLASS headers and mamba_ssm's Triton ops into .gpu_carry/ "
                             "(run with the pinned interpreter)")
    parser.add_argument("--sanitize-case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.sanitize_case:
        sys.path.insert(0, str(CARRY))
        return sanitize_case()
    start = time.time()
    end = start + args.budget
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        use_carry()
        if not args.no_build and not run_step("build (sm_90a)", step_build, start + 0.3 * args.budget):
            return 1
        gpu_or_stop()
        run_step("correctness", step_correctness, start + 0.45 * args.budget)
        run_step("dcnv4", step_dcnv4, start + 0.52 * args.budget)
        run_step("ssd", step_ssd, start + 0.68 * args.budget)
        run_step("compute-sanitizer", step_sanitizer, start + 0.74 * args.budget)
        run_step("bench", step_bench, start + 0.88 * args.budget)
        run_step("train steps", step_models, end - 10)
        run_step("ops' first-call self-checks", record_self_checks)
    finally:
        print_table()
    return 1 if any(s in ("FAIL", "SPILLS", "TIMEOUT") for _, s, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
