"""Shared input validation and backend choice for py.ops.

Every public op validates its arguments with these helpers, so errors read the same everywhere:
they name the argument and say the expected shape/dtype/device.
"""
import contextlib
import warnings

import torch

from py.ops import _native

BACKENDS = ("auto", "reference", "cpu", "cuda")
_warned = set()


def dtype_name(t):
    """The name the kernels take for a tensor's (or a dtype's) dtype: "float32", "bfloat16", ..."""
    return str(getattr(t, "dtype", t)).removeprefix("torch.")


def check_tensor(name, t, ndim=None, dtypes=None, shape_doc=None, optional=False):
    """Raises TypeError/ValueError naming `name` unless t is a tensor of `ndim` dims and a dtype in `dtypes`."""
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} is required{f' (shape {shape_doc})' if shape_doc else ''}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D{f' {shape_doc}' if shape_doc else ''}, "
                         f"got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def check_shape(name, t, expected, shape_doc=None):
    """Raises ValueError unless t.shape == expected (a tuple, None entries match anything)."""
    if t is None:
        return
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {shape_doc or want} = {want}, got {tuple(t.shape)}")


def check_same_device(**tensors):
    """Raises ValueError unless all given (non-None) tensors share one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} must be on the same device as {first_name} ({first.device}), "
                             f"got {t.device}")


def check_finite(name, t):
    """ValueError naming `name` if tensor `t` (or None) holds NaN/inf. Skipped while torch.compile or
    torch.export traces (a data-dependent branch cannot be captured; the eager call checks)."""
    if t is None or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")


_FORCED = []


@contextlib.contextmanager
def force_backend(backend):
    """Every op called inside this context runs `backend`, whatever backend its caller passed.

    E.g. "reference" to compare a model with its plain-PyTorch form. Graph capture needs none: the
    native kernels are custom ops (py/ops/_library.py) that torch.compile and torch.export keep.
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"force_backend needs one of {BACKENDS[1:]}, got {backend!r}")
    _FORCED.append(backend)
    try:
        yield
    finally:
        _FORCED.pop()


def resolve_backend(op, backend, device, cpu_dtype_ok=True, cuda_extension=None):
    """Maps backend='auto' to the best available implementation for `device`; checks explicit ones.

    CUDA tensors never fall back to a much slower path silently: the fallback warns once per op.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if _FORCED:  # force_backend(...) overrides whatever the caller (model) asked for
        backend = _FORCED[-1]
    if backend == "auto":
        if device.type == "cpu":
            return "cpu" if cpu_dtype_ok else "reference"
        if device.type == "cuda":
            if cuda_extension is not None and _native.load(cuda_extension) is not None:
                return "cuda"
            if op not in _warned:
                _warned.add(op)
                reason = (_native.unavailable_reason(cuda_extension) if cuda_extension
                          else "no CUDA kernel for this op yet")
                warnings.warn(f"{op}: CUDA tensors are running the PyTorch reference, which is much "
                              f"slower ({reason})", RuntimeWarning, stacklevel=3)
            return "reference"
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got {device}")
        if not cpu_dtype_ok:
            raise TypeError(f"{op}: backend='cpu' supports float32/float64 inputs only")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got {device}")
    return backend


class FlopRecorder:
    """Collects the true multiply-add counts that ops report while `flop_recording()` is active.

    `inside_op` is > 0 while an op's body runs: a FLOP counter that also watches aten ops
    (py.models.flops) skips them then, so an op is counted once, by its own formula.
    """

    def __init__(self):
        self.by_op = {}
        self.inside_op = 0

    def add(self, op, flops):
        self.by_op[op] = self.by_op.get(op, 0) + int(flops)

    @property
    def total(self):
        return sum(self.by_op.values())


_RECORDERS = []


@contextlib.contextmanager
def flop_recording():
    """Context in which ops report their FLOPs to the yielded FlopRecorder."""
    recorder = FlopRecorder()
    _RECORDERS.append(recorder)
    try:
        yield recorder
    finally:
        _RECORDERS.remove(recorder)


def active_flop_recorder():
    return _RECORDERS[-1] if _RECORDERS else None


@contextlib.contextmanager
def op_scope(op, flops_fn):
    """Public ops run their body in this scope; `flops_fn()` is evaluated only while recording."""
    recorder = active_flop_recorder()
    if recorder is None:
        yield
        return
    if recorder.inside_op == 0:
        recorder.add(op, flops_fn())
    recorder.inside_op += 1
    try:
        yield
    finally:
        recorder.inside_op -= 1
