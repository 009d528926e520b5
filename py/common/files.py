"""Paths and crash-safe file writing, shared by the trainer and the eval tools.

Nothing written here is ever half-written: files go to a temp file in the same directory, are
fsync'ed and renamed into place (atomic on POSIX); appended lines are fsync'ed one by one.
"""
import json
import os
import pathlib
import tempfile


def caller_path(path):
    """Resolves a user-given relative path against the directory the user ran the command in (also
    under `bazel run`, which changes the working directory)."""
    if path is None:
        return None
    p = pathlib.Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    base = os.environ.get("VISIONSSM_CALLER_DIR") or os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd()
    return pathlib.Path(base) / p


def fsync_dir(path):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` via a temp file in the same directory, fsync and rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def write_json(path, obj):
    """`obj` as indented, key-sorted JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_line(path, line):
    """Appends one line and fsyncs (metrics.jsonl: a crash loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
