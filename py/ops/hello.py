"""Hello-world op of the build chain: in-place `y += alpha * x` on CPU (C++) or CUDA.

It exercises the whole path every real op takes: input validation, backend choice, the raw
pointer/stride ABI of the extensions, and the reference it is tested against.
"""
import torch

from py.ops import _common, _native

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def axpy_reference(y, x, alpha):
    """Plain PyTorch: what every backend must match."""
    y.add_(x, alpha=alpha)
    return y


def axpy_(y, x, alpha=1.0, backend="auto"):
    """In place: y += alpha * x for 1-D tensors of equal shape, dtype and device. Returns y."""
    _common.check_tensor("y", y, ndim=1, dtypes=_FLOATS, shape_doc="(n,)")
    _common.check_tensor("x", x, ndim=1, dtypes=(y.dtype,), shape_doc="(n,)")
    _common.check_shape("x", x, tuple(y.shape), shape_doc="(n,) like y")
    _common.check_same_device(y=y, x=x)
    native_dtype = y.dtype in ((torch.float32, torch.float64) if y.device.type == "cpu" else (torch.float32,))
    backend = _common.resolve_backend("axpy_", backend, y.device, cpu_dtype_ok=native_dtype,
                                      cuda_extension="hello_cuda" if native_dtype else None)
    if backend == "reference":
        return axpy_reference(y, x, alpha)
    if backend == "cpu":
        _native.require("hello_cpu").axpy(_common.dtype_name(y), y.numel(), float(alpha),
                                          x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0),
                                          torch.get_num_threads())
        return y
    if y.dtype != torch.float32:
        raise TypeError(f"axpy_: backend='cuda' supports float32, got {y.dtype}")
    with torch.cuda.device(y.device):
        stream = torch.cuda.current_stream(y.device).cuda_stream
        _native.require("hello_cuda").axpy(y.numel(), float(alpha), x.data_ptr(), x.stride(0),
                                           y.data_ptr(), y.stride(0), stream)
    return y
