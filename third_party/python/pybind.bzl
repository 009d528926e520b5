"""`pybind_extension`: a pybind11 module as an importable `<name>.cpython-3XX-<platform>.so`.

The module is built next to its BUILD file, so `//cc/kernels:foo` imports as `cc.kernels.foo`.
Kernels receive raw pointers, shapes, strides and streams (torch's data_ptr()), so extensions
never link libtorch and do not depend on the torch version.
"""

load("@pyenv//:defs.bzl", "PY_EXT_SUFFIX")
load("@rules_cc//cc:defs.bzl", "cc_binary")
load("@rules_python//python:defs.bzl", "py_library")

def pybind_extension(name, srcs, deps = [], copts = [], linkopts = [], visibility = None, **kwargs):
    """Defines `<name><PY_EXT_SUFFIX>` (the shared object) and `<name>` (a py_library carrying it)."""
    so_name = name + PY_EXT_SUFFIX
    cc_binary(
        name = so_name,
        srcs = srcs,
        deps = deps + ["@pyenv//:pybind11"],
        copts = copts + ["-fvisibility=hidden"],
        linkopts = linkopts,
        linkshared = True,
        linkstatic = True,
        visibility = visibility,
        **kwargs
    )
    py_library(
        name = name,
        data = [":" + so_name],
        visibility = visibility,
    )
