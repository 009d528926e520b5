"""The one weights path: every tool reads model weights through here.

    ckpt = weights.read("runs/vim")                   # run dir, checkpoints/, step dir, or a file
    label, state = ckpt.select("model")               # "model" (default) or "ema"
    weights.load_into(model, "vim_s.pth", adapt=True) # read, unwrap, convert, adapt, validate, load

Used by create_model(pretrained=), the trainer (--finetune, --teacher_checkpoint, resume) and every
eval tool, so they all accept the same inputs and fail with the same errors (WeightsError, a
ValueError whose message is one line or a key listing, meant to be shown to the user as is).

Reading, in order:
  1. read: .safetensors; a torch file (weights_only=True: nothing is ever unpickled unless the
     caller passes trust_pickle=True for that file); a trainer step dir (checkpoints/step_N/), a
     trainer run dir or its checkpoints/ dir (the newest step dir whose checksums verify).
  2. unwrap: official wrappers {"model": ..., "model_ema": ..., "state_dict": ...} become the labels
     "model" and "ema"; a trainer step dir has model.safetensors and ema.safetensors.
  3. strip prefixes ("module." from DDP, "_orig_mod." from torch.compile).
  4. convert official layouts (py.models.interop: renames and reshapes per family).
  5. adapt (fine-tuning only, as timm does): a classifier of another size is dropped and stays at
     its fresh init (one-line notice); the model's own `adapt_checkpoint(state)` handles the rest
     (Vim/DyVM: position embeddings resampled to the new grid; DyVM: predictors and block heads
     absent from a Vim checkpoint keep their init).
  6. validate: every floating tensor finite; keys and shapes exactly the model's.
  7. load (strict).

Trainer checkpoint directories (written by py.training.checkpoint) carry a manifest.json with the
size and sha256 of every file, written last; `verify_step_dir` checks it before anything is read.
"""
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Optional

import torch

from py.common.cli import UsageError
from py.models import interop

log = logging.getLogger(__name__)

FORMAT = "visionssm-checkpoint/2"
MANIFEST = "manifest.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors"}
LABELS = tuple(WEIGHT_FILES)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_WRAPPERS = (("model", "model"), ("state_dict", "model"), ("model_ema", "ema"))  # (key, our label)
_TRUST_HINT = ("it may hold pickled Python objects (which can run code when loaded); if you trust "
               "this file, allow unpickling it explicitly with --trust_pickle (Python: trust_pickle=True)")


