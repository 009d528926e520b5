"""VisionSSM ops: PyTorch references, native CPU/CUDA kernels and the custom ops over them.

Each op takes `backend="auto"|"reference"|"cpu"|"cuda"`; see its module for shapes and formulas.
The kernels are PyTorch custom ops, torch.ops.visionssm.<name> (py/ops/_library.py), registered by
importing this package, so torch.compile and torch.export keep them in their graphs.
`force_backend(name)` (a context manager) makes every op inside it run `name`, e.g. "reference";
`observe(callback)` hands every op call (name, bound arguments, output) made inside it
to the callback (py/ops/observe.py).
"""
from py.ops._common import force_backend
from py.ops.cross_scan import cross_merge, cross_scan
from py.ops.dcnv4 import dcnv4
from py.ops.hello import axpy_
from py.ops.observe import OpCall, observe
from py.ops.selective_scan import selective_scan
from py.ops.ssd import ssd

__all__ = ["OpCall", "axpy_", "cross_merge", "cross_scan", "dcnv4", "force_backend", "observe", "selective_scan",
           "ssd"]
