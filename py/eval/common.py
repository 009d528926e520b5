"""Helpers shared by the eval tools: flag parsing (exit code 2), paths, device choice, model loading.

A model comes from a trainer run (runs/<name>/, its checkpoints/ or one checkpoints/step_*/ directory,
with the run's resolved config in config.json) or from a single weights file plus a model name; both
are read by py.models.weights.
Results are written with py.training.checkpoint.write_json (temp file + fsync + rename).
"""
import sys

import torch
from absl import flags

import py.models as models
from py.models import registry
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


def define_weights_flags(choices=("model", "ema"), default="model"):
    """--weights and --trust_pickle, for tools that read a --checkpoint (call before parsing)."""
    flags.DEFINE_enum("weights", default, list(choices), "which weights of the checkpoint: model (the trained "
                      "weights) or ema (their exponential moving average)" + (", or all of them" if "all" in choices
                                                                              else ""))
    flags.DEFINE_bool("trust_pickle", False, "allow unpickling --checkpoint if it is a torch file that the safe "
                      "loader refuses (pickles can run code: only for files you trust)")


def load_weights(path):
    """Weights named by --checkpoint, read through py.models.weights (never unpickled unless
    --trust_pickle): (run config or None, {label: state_dict}, step or None, source).

    Labels are "model" and "ema" (an official file's "model_ema"); a run directory gives its newest
    checkpoint whose checksums verify, and its config."""
    from py.models import weights
    path = caller_path(path)
    trust = bool(flags.FLAGS["trust_pickle"].value) if "trust_pickle" in flags.FLAGS else False
    try:
        ckpt = weights.read(path, trust_pickle=trust)
    except weights.WeightsError as exc:
        raise UsageError(f"--checkpoint: {exc}")
    return ckpt.config, dict(ckpt.states), ckpt.step, ckpt.source


def load_state(model, state, source):
    """Converts (official layouts), validates and strictly loads `state`; one UsageError on failure."""
    from py.models import weights
    try:
        weights.load_state(model, state, adapt=False, source=source)
    except weights.WeightsError as exc:
        raise UsageError(f"--checkpoint {source} does not fit the model (check --model, --model_kwargs, "
                         f"--img_size, --in_chans): {exc}")
