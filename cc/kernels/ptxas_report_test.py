"""The CUDA kernels' ptxas reports (kept by the Bazel build, -Xptxas=-v): no spill and no stack
frame in the hot kernels, for every architecture built; prints registers/smem per kernel."""
import os
import pathlib

import pytest

from tools import ptxas_report
from tools.build_kernels import read_extensions

# Not resolve(): under Bazel the reports are in the runfiles tree, next to this file's symlink.
ROOT = pathlib.Path(os.path.abspath(__file__)).parent.parent.parent
CFG = read_extensions()
# Every .cu is compiled for every target of the build: CUDA_ARCHS, or VISIONSSM_CUDA_ARCHS if set.
_OVERRIDE = [a for a in os.environ.get("VISIONSSM_CUDA_ARCHS", "").replace(",", ";").split(";") if a]
EXPECTED_ARCHS = {"sm_" + a for a in (_OVERRIDE or CFG["CUDA_ARCHS"])}
REPORTS = sorted((ROOT / "cc" / "kernels" / "_objs").glob("*_cuda/*.ptxas.txt"))


def _reports_or_skip():
    if not REPORTS:
        pytest.skip("no ptxas reports: CUDA extensions are not built on this machine (nvcc not found)")
    return REPORTS


def test_every_cu_file_has_a_report_for_every_arch():
    reports = {p.name.removesuffix(".ptxas.txt"): ptxas_report.parse(p.read_text()) for p in _reports_or_skip()}
    for name, ext in CFG["EXTENSIONS"].items():
        for src in ext["cuda_srcs"]:
            stem = pathlib.PurePath(src).stem
            assert stem in reports, f"{name}: no ptxas report for {src}"
            archs = {k["arch"] for k in reports[stem]}
            assert archs == EXPECTED_ARCHS, f"{src}: compiled for {sorted(archs)}, expected {sorted(EXPECTED_ARCHS)}"


def test_default_archs_are_sm80_and_sm90a():
    assert CFG["CUDA_ARCHS"] == ["80", "90a"]
    assert "-Xptxas=-v" in CFG["NVCC_FLAGS"]


def test_hot_kernels_do_not_spill():
    kernels = [k for p in _reports_or_skip() for k in ptxas_report.parse(p.read_text())]
    hot = [k for k in kernels if ptxas_report.is_hot(k["kernel"])]
    assert hot, "no selective-scan/cross-scan kernel in the reports"
    print("\n" + ptxas_report.table(kernels))
    assert not ptxas_report.problems(kernels)


def test_parser_flags_a_spill():
    text = """ptxas info    : Compiling entry function '_Z25selective_scan_fwd_kernelv' for 'sm_80'
ptxas info    : Function properties for _Z25selective_scan_fwd_kernelv
    16 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size, 4096 bytes smem
"""
    [k] = ptxas_report.parse(text)
    assert (k["registers"], k["smem"], k["stack"], k["spill_stores"], k["spill_loads"]) == (255, 4096, 16, 16, 12)
    assert ptxas_report.problems([k])
