"""Runs a script, a module (-m) or a REPL with the project importable: `./bazelw run //:python -- ...`.

Paths are resolved from the directory `bazel run` was started in, and the script runs there.
"""
import code
import os
import runpy
import sys


def _project_root():
    # This file is <root>/tools/python_shell.py, both in runfiles and in a plain checkout.
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    root = _project_root()
    sys.path[:] = [root] + [p for p in sys.path if os.path.abspath(p or ".") != root]
    sys.modules.pop("py", None)  # pytest's legacy `py.py` must not shadow the project's `py` package
    # Child interpreters (torchrun workers, subprocesses) must find the project too.
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # ./bazelw records the caller's directory (it may start Bazel from the workspace root).
    workdir = os.environ.get("VISIONSSM_CALLER_DIR") or os.environ.get("BUILD_WORKING_DIRECTORY")
    if workdir:
        os.chdir(workdir)
    if not argv:
        code.interact(banner=f"VisionSSM Python {sys.version.split()[0]} (project root {root})",
                      local={"__name__": "__console__"})
        return
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.exit("usage: //:python -- -m MODULE [args]")
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    if argv[0] == "-c":
        sys.argv = ["-c"] + argv[2:]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        return
    script = os.path.abspath(argv[0])
    if not os.path.isfile(script):
        sys.exit(f"//:python: no such script: {argv[0]} (relative to {os.getcwd()})")
    sys.argv = [script] + argv[1:]
    sys.path.insert(1, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
