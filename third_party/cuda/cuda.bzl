"""`cuda_library`: compiles .cu files with nvcc into a PIC static library that provides CcInfo.

It links like any cc_library (alwayslink, so kernels' registrations survive), and carries the
static CUDA runtime, so a pybind11 extension that depends on it needs no libcudart.so and imports
on machines without a GPU. Include paths, defines and headers come from `deps` (e.g. @pyenv//:cutlass).
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")
load("@bazel_tools//tools/build_defs/cc:action_names.bzl", "ACTION_NAMES")

def _gencode_flags(archs):
    flags = []
    for arch in archs:
        flags.append("-gencode=arch=compute_%s,code=sm_%s" % (arch, arch))
    return flags

def _cuda_library_impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    feature_configuration = cc_common.configure_features(
        ctx = ctx,
        cc_toolchain = cc_toolchain,
        requested_features = ctx.features,
        unsupported_features = ctx.disabled_features,
    )
    dep_infos = [dep[CcInfo] for dep in ctx.attr.deps]
    deps_info = cc_common.merge_cc_infos(cc_infos = dep_infos)
    cctx = deps_info.compilation_context

    args = ["-Xcompiler=-fPIC", "-ccbin", cc_toolchain.compiler_executable]
    args += ctx.attr.nvcc_flags + _gencode_flags(ctx.attr.archs)
    args += ["-D" + d for d in cctx.defines.to_list()]
    args += ["-I" + p for p in cctx.includes.to_list() + cctx.quote_includes.to_list()]
    args += ["-isystem=" + p for p in cctx.system_includes.to_list()]
    args += ["-I."]  # workspace-relative includes: #include "cc/kernels/..."

    inputs = depset(ctx.files.hdrs, transitive = [cctx.headers, cc_toolchain.all_files])
    objects, reports = [], []
    for src in ctx.files.srcs:
        stem = src.basename[:-len(src.extension) - 1]
        obj = ctx.actions.declare_file("_objs/%s/%s.pic.o" % (ctx.label.name, stem))
        # nvcc's stderr (with -Xptxas=-v: registers, shared memory, stack and spills per kernel and
        # architecture) is kept as <stem>.ptxas.txt for tests; on failure it is replayed.
        report = ctx.actions.declare_file("_objs/%s/%s.ptxas.txt" % (ctx.label.name, stem))
        ctx.actions.run_shell(
            command = 'report="$1"; shift; "$@" 2> "$report" || { status=$?; cat "$report" >&2; exit $status; }',
            arguments = [report.path, ctx.attr.nvcc] + args + ["-c", src.path, "-o", obj.path],
            inputs = depset([src], transitive = [inputs]),
            outputs = [obj, report],
            mnemonic = "NvccCompile",
            progress_message = "nvcc %s (%s)" % (src.short_path, ", ".join(["sm_" + a for a in ctx.attr.archs])),
            use_default_shell_env = True,
        )
        objects.append(obj)
        reports.append(report)

    archive = ctx.actions.declare_file("lib%s.pic.a" % ctx.label.name)
    ar = cc_common.get_tool_for_action(
        feature_configuration = feature_configuration,
        action_name = ACTION_NAMES.cpp_link_static_library,
    )
    ctx.actions.run(
        executable = ar,
        arguments = ["rcsD", archive.path] + [o.path for o in objects],
        inputs = depset(objects, transitive = [cc_toolchain.all_files]),
        outputs = [archive],
        mnemonic = "NvccArchive",
        use_default_shell_env = True,
    )
    library = cc_common.create_library_to_link(
        actions = ctx.actions,
        feature_configuration = feature_configuration,
        cc_toolchain = cc_toolchain,
        pic_static_library = archive,
        alwayslink = True,
    )
    own = CcInfo(
        compilation_context = cc_common.create_compilation_context(headers = depset(ctx.files.hdrs)),
        linking_context = cc_common.create_linking_context(
            linker_inputs = depset([cc_common.create_linker_input(
                owner = ctx.label,
                libraries = depset([library]),
            )]),
        ),
    )
    # Own archive first, then deps (e.g. the static CUDA runtime) so the static link resolves.
    return [
        DefaultInfo(files = depset([archive])),
        OutputGroupInfo(ptxas_reports = depset(reports)),
        cc_common.merge_cc_infos(cc_infos = [own] + dep_infos),
    ]

cuda_library = rule(
    implementation = _cuda_library_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"], mandatory = True),
        "hdrs": attr.label_list(allow_files = [".h", ".hpp", ".cuh"]),
        "deps": attr.label_list(providers = [CcInfo]),
        "archs": attr.string_list(mandatory = True, doc = "e.g. [\"80\", \"90a\"]: sm_80 and sm_90a cubins"),
        "nvcc": attr.string(mandatory = True, doc = "absolute path of nvcc, from @cuda//:defs.bzl"),
        "nvcc_flags": attr.string_list(),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
    },
    fragments = ["cpp"],
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    incompatible_use_toolchain_transition = True,
)
