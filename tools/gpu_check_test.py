"""tools/gpu_check.py on a machine without a GPU: it gets as far as it can (imports, the already
built extensions) and stops with a clear message and exit code 2 before the first GPU step."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run tools/gpu_check.py itself")
def test_stops_cleanly_without_a_gpu():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--no-build"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "no usable CUDA device (torch.cuda.is_available() is False)" in out
    assert "no kernel has run on a GPU" in out
    assert out.rstrip().splitlines()[-1].startswith("| GPU | STOP |")  # the table comes last


def test_build_step_targets_sm90a_with_both_front_door_extensions():
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    from tools.build_kernels import read_extensions
    cmd = gpu_check.build_command()
    assert cmd[cmd.index("--cuda-archs") + 1] == "90a"
    known = read_extensions()["EXTENSIONS"]
    for name in gpu_check.EXTENSIONS:
        assert name in cmd and known[name]["cuda_srcs"], name


def test_prepare_carries_mambapy_and_the_cutlass_headers_the_build_reads(tmp_path):
    """--prepare's folder alone (first on PYTHONPATH, as gpu_check sets it) gives mambapy's pscan and
    the CUTLASS include directories that tools/build_kernels.py passes to nvcc."""
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    dest = tmp_path / "site"
    gpu_check.prepare(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert size < 40 * 2**20, size  # the device tool carries 64 MiB with the working tree
    probe = ("import importlib.util, json, mambapy.pscan, tools.build_kernels as bk; "
             "print(json.dumps([mambapy.pscan.__file__, bk._package_include('cutlass_library', 'source')]))")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(dest), str(ROOT)])))
    assert res.returncode == 0, res.stderr
    pscan_file, cutlass_root = json.loads(res.stdout)
    assert pscan_file.startswith(str(dest)) and cutlass_root.startswith(str(dest))
    assert (pathlib.Path(cutlass_root) / "include" / "cute" / "layout.hpp").is_file()
    assert (pathlib.Path(cutlass_root) / "tools" / "util" / "include").is_dir()
    assert (dest / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py").is_file()  # the SSD bench's anchor


def test_bench_summary_rows_and_a_failing_kernel_row():
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    gpu_check.RESULTS.clear()
    row = lambda impl, f, fb, note="": dict(shape="S", impl=impl, fwd_ms=f, fb_ms=fb, fwd_gbps=100.0,
                                            fwd_pct_copy=50.0, fb_pct_copy=40.0, note=note)
    gpu_check.bench_summary([row("device-to-device copy of the same bytes", 1.0, 2.0), row("**cuda kernel**", 2.0, 5.0),
                             row("mambapy pscan", 20.0, 100.0), row("torch.compile(reference), per step", 1, 1, "failed: x")])
    gpu_check.bench_summary([dict(shape="T", impl="**cuda kernel**", fwd_ms=None, fb_ms=None, note="failed: boom")])
    (s1, st1, d1), (s2, st2, d2) = gpu_check.RESULTS
    assert (s1, st1) == ("bench S", "ok")
    assert "fwd 2.000 ms 100 GB/s (50% of copy)" in d1 and "mambapy pscan 10.0x/20.0x" in d1
    assert "device-to-device copy 0.5x/0.4x" in d1 and "torch.compile" not in d1
    assert (s2, st2, d2) == ("bench T", "FAIL", "failed: boom")


def test_correctness_step_passes_with_the_kernel_model_as_the_extension(monkeypatch):
    """gpu_check's correctness step, every case, on the CPU: the step-by-step model of the CUDA
    kernels stands in for the extension (py/ops/tests/selective_scan_cuda_model.py), the reference's
    cross-scan for the cross-scan kernels. Guards the script itself (it runs once, on 15 minutes of
    GPU time) and its tolerances; it says nothing about the compiled kernels."""
    import importlib
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    from py.ops import _cuda_dispatch, _native, cross_scan_cuda, selective_scan_cuda
    from py.ops.tests import selective_scan_cuda_model as model
    cs = importlib.import_module("py.ops.cross_scan")
    ext, require = model.FakeExtension(), _native.require
    monkeypatch.setattr(_native, "require", lambda n: ext if n == selective_scan_cuda.EXT else require(n))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(gpu_check, "poison", lambda: None)
    monkeypatch.setattr(cross_scan_cuda, "CrossScanCudaFn", type("S", (), {"apply": staticmethod(cs.cross_scan_reference)}))
    monkeypatch.setattr(cross_scan_cuda, "CrossMergeCudaFn",
                        type("M", (), {"apply": staticmethod(cs.cross_merge_reference)}))
    monkeypatch.setattr(gpu_check, "RESULTS", [])
    gpu_check.step_correctness(deadline=float("inf"))
    assert len(gpu_check.RESULTS) == 8 + 2 * 4 + 1
    assert [r for r in gpu_check.RESULTS if r[1] != "ok"] == []


def test_ssd_step_passes_with_the_kernel_model_as_the_extension(monkeypatch):
    """gpu_check's SSD correctness step on the CPU, two small cases (causal with dt_limit, non-causal),
    with the float64 model of the SSD kernels (py/ops/tests/ssd_cuda_model.py) as the extension under
    the real binding. Guards the step's plumbing and its comparison; it says nothing about the
    compiled kernels."""
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    from py.ops import _cuda_dispatch, _native, ssd_cuda
    from py.ops.tests import ssd_cuda_model as model
    ext, require = model.FakeExtension(), _native.require
    monkeypatch.setattr(_native, "require", lambda n: ext if n == ssd_cuda.EXT else require(n))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    monkeypatch.setattr(gpu_check, "poison", lambda: None)
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "SSD_CASES", [
        ("float32", 1, 100, 2, 16, 1, 24, 64, True, True, "h", True, (0.01, 0.5)),
        ("float32", 1, 70, 2, 8, 2, 8, 64, False, False, "hp", False, None)])
    monkeypatch.setattr(gpu_check, "RESULTS", [])
    gpu_check.step_ssd(deadline=time.time() + 1e6)
    assert [r[1] for r in gpu_check.RESULTS] == ["ok"] * 3, gpu_check.RESULTS


def test_dcnv4_step_passes_with_the_kernel_model_as_the_extension(monkeypatch):
    """gpu_check's DCNv4 step (correctness and bench) on the CPU, small cases of both chunk paths,
    with the thread-by-thread model of the DCNv4 kernels (py/ops/tests/dcnv4_cuda_model.py) as the
    extension under the real binding. Guards the step's plumbing and its comparison; it says
    nothing about the compiled kernels."""
    sys.path.insert(0, str(ROOT))
    from tools import bench_ops, gpu_check
    from py.ops import _cuda_dispatch, _native, dcnv4_cuda
    from py.ops.tests import dcnv4_cuda_model as model
    ext, require = model.FakeExtension(), _native.require
    monkeypatch.setattr(_native, "require", lambda n: ext if n == dcnv4_cuda.EXT else require(n))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench_ops, "copy_bandwidth", lambda dev, sync, repeat: 1e10)
    monkeypatch.setattr(gpu_check, "poison", lambda: None)
    monkeypatch.setattr(gpu_check, "DCNV4_CASES", [gpu_check.DCNV4_CASES[1][:1] + (1, 6, 5, 2, 16) + gpu_check.DCNV4_CASES[1][6:],
                                                   gpu_check.DCNV4_CASES[4]])
    monkeypatch.setattr(gpu_check, "DCNV4_BENCH", [("float32", 1, 5, 2, 8)])
    monkeypatch.setattr(gpu_check, "RESULTS", [])
    gpu_check.step_dcnv4(deadline=time.time() + 1e6)
    assert [r[1] for r in gpu_check.RESULTS] == ["ok"] * 4, gpu_check.RESULTS
    assert "% of copy" in gpu_check.RESULTS[-1][2]


def test_ssd_bench_summary_judges_the_goal():
    sys.path.insert(0, str(ROOT))
    from tools import bench_ssd_cuda as bench
    row = lambda impl, f, fb, note="": dict(shape="S", impl=impl, fwd_ms=f, fb_ms=fb, note=note)
    [(shape, met, detail)] = bench.summary([row("**cuda kernel**", 1.0, 3.0), row(bench.ANCHOR, 1.5, 4.2),
                                            row("torch.compile(chunked reference)", None, None, "skipped")])
    assert (shape, met) == ("S", True) and "1.50x/1.40x" in detail and "torch.compile" not in detail
    [(_, met, detail)] = bench.summary([row("**cuda kernel**", 1.0, 3.0), row(bench.ANCHOR, 1.5, 3.6)])
    assert not met and "NOT met" in detail  # 1.2x < 1.3x
    [(_, met, detail)] = bench.summary([row("**cuda kernel**", None, None, "failed: boom")])
    assert not met and detail == "failed: boom"
