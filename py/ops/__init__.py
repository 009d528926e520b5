"""VisionSSM ops: PyTorch references, native CPU/CUDA kernels and their autograd Functions.

Each op takes `backend="auto"|"reference"|"cpu"|"cuda"`; see its module for shapes and formulas.
`force_backend(name)` (a context manager) makes every op inside it run `name`, e.g. "reference" for
graph capture.
"""
from py.ops._common import force_backend
from py.ops.cross_scan import cross_merge, cross_scan
from py.ops.dcnv4 import dcnv4
from py.ops.hello import axpy_
from py.ops.selective_scan import selective_scan
from py.ops.ssd import ssd

__all__ = ["axpy_", "cross_merge", "cross_scan", "dcnv4", "force_backend", "selective_scan", "ssd"]
