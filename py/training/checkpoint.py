"""Crash-safe checkpoints: nothing written is ever half-written, and `latest` is always loadable.

Layout under <output>/checkpoints/:
    step_000001234/model.safetensors   weights (and ema.safetensors when EMA is on)
    step_000001234/state.pt            optimizer, scheduler, scaler, RNG states, counters, config
    latest                             the name of the newest complete checkpoint directory

A checkpoint is written into a temporary directory, every file fsync'ed, then renamed into place
(atomic on POSIX), and only then is `latest` replaced (temp file + fsync + rename). A kill -9 at any
moment leaves either the old or the new checkpoint as `latest`, never a torn one. Resume falls back
to the newest directory that loads if `latest` itself is unreadable.
"""
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile

import torch

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync_dir(path):
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
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def append_line(path, line):
    """Appends one line and fsyncs (metrics.jsonl: a crash loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def _weights(state_dict):
    # safetensors wants contiguous tensors that share no storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def save(ckpt_root, step, model_state, ema_state, train_state, keep=3):
    """Writes checkpoint `step` atomically, points `latest` at it and prunes all but `keep` newest."""
    from safetensors.torch import save_file

    ckpt_root = pathlib.Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=str(ckpt_root)))
    try:
        save_file(_weights(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_weights(ema_state), str(tmp / "ema.safetensors"))
        torch.save(train_state, str(tmp / "state.pt"))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = ckpt_root / name
        if final.exists():  # same step saved twice (e.g. signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "latest", name + "\n")
    for old in complete_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt_root / name


def complete_checkpoints(ckpt_root):
    """Checkpoint directories (oldest first) that hold at least weights and state."""
    root = pathlib.Path(ckpt_root)
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and _STEP_DIR.match(d.name)
            and (d / "model.safetensors").is_file() and (d / "state.pt").is_file()]
    return sorted(dirs, key=lambda d: int(_STEP_DIR.match(d.name).group(1)))


def load(path):
    """Loads one checkpoint directory: (model_state, ema_state or None, train_state)."""
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    model_state = load_file(str(path / "model.safetensors"))
    ema_path = path / "ema.safetensors"
    ema_state = load_file(str(ema_path)) if ema_path.is_file() else None
    train_state = torch.load(str(path / "state.pt"), map_location="cpu", weights_only=False)
    return model_state, ema_state, train_state


def find_resumable(ckpt_root):
    """The newest loadable checkpoint: `latest` first, else the newest complete directory.

    Returns (path, (model_state, ema_state, train_state)) or (None, None).
    """
    root = pathlib.Path(ckpt_root)
    candidates = []
    latest = root / "latest"
    if latest.is_file():
        candidates.append(root / latest.read_text().strip())
    candidates += list(reversed(complete_checkpoints(root)))
    seen = set()
    for cand in candidates:
        if cand in seen or not cand.is_dir():
            continue
        seen.add(cand)
        try:
            return cand, load(cand)
        except Exception as exc:  # a torn or corrupt file: try the next older one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", cand, exc)
    return None, None


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
