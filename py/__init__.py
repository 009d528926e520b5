"""VisionSSM Python packages: ops (kernels), models, training, eval.

In the repository (Bazel, tools/build_kernels.py) the package is `py`; the wheel built by
tools/build_wheel.py installs the same sources as `visionssm`.
"""
import importlib
import sys

__version__ = "0.1.0"  # the one place the version is written (the wheel's version)

if __name__ == "py":
    def __getattr__(name):
        # pytest does `import py` for its legacy `py.path`/`py.error` (normally a py.py shim in
        # site-packages). The repository root precedes site-packages, so this package answers
        # instead and forwards those two names to pytest's own implementation. The wheel's
        # `visionssm` does not shadow anything, so it needs no forwarding.
        if name in ("path", "error"):
            module = importlib.import_module("_pytest._py." + name)
            sys.modules["py." + name] = module
            return module
        raise AttributeError(f"module 'py' has no attribute {name!r}")
