"""VisionSSM Python packages: ops (kernels), models, training, eval."""
import importlib
import sys


def __getattr__(name):
    # pytest does `import py` for its legacy `py.path`/`py.error` (normally a py.py shim in
    # site-packages). The repository root precedes site-packages, so this package answers instead
    # and forwards those two names to pytest's own implementation.
    if name in ("path", "error"):
        module = importlib.import_module("_pytest._py." + name)
        sys.modules["py." + name] = module
        return module
    raise AttributeError(f"module 'py' has no attribute {name!r}")
