"""Loads the native extensions `cc.kernels.<name>`, however they were built.

Bazel puts them in runfiles; tools/build_kernels.py puts them in the source tree; the wheel holds
them as `visionssm._kernels.<name>` (tools/build_wheel.py renames the package imported below). Callers
only learn whether a module is available and, if not, why (never how it was built).
"""
import functools
import importlib

_REASONS = {}


@functools.lru_cache(maxsize=None)
def load(name):
    """Returns the extension module `cc.kernels.<name>`, or None (see `unavailable_reason`)."""
    try:
        return importlib.import_module("cc.kernels." + name)
    except ImportError as exc:
        _REASONS[name] = (f"native extension cc.kernels.{name} is not built or not loadable ({exc}); "
                          "build it with `./bazelw build //cc/kernels:" + name + "` or "
                          "`python tools/build_kernels.py`")
        return None


def unavailable_reason(name):
    """Why `load(name)` returned None, or None if it loaded."""
    return None if load(name) is not None else _REASONS.get(name)


def require(name):
    """Returns the module or raises RuntimeError saying why it is missing."""
    module = load(name)
    if module is None:
        raise RuntimeError(_REASONS[name])
    return module
