#!/usr/bin/env python3
"""Builds the native extensions without Bazel (e.g. on a GPU machine with no Bazel or network).

Reads the same list of sources and flags as Bazel, cc/kernels/extensions.bzl, and writes each
module next to its sources (cc/kernels/<name><EXT_SUFFIX>, git-ignored), so `import cc.kernels.<name>`
works from the repository root exactly as it does in Bazel's runfiles.

    python3 tools/build_kernels.py                  # every extension (CUDA ones if nvcc is found)
    python3 tools/build_kernels.py hello_cpu        # only these
    python3 tools/build_kernels.py --cuda-archs 90a # override CUDA_ARCHS (or VISIONSSM_CUDA_ARCHS)
    python3 tools/build_kernels.py --list           # print the commands without running them

Needs the running interpreter to have pybind11 (and nvidia-cutlass for CUTLASS kernels).
"""
import argparse
import ast
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELS = ROOT / "cc" / "kernels"
PTXAS_DIR = KERNELS / "_ptxas"  # nvcc -Xptxas=-v reports of the last build, one file per .cu (git-ignored)


def read_extensions(path=KERNELS / "extensions.bzl"):
    """Returns the top-level assignments of extensions.bzl (a data-only Starlark file)."""
    values = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            nvcc = pathlib.Path(os.environ[var]) / "bin" / "nvcc"
            return str(nvcc) if nvcc.exists() else None
    return shutil.which("nvcc")


def cuda_root(nvcc):
    """The toolkit root; asks nvcc itself, since e.g. /usr/local/bin/nvcc may be a wrapper script."""
    res = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null"], capture_output=True, text=True)
    for line in (res.stdout + res.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return pathlib.Path(line[len("#$ TOP="):].strip()).resolve()
    return pathlib.Path(nvcc).resolve().parent.parent


def _package_include(name, *parts):
    import importlib.util
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(pathlib.Path(list(spec.submodule_search_locations)[0], *parts))


def plan(names, cfg, archs, nvcc, out_dir):
    """Returns [(name, [commands], output)] with commands as argv lists; objects go to out_dir."""
    pybind = _package_include("pybind11", "include")
    if pybind is None:
        sys.exit("pybind11 is not installed for this interpreter: pip install pybind11==3.1.0")
    cutlass_root = _package_include("cutlass_library", "source")
    includes = ["-I" + str(ROOT), "-isystem", pybind, "-isystem", sysconfig.get_paths()["include"]]
    cxx = os.environ.get("CXX", "g++")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    jobs = []
    for name in names:
        ext = cfg["EXTENSIONS"][name]
        objects, commands = [], []
        for src in ext["cuda_srcs"]:
            obj = str(out_dir / f"{name}_{pathlib.Path(src).stem}.cu.o")
            cmd = [nvcc, "-Xcompiler=-fPIC", "-ccbin", cxx, *cfg["NVCC_FLAGS"],
                   *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs], *includes]
            if ext["cutlass"]:
                if cutlass_root is None:
                    sys.exit(f"{name} needs CUTLASS headers: pip install --no-deps nvidia-cutlass==4.2.0.0")
                cmd += ["-isystem", cutlass_root + "/include", "-isystem", cutlass_root + "/tools/util/include"]
            commands.append(cmd + ["-c", str(KERNELS / src), "-o", obj])
            objects.append(obj)
        for src in ext["srcs"]:
            obj = str(out_dir / f"{name}_{pathlib.Path(src).stem}.o")
            commands.append([cxx, "-fPIC", "-fvisibility=hidden", *cfg["CXX_FLAGS"], *includes,
                             "-c", str(KERNELS / src), "-o", obj])
            objects.append(obj)
        output = KERNELS / (name + suffix)
        link = [cxx, "-shared", "-o", str(output) + ".tmp", *objects, *cfg["LINK_FLAGS"]]
        if ext["cuda_srcs"]:
            root = cuda_root(nvcc)
            link += [f"-L{root}/lib64", f"-L{root}/targets/x86_64-linux/lib",
                     "-lcudart_static", "-ldl", "-lpthread", "-lrt"]
        commands.append(link)
        jobs.append((name, commands, output))
    return jobs


def run_job(job):
    name, commands, output = job
    compile_cmds, link = commands[:-1], commands[-1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(compile_cmds) or 1) as pool:
        results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), compile_cmds))
    for cmd, res in zip(compile_cmds, results):
        if res.returncode:
            return name, f"compile failed: {' '.join(cmd)}\n{res.stderr}"
        if "-Xptxas=-v" in cmd:  # keep the per-kernel resource report (tools/ptxas_report.py reads it)
            PTXAS_DIR.mkdir(exist_ok=True)
            src = pathlib.Path(cmd[cmd.index("-c") + 1])
            (PTXAS_DIR / f"{name}_{src.stem}.ptxas.txt").write_text(res.stderr)
    res = subprocess.run(link, capture_output=True, text=True)
    if res.returncode:
        return name, f"link failed: {' '.join(link)}\n{res.stderr}"
    os.replace(str(output) + ".tmp", output)  # atomic: a failed build never leaves a half module
    return name, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="extensions to build (default: all)")
    parser.add_argument("--cuda-archs", default=os.environ.get("VISIONSSM_CUDA_ARCHS", ""),
                        help="e.g. '90a' or '80;90a' (default: CUDA_ARCHS in extensions.bzl)")
    parser.add_argument("--no-cuda", action="store_true", help="skip extensions with CUDA sources")
    parser.add_argument("--list", action="store_true", help="print the commands, build nothing")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    cfg = read_extensions()
    unknown = [n for n in args.names if n not in cfg["EXTENSIONS"]]
    if unknown:
        sys.exit(f"unknown extension(s) {unknown}; known: {sorted(cfg['EXTENSIONS'])}")
    names = args.names or list(cfg["EXTENSIONS"])
    archs = [a for a in args.cuda_archs.replace(",", ";").split(";") if a] or cfg["CUDA_ARCHS"]
    nvcc = None if args.no_cuda else find_nvcc()
    cuda_names = [n for n in names if cfg["EXTENSIONS"][n]["cuda_srcs"]]
    if cuda_names and nvcc is None:
        reason = "--no-cuda" if args.no_cuda else "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
        print(f"[build_kernels] skipping CUDA extensions ({reason}): {', '.join(cuda_names)}")
        names = [n for n in names if n not in cuda_names]

    with tempfile.TemporaryDirectory(prefix="visionssm-kernels-") as tmp:
        jobs = plan(names, cfg, archs, nvcc, pathlib.Path(tmp))
        if args.list:
            for _, commands, _ in jobs:
                print("\n".join(" ".join(c) for c in commands))
            return
        failed = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for name, error in pool.map(run_job, jobs):
                print(f"[build_kernels] {name}: {'FAILED' if error else 'ok'}")
                if error:
                    print(error, file=sys.stderr)
                    failed.append(name)
    if failed:
        sys.exit(f"[build_kernels] failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
