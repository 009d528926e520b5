"""tools/bench_selective_scan_cuda.py (bench_ops --device=cuda) exercised on the CPU at tiny shapes:
the rows, the copy comparison, the anchor ratios, a failing implementation's row and the JSON that
tools/gpu_check.py reads. The CUDA kernel is replaced by the reference here; no GPU number is made."""
import json
import pathlib
import subprocess
import sys
import types

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools import bench_ops  # noqa: E402
from tools import bench_selective_scan_cuda as ssc  # noqa: E402

SHAPES = [("VMamba-like", 1, 4, 3, 6 * 5, 1, (6, 5)), ("Vim-like", 2, 1, 4, 20, 3, None)]


def _run(no_compile=True):
    rows = []
    args = types.SimpleNamespace(repeat=1, no_compile=no_compile)
    for stage in ("fast", "slow"):
        for name, batch, groups, dpg, L, N, hw in SHAPES:
            ssc.bench(rows, args, bench_ops.measure, lambda: None, name, batch, groups, dpg, L, N, hw=hw, dev="cpu",
                      stage=stage)
    return sorted(rows, key=lambda r: [s[0] for s in SHAPES].index(r["shape"].split(":")[0]))  # by shape


def test_rows_report_bandwidth_copy_share_and_anchor_ratios(monkeypatch, tmp_path):
    monkeypatch.setattr(ssc, "kernel", ssc.reference)  # the CPU stand-in for the CUDA kernels
    rows = _run()
    assert [r["impl"] for r in rows[:4]] == ["device-to-device copy of the same bytes", "**cuda kernel**",
                                             ssc.ANCHOR, "sequential reference"]
    assert len(rows) == 8
    for r in rows:
        assert r["note"] == "" and r["fwd_ms"] > 0 and r["fb_ms"] > 0, r
        assert r["fwd_gbps"] > 0 and r["fb_pct_copy"] > 0
    copy = rows[0]
    assert copy["fwd_pct_copy"] == pytest.approx(100) and copy["fb_pct_copy"] == pytest.approx(100)
    assert rows[2]["fwd_vs_anchor"] == pytest.approx(1) and rows[6]["fb_vs_anchor"] == pytest.approx(1)
    assert "fused cross-2D 6x5" in rows[0]["shape"] and "fused" not in rows[4]["shape"]
    text = ssc.markdown(rows)
    assert text.count("\n") == 1 + len(rows) and "% of copy" in text
    path = tmp_path / "rows.json"
    ssc.write_json(path, "header", rows)
    assert json.loads(path.read_text())["selective_scan"] == rows


def test_every_implementation_computes_the_same_scan():
    for name, batch, groups, dpg, L, N, hw in SHAPES:
        p = ssc.Problem(torch.device("cpu"), batch, groups, dpg, L, N, hw)
        want = ssc.reference(p)()
        for make in (ssc.mambapy_pscan, ssc.compiled_reference):
            torch.testing.assert_close(make(p)(), want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{make.__name__}: {m}")


def test_a_failing_implementation_gets_a_row_and_the_rest_still_run(monkeypatch):
    def broken(p):
        raise RuntimeError("no kernel here")
    monkeypatch.setattr(ssc, "kernel", broken)
    rows = _run()
    failed = [r for r in rows if r["note"]]
    assert [r["impl"] for r in failed] == ["**cuda kernel**"] * 2
    assert "RuntimeError: no kernel here" in failed[0]["note"]
    assert all(r["fwd_ms"] for r in rows if not r["note"])
    assert "failed: RuntimeError" in ssc.markdown(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_branch_stops_with_a_clear_message_without_a_gpu():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_ops.py"), "--device=cuda"], cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no usable CUDA device" in res.stderr and "nothing was measured" in res.stderr
