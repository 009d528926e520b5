"""Where user-given relative paths point: the directory the user ran the command in.

Flag-free on purpose, so that tools defining their own flags (py/eval) can share it with the trainer.
"""
import os
import pathlib


def caller_path(path):
    """Resolves a user-given relative path against the directory the user ran the command in (also
    under `bazel run`, which changes the working directory)."""
    if path is None:
        return None
    p = pathlib.Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    base = os.environ.get("VISIONSSM_CALLER_DIR") or os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd()
    return pathlib.Path(base) / p
