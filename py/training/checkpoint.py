"""Crash-safe, verified checkpoints that load without unpickling, and the run directory's lock.

Layout under <output>/:
    train.lock                           PID and host of the trainer using this directory (flock'ed)
    checkpoints/step_000001234/          one checkpoint (format py.models.weights.FORMAT):
        model.safetensors, ema.safetensors (EMA on)   weights
        train_state.pt                   step, epoch, RNG, optimizer, scaler: tensors, dicts, lists,
                                         tuples, str/int/float/bool/None only (torch.load weights_only=True)
        config.json                      the run's resolved config
        manifest.json                    size and sha256 of every file above, written last
    checkpoints/latest                   the name of the newest complete checkpoint directory
    checkpoints/set_aside/step_N/        checkpoints a resume skipped (failed checks, or newer than the
                                         one resumed from): moved here, never deleted

A checkpoint is written into a temporary directory (.step_*), every file fsync'ed, the manifest
written, the directory fsync'ed and renamed into place (atomic on POSIX), and only then is `latest`
replaced (temp file + fsync + rename). Temporary leftovers of a killed save are removed at the next
start and save (by the lock holder only). Loading verifies the manifest's checksums, reads weights
from safetensors and checks them finite, and reads train_state.pt with weights_only=True. An older
checkpoint with a pickled state.pt is refused unless the caller passes trust_pickle=True.
"""
import errno
import json
import logging
import os
import pathlib
import random
import re
import shutil
import socket
import tempfile
import time

import numpy as np
import torch

from py.common import files
from py.models import weights

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
TRAIN_STATE = "train_state.pt"
CONFIG = "config.json"
OLD_STATE = "state.pt"  # format 1: pickled, never loaded without trust_pickle
SET_ASIDE = "set_aside"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class PickledCheckpoint(weights.WeightsError):
    """A format-1 checkpoint whose state.pt can only be read by unpickling it."""


class LockHeld(Exception):
    """Another live trainer holds the run directory's lock."""



