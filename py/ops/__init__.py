"""VisionSSM ops: PyTorch references, native CPU/CUDA kernels and their autograd Functions."""
from py.ops.hello import axpy_

__all__ = ["axpy_"]
