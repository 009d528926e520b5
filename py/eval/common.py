"""Helpers shared by the eval tools: flag parsing (exit code 2), paths, device choice, model loading.

A model comes from a trainer run (runs/<name>/, its checkpoints/ or one checkpoints/step_*/ directory,
whose state.pt holds the run's resolved config) or from a single weights file plus a model name.
Results are written with py.training.checkpoint.write_json (temp file + fsync + rename).
"""
import json
import pathlib
import sys

import torch
from absl import flags

import py.models as models
from py.models import registry
from py.training import checkpoint
from py.training.paths import caller_path


class UsageError(Exception):
    """A bad flag value or path: reported in one line, exit code 2."""


def parse_flags_or_exit(argv):
    """absl parser for app.run: accepts --batch-size as --batch_size; errors → one line, exit 2."""
    fixed = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        fixed.append(arg)
    try:
        return flags.FLAGS(fixed)
    except flags.Error as exc:
        print(f"error: {exc} (see --helpfull)", file=sys.stderr)
        sys.exit(2)


def run_main(main_fn, argv):
    """Calls main_fn(); a UsageError or missing file ends the program with one line and exit code 2."""
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags are --name=value; see --helpfull)", file=sys.stderr)
        sys.exit(2)
    try:
        main_fn()
    except (UsageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def pick_device(kind):
    """torch.device for --device=auto|cpu|cuda; cuda without a visible GPU is a usage error."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda but torch sees no CUDA device (use --device=cpu)")
    return torch.device(kind)


def registered_cfg(name):
    """The default_cfg a model was registered with (create_model's own defaults are 224 / 1000 classes)."""
    if name not in models.list_models():
        raise UsageError(f"unknown --model {name!r}; known: {', '.join(models.list_models())}")
    return registry.registered_cfg(name)


def build_model(name, num_classes, img_size, in_chans=None, model_kwargs=None):
    """Builds a registered model; in_chans None keeps the model's own default (e.g. 1 for vim_mnist)."""
    kwargs = dict(model_kwargs or {})
    if in_chans is not None:
        kwargs.setdefault("in_chans", in_chans)
    try:
        return models.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot build --model={name} with img_size={img_size}, {kwargs}: {exc}")


def load_weights(path):
    """Weights named by --checkpoint: (run config or None, {label: state_dict}, step or None, source).

    Labels are "model" and "ema" for trainer checkpoints; a single file gets its stem as label when
    that is model/ema (e.g. checkpoints/step_*/ema.safetensors), else "weights".
    """
    path = caller_path(path)
    if not path.exists():
        raise UsageError(f"--checkpoint {path} does not exist")
    if path.is_file():
        return _load_file(path)
    if (path / "model.safetensors").is_file():
        found, states = path, checkpoint.load(path)
    else:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found, states = checkpoint.find_resumable(root)
        if states is None:
            raise UsageError(f"--checkpoint {path}: no loadable checkpoint (expected a trainer run directory "
                             "with checkpoints/step_*/model.safetensors and state.pt)")
    model_state, ema_state, train_state = states
    cfg = train_state.get("config") if isinstance(train_state, dict) else None
    cfg = cfg or _run_config_near(found)
    weights = {"model": model_state}
    if ema_state is not None:
        weights["ema"] = ema_state
    step = train_state.get("global_step") if isinstance(train_state, dict) else None
    return cfg, weights, step, str(found)


def _run_config_near(step_dir):
    """<run>/config.json for <run>/checkpoints/step_*/, when state.pt lacks the config."""
    candidate = pathlib.Path(step_dir).parent.parent / "config.json"
    return json.loads(candidate.read_text()) if candidate.is_file() else None


def _load_file(path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise UsageError(f"--checkpoint {path} is not a loadable torch file: {exc}".splitlines()[0])
        for key in ("model", "state_dict", "model_ema"):  # common wrappers (DeiT/timm style)
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--checkpoint {path} does not hold a state dict of tensors")
    sibling = path.parent / "state.pt"  # a file inside a trainer checkpoint: its run config applies
    cfg = None
    if sibling.is_file():
        cfg = torch.load(str(sibling), map_location="cpu", weights_only=False).get("config")
    label = path.stem if path.stem in ("model", "ema") else "weights"
    return cfg, {label: state}, None, str(path)


def load_state(model, state, source):
    """load_state_dict(strict) with a one-line error naming the source."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UsageError(f"--checkpoint {source} does not fit the model (check --model, --model_kwargs, "
                         f"--img_size, --in_chans): {detail[:400]}")