class WeightsError(UsageError, ValueError):
    """Weights that cannot be read, verified or loaded; the message is meant for the user as is (a
    UsageError: command-line tools report it in one `error:` line with exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Trainer checkpoint directories: manifest and discovery
# ----------------------------------------------------------------------------------------------
def sha256_file(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(step_dir, step, extra=None):
    """Writes <step_dir>/manifest.json with the size and sha256 of every other file (fsync'ed).

    Call it last, on the temporary directory, before renaming it into place."""
    step_dir = pathlib.Path(step_dir)
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(step_dir.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = dict(format=FORMAT, step=int(step), files=files, **(extra or {}))
    path = step_dir / MANIFEST
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


def verify_step_dir(step_dir):
    """The manifest of a trainer step dir after checking every listed file's size and sha256.

    Raises WeightsError naming the first problem. A dir without a manifest was written by an older
    version (format 1): returns None, and callers read only its safetensors files."""
    step_dir = pathlib.Path(step_dir)
    path = step_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"unknown format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path} is unreadable ({exc})")
    for name, meta in sorted(files.items()):
        f = step_dir / name
        if not f.is_file():
            raise WeightsError(f"{step_dir}: {name} is listed in {MANIFEST} but missing")
        if f.stat().st_size != meta.get("bytes"):
            raise WeightsError(f"{step_dir}: {name} has {f.stat().st_size} bytes, {MANIFEST} says {meta.get('bytes')} "
                               "(truncated or modified)")
        if sha256_file(f) != meta.get("sha256"):
            raise WeightsError(f"{step_dir}: {name} does not match its sha256 in {MANIFEST} (corrupted or modified)")
    return manifest


def is_step_dir(path):
    path = pathlib.Path(path)
    return path.is_dir() and bool(_STEP_DIR.match(path.name)) and (path / WEIGHT_FILES["model"]).is_file()


def step_of(step_dir):
    m = _STEP_DIR.match(pathlib.Path(step_dir).name)
    return int(m.group(1)) if m else None


def step_dirs(ckpt_root):
    """Candidate step dirs under a checkpoints/ dir, most preferred first: the one `latest` names,
    then every step_N/ by descending N. Temporary (dot-prefixed) dirs are never candidates."""
    root = pathlib.Path(ckpt_root)
    if not root.is_dir():
        return []
    found = sorted((d for d in root.iterdir() if is_step_dir(d)), key=step_of, reverse=True)
    latest = root / "latest"
    if latest.is_file():
        try:
            named = root / latest.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is not None and named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def checkpoints_root(path):
    """<run>/checkpoints for a run dir, the dir itself for a checkpoints dir, else None."""
    path = pathlib.Path(path)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if (path / "latest").is_file() or any(is_step_dir(d) for d in path.iterdir()):
        return path
    return None


def run_config(step_dir):
    """The trainer run's resolved config for a step dir: its own config.json, else the run's
    <run>/config.json (JSON only: an old pickled state.pt is never opened for it)."""
    step_dir = pathlib.Path(step_dir)
    for candidate in (step_dir / "config.json", step_dir.parent.parent / "config.json"):
        if candidate.is_file():
            try:
                value = json.loads(candidate.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise WeightsError(f"{candidate} is not valid JSON ({exc})")
            if isinstance(value, dict):
                return value
    return None


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Checkpoint:
    """What a weights source holds: state dicts by label ("model", "ema"), prefixes stripped, in the
    file's own layout (official or ours); the trainer run's config and step when it came from one."""
    states: dict
    source: str
    config: Optional[dict] = None
    step: Optional[int] = None

    def select(self, weights="model"):
        """(label, state dict): weights="model" (the default: the trained weights themselves; a file
        with only EMA weights gives those) or "ema"."""
        if weights not in LABELS:
            raise WeightsError(f"weights must be one of {LABELS}, got {weights!r}")
        if weights in self.states:
            return weights, self.states[weights]
        if weights == "model" and len(self.states) == 1:
            return next(iter(self.states.items()))
        raise WeightsError(f"{self.source} has no {weights!r} weights (it has: {', '.join(self.states)})")


def _strip_prefixes(state):
    try:
        return interop.strip_prefixes(state)
    except ValueError as exc:
        raise WeightsError(str(exc))


def _check_tensors(state, source):
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{source} holds no state dict of tensors")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: entries that are not named tensors: {bad[:10]} (is this a state dict?)")
    return state


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable .safetensors file ({' '.join(str(exc).split())[:200]})")
    return _check_tensors(state, path)


def _read_torch_file(path, trust_pickle):
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # pickle and zip errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if not trust_pickle and "weights_only" in str(exc):
            raise WeightsError(f"{path} was refused by the safe loader (weights_only=True): {_TRUST_HINT}")
        raise WeightsError(f"{path} is not a .safetensors or torch checkpoint ({type(exc).__name__}: {first})")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    states = {}
    for key, label in _WRAPPERS:
        if isinstance(obj.get(key), dict) and label not in states:
            states[label] = obj[key]
    if not states:
        states["model"] = obj
    return {label: _strip_prefixes(_check_tensors(s, f"{path}[{label}]")) for label, s in states.items()}


def _read_step_dir(step_dir):
    manifest = verify_step_dir(step_dir)
    states = {label: _strip_prefixes(_read_safetensors(step_dir / name))
              for label, name in WEIGHT_FILES.items() if (step_dir / name).is_file()}
    step = manifest["step"] if manifest else step_of(step_dir)
    return Checkpoint(states, str(step_dir), run_config(step_dir), step)


def read(source, trust_pickle=False):
    """Reads a weights source (see the module doc) into a Checkpoint; WeightsError if unusable."""
    path = pathlib.Path(source)
    if not path.exists():
        raise WeightsError(f"weights not found: {path} does not exist")
    if path.is_dir():
        if is_step_dir(path):
            return _read_step_dir(path)
        root = checkpoints_root(path)
        if root is None:
            raise WeightsError(f"{path} is neither a weights file nor a trainer run directory (expected "
                               "checkpoints/step_*/model.safetensors inside)")
        problems = []
        for cand in step_dirs(root):
            try:
                ckpt = _read_step_dir(cand)
                for label, state in ckpt.states.items():
                    check_finite(state, f"{cand}[{label}]")
            except WeightsError as exc:
                problems.append(str(exc))
                log.warning("skipping checkpoint %s: %s", cand, exc)
                continue
            if problems:
                print(f"note: using {cand}: {len(problems)} newer checkpoint(s) failed verification "
                      f"({problems[0]})", flush=True)
            return ckpt
        raise WeightsError(f"{path}: no usable checkpoint" + (f" ({'; '.join(problems)})" if problems else
                                                              " (no checkpoints/step_*/model.safetensors)"))
    if path.suffix == ".safetensors":
        state = _strip_prefixes(_read_safetensors(path))
        step_dir = path.parent
        label = path.stem if path.stem in LABELS else "model"
        if is_step_dir(step_dir) and path.name in WEIGHT_FILES.values():
            verify_step_dir(step_dir)  # a file inside a trainer checkpoint: its checksums apply
            return Checkpoint({label: state}, str(path), run_config(step_dir), step_of(step_dir))
        return Checkpoint({label: state}, str(path))
    return Checkpoint(_read_torch_file(path, trust_pickle), str(path))


# ----------------------------------------------------------------------------------------------
# Converting, adapting, validating, loading
# ----------------------------------------------------------------------------------------------
def check_finite(state, source):
    """Raises WeightsError if any floating tensor holds NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{source}: {len(bad)} tensor(s) hold NaN or inf values, e.g. {bad[:5]} "
                           "(a diverged or corrupted checkpoint)")


