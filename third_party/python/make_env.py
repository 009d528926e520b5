#!/usr/bin/env python3
"""Creates (or reuses) the pinned Python environment described by requirements.lock.

The environment lives outside the Bazel output base and the clone, keyed by the lock's
hash, so a fresh clone or a new output base reuses it instead of reinstalling ~5.5 GB:

    $VISIONSSM_CACHE/pyenv/<sha256(lock)[:16]>    (default VISIONSSM_CACHE=~/.cache/visionssm)

Creation is crash-safe: packages are installed into a fresh directory that is marked complete
only after `pip freeze` has been checked against the lock; an unmarked directory is rebuilt.
A file lock serialises concurrent builders. Prints the interpreter path on the last line.
"""
import argparse
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv

COMPLETE_MARKER = ".visionssm-complete"


def cache_root():
    return pathlib.Path(os.environ.get("VISIONSSM_CACHE") or
                        pathlib.Path.home() / ".cache" / "visionssm")


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock_text):
    pins = {}
    for line in lock_text.splitlines():
        spec = line.split("#", 1)[0].split("--hash", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            pins[_canonical(name)] = version
    return pins


def frozen_pins(python):
    out = subprocess.run([python, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version
    # pip itself is the venv's seed, not a project dependency.
    pins.pop("pip", None)
    return pins


def check_freeze(python, lock_text):
    want, have = locked_pins(lock_text), frozen_pins(python)
    if want != have:
        missing = sorted(f"{k}=={v}" for k, v in want.items() if have.get(k) != v)
        extra = sorted(f"{k}=={v}" for k, v in have.items() if want.get(k) != v)
        raise SystemExit(f"environment does not match the lock\n  missing: {missing}\n  extra: {extra}")


def build(env_dir, lock_path):
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(
            f"the lock pins CPython 3.11 wheels but this is Python {sys.version.split()[0]} "
            f"({sys.executable}); put python3.11 first on PATH, or set VISIONSSM_PYTHON to an "
            "existing interpreter that already has the packages (see README).")
    if env_dir.exists():
        print(f"[visionssm] removing incomplete environment {env_dir}", file=sys.stderr)
        shutil.rmtree(env_dir)
    print(f"[visionssm] creating the pinned Python environment in {env_dir} "
          "(one time, a few minutes: torch is ~5 GB)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    python = str(env_dir / "bin" / "python3")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--require-hashes",
                    "--no-compile", "--disable-pip-version-check", "--progress-bar", "off",
                    "-r", str(lock_path)], check=True, stdout=sys.stderr)
    check_freeze(python, lock_path.read_text())
    (env_dir / COMPLETE_MARKER).write_text(lock_path.read_text())
    return python


def ensure(lock_path):
    lock_text = lock_path.read_text()
    key = hashlib.sha256(lock_text.encode()).hexdigest()[:16]
    root = cache_root() / "pyenv"
    root.mkdir(parents=True, exist_ok=True)
    env_dir = root / key
    with open(root / f"{key}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if (env_dir / COMPLETE_MARKER).exists():
            return str(env_dir / "bin" / "python3")
        return build(env_dir, lock_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", required=True, type=pathlib.Path)
    parser.add_argument("--check", action="store_true",
                        help="also verify pip freeze of an existing environment equals the lock")
    args = parser.parse_args()
    python = ensure(args.lock.resolve())
    if args.check:
        check_freeze(python, args.lock.read_text())
        print("[visionssm] pip freeze matches requirements.lock", file=sys.stderr)
    print(python)


if __name__ == "__main__":
    main()
