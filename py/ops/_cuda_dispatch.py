"""What every CUDA op in py.ops shares: launch-argument checks, the current stream, and the
first-call self-check.

The CUDA kernels have not yet run on a GPU (README, "CUDA kernels"). So the first call per
(op, dtype, device) runs the kernel on a tiny random problem against the float64 reference; if it
disagrees or fails, the op warns once, clearly, and uses the reference from then on.
"""
import warnings

import torch

from py.ops import _common

_VERIFIED = {}  # (op, dtype, device) -> bool


def stream_of(t):
    """The current CUDA stream of t's device, as the integer the extensions take."""
    return torch.cuda.current_stream(t.device).cuda_stream


def check_cuda_tensors(op, dtypes, **tensors):
    """ValueError/TypeError naming the argument unless every given tensor is a CUDA tensor on one
    device; the first one's dtype must be in `dtypes`."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    if first.device.type != "cuda":
        raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got {first_name} on {first.device}")
    if first.dtype not in dtypes:
        names = ", ".join(_common.dtype_name(d) for d in dtypes)
        raise TypeError(f"{op}: the CUDA kernel takes {first_name} with dtype in ({names}), got {first.dtype}")
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{op}: {name} must be on the same device as {first_name} ({first.device}), got {t.device}")


def self_check(op, dtype, device, run_kernel, run_reference, rtol, atol):
    """True if the kernel matched the reference on this (op, dtype, device) (checked once)."""
    key = (op, str(dtype), str(device))
    if key not in _VERIFIED:
        try:
            got, want = run_kernel(), run_reference()
            bad = [i for i, (g, w) in enumerate(zip(got, want))
                   if g is not None and not torch.allclose(g.double().cpu(), w.double().cpu(), rtol=rtol, atol=atol)]
            reason = f"outputs {bad} differ from the float64 reference" if bad else None
        except Exception as exc:  # a launch/CUDA error is a failed self-check, not a crash
            reason = f"{type(exc).__name__}: {exc}"
        _VERIFIED[key] = reason is None
        if reason is not None:
            warnings.warn(f"{op}: the CUDA kernel failed its self-check on {device} for {dtype} ({reason}); "
                          "using the PyTorch reference for this op, dtype and device from now on",
                          RuntimeWarning, stacklevel=4)
    return _VERIFIED[key]


def reset_self_checks():
    """Forget earlier self-check results (tests)."""
    _VERIFIED.clear()
