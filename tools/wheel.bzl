"""`visionssm_wheel`: the wheel of tools/build_wheel.py from Bazel's sources and built extensions.

The output is a folder (`bazel-bin/<name>/`) holding `visionssm-<version>-<tag>.whl`: the version lives
in py/__init__.py and the tag comes from the interpreter, neither known when Bazel plans the build.
"""

def _pair(f):
    return "%s\t%s" % (f.short_path, f.path)

def _visionssm_wheel_impl(ctx):
    files = depset(transitive = [d[DefaultInfo].default_runfiles.files for d in ctx.attr.deps])
    inputs = ctx.actions.args()
    inputs.set_param_file_format("multiline")
    inputs.add_all(files, map_each = _pair)
    manifest = ctx.actions.declare_file(ctx.label.name + ".inputs")
    ctx.actions.write(manifest, inputs)
    out = ctx.actions.declare_directory(ctx.label.name)

    # The pinned interpreter itself, not a py_binary: its launcher needs a `python` on PATH.
    python = ctx.toolchains["@bazel_tools//tools/python:toolchain_type"].py3_runtime.interpreter_path
    ctx.actions.run(
        executable = python,
        arguments = [
            "-m",
            "tools.build_wheel",  # from the execroot: tools/ is a package there
            "--out_dir=" + out.path,
            "--inputs=" + manifest.path,
            "--lock=" + ctx.file.lock.path,
            "--extensions=" + ctx.file.extensions.path,
        ],
        inputs = depset([manifest, ctx.file.lock, ctx.file.extensions] + ctx.files._builder, transitive = [files]),
        outputs = [out],
        mnemonic = "VisionSSMWheel",
        progress_message = "Building the visionssm wheel",
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

visionssm_wheel = rule(
    implementation = _visionssm_wheel_impl,
    attrs = {
        "deps": attr.label_list(doc = "py targets whose files (py/ sources, built extensions) go in"),
        "lock": attr.label(allow_single_file = True, mandatory = True),
        "extensions": attr.label(allow_single_file = True, mandatory = True),
        "_builder": attr.label(default = "//tools:build_wheel_srcs"),
    },
    toolchains = ["@bazel_tools//tools/python:toolchain_type"],
)
