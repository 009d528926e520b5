"""VisionSSM ops: PyTorch references, native CPU/CUDA kernels and their autograd Functions.

Each op takes `backend="auto"|"reference"|"cpu"|"cuda"`; see its module for shapes and formulas.
"""
from py.ops.cross_scan import cross_merge, cross_scan
from py.ops.dcnv4 import dcnv4
from py.ops.hello import axpy_
from py.ops.selective_scan import selective_scan
from py.ops.ssd import ssd

__all__ = ["axpy_", "cross_merge", "cross_scan", "dcnv4", "selective_scan", "ssd"]