def classifier_prefix(model):
    """State-dict prefix of the model's classifier ("head.", "classifier.head."), or None."""
    get = getattr(model, "get_classifier", None)
    head = get() if get is not None else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head and name:
            return name + "."
    return None


def _adapt(model, state, notices):
    """Fine-tuning adaptation: a classifier of another size keeps the model's fresh init; the
    family's adapt_checkpoint handles position embeddings and modules new to the model."""
    ours = model.state_dict()
    prefix = classifier_prefix(model)
    if prefix:
        head = {k: v for k, v in state.items() if k.startswith(prefix)}
        if head and any(k not in ours or tuple(v.shape) != tuple(ours[k].shape) for k, v in head.items()):
            got = next((v.shape[0] for k, v in head.items() if k.endswith("weight")), "?")
            notices.append(f"classifier {prefix[:-1]} re-initialised: the checkpoint has {got} classes, "
                           f"the model {getattr(model, 'num_classes', '?')}")
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({k: v for k, v in ours.items() if k.startswith(prefix)})
    adapt = getattr(model, "adapt_checkpoint", None)
    if adapt is not None:
        state = adapt(dict(state), notices)
    return state


def prepare(model, state, adapt=False, source="checkpoint", notices=None):
    """A state dict ready for model.load_state_dict(strict=True): converted from the official layout,
    adapted for fine-tuning if asked, checked finite and against the model's keys and shapes."""
    notices = [] if notices is None else notices
    try:
        state = dict(interop.to_ours(model, state))
    except ValueError as exc:
        raise WeightsError(f"{source}: {exc}")
    if adapt:
        state = _adapt(model, state, notices)
    check_finite(state, source)
    try:
        interop.check_state_dict(model, state, what=f"{type(model).__name__} (weights from {source})")
    except interop.CheckpointMismatch as exc:
        raise WeightsError(str(exc)) from None
    return state


def load_state(model, state, adapt=False, source="checkpoint"):
    """prepare() then a strict load; prints each adaptation notice in one line. Returns the notices."""
    notices = []
    state = prepare(model, state, adapt, source, notices)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
    if missing or unexpected:  # prepare() already checked; this only guards against a model bug
        raise WeightsError(f"{source}: missing {missing[:10]}, unexpected {unexpected[:10]}")
    for note in notices:
        print(f"note: {note}", flush=True)
    return notices


def load_into(model, source, weights="model", adapt=False, trust_pickle=False):
    """Reads `source` and loads its `weights` ("model" or "ema") into `model`. Returns the Checkpoint."""
    if source is True:
        raise WeightsError("pretrained=True needs a weights hub, which this project does not use: pass "
                           "the path of a local file instead, e.g. create_model(name, pretrained='w.safetensors'), "
                           "timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="
                           "'w.safetensors')) or --finetune=PATH")
    ckpt = read(source, trust_pickle)
    label, state = ckpt.select(weights)
    load_state(model, state, adapt, f"{ckpt.source}[{label}]" if len(ckpt.states) > 1 else ckpt.source)
    return ckpt
