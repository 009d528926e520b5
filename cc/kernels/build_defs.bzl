"""Turns cc/kernels/extensions.bzl into Bazel targets: one pybind11 module per extension."""

load("@cuda//:defs.bzl", "CUDA_ARCHS_OVERRIDE", "CUDA_ENABLED", "CUDA_REASON", "NVCC")
load("@rules_cc//cc:defs.bzl", "cc_library")
load("@rules_python//python:defs.bzl", "py_library")
load("//third_party/cuda:cuda.bzl", "cuda_library")
load("//third_party/python:pybind.bzl", "pybind_extension")
load(":extensions.bzl", "COMMON_HDRS", "CUDA_ARCHS", "CXX_FLAGS", "EXTENSIONS", "LINK_FLAGS", "NVCC_FLAGS")

def kernel_extensions():
    """Defines :common, one `<name>` py_library per extension, and :kernels (all that were built)."""
    cc_library(name = "common", hdrs = COMMON_HDRS)
    built, skipped, ptxas = [], [], []
    for name, ext in EXTENSIONS.items():
        deps = [":common"]
        if ext["cuda_srcs"]:
            if not CUDA_ENABLED:
                skipped.append(name)
                continue
            cuda_library(
                name = name + "_cuda",
                srcs = ext["cuda_srcs"],
                hdrs = ext["hdrs"] + COMMON_HDRS,
                deps = [":common", "@cuda//:cudart_static"] + (["@pyenv//:cutlass"] if ext["cutlass"] else []),
                archs = CUDA_ARCHS_OVERRIDE or CUDA_ARCHS,
                nvcc = NVCC,
                nvcc_flags = NVCC_FLAGS,
            )
            deps.append(":" + name + "_cuda")
            # nvcc's -Xptxas=-v reports of this extension, for //cc/kernels:ptxas_report_test.
            native.filegroup(name = name + "_ptxas", srcs = [":" + name + "_cuda"], output_group = "ptxas_reports")
            ptxas.append(":" + name + "_ptxas")
        pybind_extension(
            name = name,
            srcs = ext["srcs"] + [h for h in ext["hdrs"] if not h.endswith(".cuh")],  # .cuh: nvcc only
            deps = deps,
            copts = CXX_FLAGS,
            linkopts = LINK_FLAGS,
            visibility = ["//visibility:public"],
        )
        built.append(":" + name)
    if skipped:
        print("CUDA extensions skipped (%s): %s" % (CUDA_REASON, ", ".join(skipped)))
    py_library(name = "kernels", deps = built, visibility = ["//visibility:public"])
    native.filegroup(name = "ptxas_reports", srcs = ptxas, visibility = ["//visibility:public"])
