"""Every extension listed in cc/kernels/extensions.bzl is built by Bazel and imports.

This ties the two front doors together: tools/build_kernels.py reads the same list, so a module
missing here would be missing from the no-Bazel build too.
"""
import pytest

from py.ops import _native
from tools.build_kernels import read_extensions

EXTENSIONS = read_extensions()["EXTENSIONS"]


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_extension_imports(name):
    module = _native.load(name)
    if module is None and EXTENSIONS[name]["cuda_srcs"]:
        reason = _native.unavailable_reason(name)
        pytest.skip(f"CUDA extension not built on this machine: {reason}")
    assert module is not None, _native.unavailable_reason(name)
    assert module.__name__ == "cc.kernels." + name


def test_flags_are_data_only():
    cfg = read_extensions()
    assert cfg["CUDA_ARCHS"], "CUDA_ARCHS must name at least one architecture"
    for name, ext in EXTENSIONS.items():
        assert set(ext) == {"srcs", "cuda_srcs", "hdrs", "cutlass"}, name
        assert ext["srcs"], f"{name} needs a pybind11 module source"
