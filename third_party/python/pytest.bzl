"""`py_pytest`: a py_test that runs pytest over its sources (rules_python style test macro)."""

load("@rules_python//python:defs.bzl", "py_test")

def py_pytest(name, srcs, deps = [], data = [], args = [], **kwargs):
    py_test(
        name = name,
        srcs = srcs + ["//third_party/python:pytest_main.py"],
        main = "//third_party/python:pytest_main.py",
        args = args + ["$(location %s)" % s for s in srcs if s.split("/")[-1].startswith("test_")],
        deps = deps + ["@pyenv//pypi:pytest"],
        data = data,
        **kwargs
    )