# ----------------------------------------------------------------------------------------------
# The run directory's lock
# ----------------------------------------------------------------------------------------------
def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path):
    try:
        info = json.loads(pathlib.Path(path).read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(info):
    if not info.get("pid"):
        return "an unknown process"
    return f"PID {info['pid']}" + (f" on {info['host']}" if info.get("host") else "")


class RunLock:
    """An exclusive lock on a run directory: flock on <output>/train.lock, which records the holder's
    PID and host. The kernel drops a flock when its process dies, so a dead trainer's lock is taken
    over (on filesystems without flock, a holder whose PID no longer runs on this host)."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.fd = None

    def acquire(self):
        """Takes the lock; returns the info of a previous (dead) holder it took over, else None.
        Raises LockHeld naming the live holder."""
        import fcntl
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                holder = describe_holder(_read_holder(self.path))
                raise LockHeld(f"{self.path.parent} is in use by another trainer ({holder}, lock file {self.path}); "
                               "wait for it to finish or stop it, or use another --output")
            # No flock on this filesystem: fall back to the recorded PID.
            info = _read_holder(self.path)
            same_host = info.get("host") in (None, socket.gethostname())
            if info.get("pid") and info["pid"] != os.getpid() and (not same_host or _pid_alive(int(info["pid"]))):
                os.close(fd)
                raise LockHeld(f"{self.path.parent} is in use by another trainer ({describe_holder(info)}, lock file "
                               f"{self.path}; this filesystem has no flock, so a stale file must be removed by hand "
                               "if that process is gone)")
        previous = _read_holder(self.path)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return previous if previous.get("pid") and previous.get("pid") != os.getpid() else None

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # a clean exit leaves no holder behind (a killed one leaves its PID)
            except OSError:
                pass
            os.close(self.fd)  # drops the flock; the file stays (unlinking it would race a new holder)
            self.fd = None


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def pack_rng():
    """Every RNG state as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def unpack_rng(rng):
    """Restores what pack_rng() saved (and the tuple form of format 1, for trusted old checkpoints)."""
    torch.set_rng_state(rng["torch"])
    n, p = rng["numpy"], rng["python"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:
        np.random.set_state(n)
    if isinstance(p, dict):
        random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    else:
        random.setstate(p)
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _weights(state_dict):
    # safetensors wants contiguous tensors that share no storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def remove_temp(ckpt_root):
    """Removes leftovers of killed saves (.step_* dirs, .latest.* files). Call only with the lock held."""
    root = pathlib.Path(ckpt_root)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if entry.name.startswith(".step_") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        elif entry.name.startswith(".latest.") and (entry.is_file() or entry.is_symlink()):
            entry.unlink()
            removed.append(entry.name)
    return sorted(removed)


def _step_dir_names(root):
    return sorted((d for d in pathlib.Path(root).iterdir() if d.is_dir() and _STEP_DIR.match(d.name)),
                  key=lambda d: int(_STEP_DIR.match(d.name).group(1)))


def save(ckpt_root, step, model_state, ema_state, train_state, config, keep=3):
    """Writes checkpoint `step` atomically, points `latest` at it and prunes all but the `keep`
    newest checkpoints at or below `step` (keep 0: none pruned). Returns its directory."""
    from safetensors.torch import save_file

    ckpt_root = pathlib.Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_temp(ckpt_root)
    name = f"step_{step:09d}"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=str(ckpt_root)))
    try:
        save_file(_weights(model_state), str(tmp / weights.WEIGHT_FILES["model"]))
        if ema_state is not None:
            save_file(_weights(ema_state), str(tmp / weights.WEIGHT_FILES["ema"]))
        torch.save(train_state, str(tmp / TRAIN_STATE))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        weights.write_manifest(tmp, step)
        files.fsync_dir(tmp)
        final = ckpt_root / name
        old = None
        if final.exists():  # same step saved twice (e.g. signal right after a periodic save)
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=str(ckpt_root)))
            os.replace(final, old / name)
        os.replace(tmp, final)
        files.fsync_dir(ckpt_root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.atomic_write_text(ckpt_root / "latest", name + "\n")
    if keep > 0:
        older = [d for d in _step_dir_names(ckpt_root) if int(_STEP_DIR.match(d.name).group(1)) <= step]
        for d in older[:-keep]:
            shutil.rmtree(d, ignore_errors=True)
    return ckpt_root / name


def set_aside(ckpt_root, step_dir):
    """Moves a checkpoint dir into <ckpt_root>/set_aside/ (never deleting it); returns the new path."""
    dest_root = pathlib.Path(ckpt_root) / SET_ASIDE
    dest_root.mkdir(exist_ok=True)
    dest = dest_root / pathlib.Path(step_dir).name
    n = 1
    while dest.exists():
        dest = dest_root / f"{pathlib.Path(step_dir).name}.{n}"
        n += 1
    os.replace(step_dir, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class Loaded:
    """One verified checkpoint: weights, training state and the run config it was saved with."""

    def __init__(self, path, model_state, ema_state, train_state, config):
        self.path, self.model_state, self.ema_state = path, model_state, ema_state
        self.train_state, self.config = train_state, config


def _check_state_finite(obj, where):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise weights.WeightsError(f"{where} holds NaN or inf values (a diverged or corrupted checkpoint)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_state_finite(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_state_finite(v, f"{where}[{i}]")


def read_step_dir(step_dir, trust_pickle=False):
    """Loads and checks one checkpoint directory; raises WeightsError (PickledCheckpoint for an old
    format-1 dir without trust_pickle) saying what is wrong."""
    step_dir = pathlib.Path(step_dir)
    if not (step_dir / weights.WEIGHT_FILES["model"]).is_file():
        raise weights.WeightsError(f"{step_dir} has no {weights.WEIGHT_FILES['model']} (an incomplete checkpoint)")
    manifest_path = step_dir / weights.MANIFEST
    if manifest_path.is_file():
        ckpt = weights.read(step_dir)  # verifies every file's size and sha256 against the manifest
        try:
            listed = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise weights.WeightsError(f"{manifest_path} is unreadable ({exc})")
        if TRAIN_STATE not in listed:
            raise weights.WeightsError(f"{step_dir}: {TRAIN_STATE} is not listed in {weights.MANIFEST}")
        try:
            train_state = torch.load(str(step_dir / TRAIN_STATE), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors come in many types; weights_only refuses code
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise weights.WeightsError(f"{step_dir / TRAIN_STATE} cannot be loaded safely (weights_only=True): {first}")
    elif (step_dir / OLD_STATE).is_file():
        if not trust_pickle:
            raise PickledCheckpoint(
                f"{step_dir} is an older-format checkpoint whose {OLD_STATE} is a pickle, which can run arbitrary "
                "code when loaded; it is not loaded unless you trust it and pass --trust_pickle")
        ckpt = weights.read(step_dir)
        try:
            train_state = torch.load(str(step_dir / OLD_STATE), map_location="cpu", weights_only=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise weights.WeightsError(f"{step_dir / OLD_STATE} is unreadable ({first})")
    else:
        raise weights.WeightsError(f"{step_dir} has no {weights.MANIFEST} and no training state (an incomplete "
                                   "checkpoint)")
    needed = {"epoch", "step_in_epoch", "global_step", "optimizer", "rng"}
    if not isinstance(train_state, dict) or not needed <= set(train_state):
        raise weights.WeightsError(f"{step_dir}: its training state lacks step/optimizer/RNG entries")
    for label, state in ckpt.states.items():
        weights.check_finite(state, f"{step_dir}[{label}]")
    _check_state_finite(train_state.get("optimizer"), f"{step_dir}: optimizer state")
    config = ckpt.config if ckpt.config is not None else train_state.get("config")
    return Loaded(step_dir, ckpt.states["model"], ckpt.states.get("ema"), train_state, config)


def checkpoint_dirs(ckpt_root):
    """Every step_N/ dir under a checkpoints/ dir, most preferred first (`latest`, then by step),
    including incomplete ones (so that their existence is never mistaken for a fresh directory)."""
    root = pathlib.Path(ckpt_root)
    if not root.is_dir():
        return []
    preferred = weights.step_dirs(root)
    rest = [d for d in reversed(_step_dir_names(root)) if d not in preferred]
    return preferred + sorted(rest, key=lambda d: -int(_STEP_DIR.match(d.name).group(1)))


def find_good(ckpt_root, trust_pickle=False):
    """The first checkpoint under ckpt_root that passes every check: (Loaded or None,
    [(dir, reason), ...] of the ones skipped before it or, when none passed, of all)."""
    problems = []
    for cand in checkpoint_dirs(ckpt_root):
        try:
            return read_step_dir(cand, trust_pickle), problems
        except weights.WeightsError as exc:
            problems.append((cand, str(exc)))
    return None, problems
