"""Trainer flags, config files and their resolution into one plain dict.

Precedence: command-line flags > `--config` file (YAML, keys are flag names) > flag defaults.
Every problem with flags, paths or configs ends the program with one clear line and exit code 2.
"""
import json
import pathlib
import sys
import time

from absl import flags

from py.training.paths import caller_path

FLAGS = flags.FLAGS

# Model and data.
flags.DEFINE_string("config", None, "YAML file of flag values (e.g. py/training/configs/vim_small.yaml); "
                    "flags given on the command line win")
flags.DEFINE_string("model", "vim_mnist", "registered model name (py.models.list_models())")
flags.DEFINE_string("model_kwargs", "{}", "JSON dict of model config overrides, e.g. '{\"depth\": 4}'")
flags.DEFINE_string("data_path", None, "ImageNet-style dataset root with train/ and val/ class folders; "
                    "empty: the embedded MNIST-5k")
flags.DEFINE_integer("img_size", None, "input resolution (default: 28 for MNIST-5k, 224 otherwise)")
flags.DEFINE_integer("in_chans", None, "input channels fed to the model (default: 1 for MNIST-5k, 3 otherwise)")
flags.DEFINE_float("val_fraction", 0.2, "MNIST-5k: stratified validation fraction")
flags.DEFINE_integer("limit_train", 0, "use only the first N training samples (0: all); for smoke tests")
flags.DEFINE_integer("num_workers", None, "data loader workers per process (default: CPUs-1, at most 8)")

# Schedule and optimisation.
flags.DEFINE_integer("epochs", 7, "training epochs")
flags.DEFINE_integer("batch_size", 32, "per-process batch size (global = batch_size × processes × accum_steps)")
flags.DEFINE_integer("accum_steps", 1, "gradient accumulation steps per optimizer step")
flags.DEFINE_float("lr", 4e-3, "peak learning rate (not rescaled by batch size: put the scaled value here)")
flags.DEFINE_float("min_lr", 1e-5, "final learning rate of the cosine schedule")
flags.DEFINE_float("warmup_epochs", 1.0, "linear warmup length in epochs")
flags.DEFINE_float("warmup_lr", 1e-6, "learning rate at step 0")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay (none on norms, biases, A_log, D, embeddings)")
flags.DEFINE_float("clip_grad", 5.0, "max gradient norm (0: off)")
flags.DEFINE_float("drop_path", 0.0, "stochastic depth rate passed to the model as drop_path_rate")
flags.DEFINE_float("label_smoothing", 0.0, "label smoothing (ignored when mixup/cutmix are on)")
flags.DEFINE_float("mixup", 0.0, "mixup alpha (0: off)")
flags.DEFINE_float("cutmix", 0.0, "cutmix alpha (0: off)")
flags.DEFINE_string("randaug", "", "timm RandAugment spec for ImageFolder data, e.g. rand-m9-mstd0.5-inc1")
flags.DEFINE_float("reprob", 0.0, "random erasing probability for ImageFolder data")
flags.DEFINE_float("ema_decay", 0.0, "EMA decay of the weights (0: off), evaluated alongside the model")
flags.DEFINE_enum("amp", "none", ["none", "bf16", "fp16"], "autocast dtype (fp16 uses a GradScaler; CUDA only)")
flags.DEFINE_bool("compile", False, "torch.compile the model")
flags.DEFINE_bool("deterministic", False, "deterministic algorithms (same seed ⇒ same weights, also across resume)")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_enum("device", "auto", ["auto", "cpu", "cuda"], "auto: CUDA if available")
flags.DEFINE_integer("threads", 0, "CPU threads for torch (0: torch's default)")

# DyVM fine-tuning.
flags.DEFINE_string("teacher_model", None, "DyVM: teacher model name (e.g. vim_small)")
flags.DEFINE_string("teacher_model_kwargs", "{}", "DyVM: JSON dict of teacher config overrides (as --model_kwargs)")
flags.DEFINE_string("teacher_checkpoint", None, "DyVM: teacher weights (.safetensors or torch file)")
flags.DEFINE_string("finetune", None, "initialise the model from these weights (student init for DyVM)")

# Outputs, checkpoints, robustness.
flags.DEFINE_string("output", None, "output directory (default: runs/<model>-<timestamp>)")
flags.DEFINE_string("resume", "auto", "'auto': continue from the latest good checkpoint in --output if any; "
                    "'none': start fresh; or a checkpoint/output directory")
flags.DEFINE_integer("ckpt_every_steps", 0, "also checkpoint every N optimizer steps (0: each epoch only)")
flags.DEFINE_integer("keep_checkpoints", 3, "how many checkpoints to keep")
flags.DEFINE_enum("on_nan", "stop", ["stop", "skip"], "non-finite loss: stop (exit 3) or skip the step")
flags.DEFINE_integer("max_steps", 0, "stop with a checkpoint after this many optimizer steps in total "
                     "(0: no limit); the schedule still spans --epochs, so --resume continues it exactly")
flags.DEFINE_bool("progress", True, "show a progress bar (rank 0, interactive or not)")


class ConfigError(Exception):
    """A bad flag value, path or config file: reported in one line, exit code 2."""


def apply_config_file():
    """Sets flags from --config for every flag not given on the command line."""
    if not FLAGS.config:
        return
    path = caller_path(FLAGS.config)
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    import yaml
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {exc}".replace("\n", " "))
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must be a mapping of flag names to values")
    for key, value in values.items():
        if key == "config" or key not in FLAGS:
            raise ConfigError(f"--config {path}: unknown flag {key!r}")
        if FLAGS[key].present:
            continue
        if key in ("model_kwargs", "teacher_model_kwargs") and isinstance(value, dict):
            value = json.dumps(value)
        try:
            setattr(FLAGS, key, value)
        except flags.IllegalFlagValueError as exc:
            raise ConfigError(f"--config {path}: bad value for {key}: {exc}")


def _json_dict(name):
    try:
        value = json.loads(getattr(FLAGS, name))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{name} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        raise ConfigError(f"--{name} must be a JSON object")
    return value


def resolve():
    """The run's configuration as a dict (written to <output>/config.json)."""
    apply_config_file()
    model_kwargs = _json_dict("model_kwargs")
    teacher_model_kwargs = _json_dict("teacher_model_kwargs")
    mnist = not FLAGS.data_path
    cfg = {flag.name: flag.value for flag in FLAGS.get_flags_for_module(sys.modules[__name__])}
    cfg.update(model_kwargs=model_kwargs, teacher_model_kwargs=teacher_model_kwargs, dataset="mnist5k" if mnist else "imagefolder",
               img_size=FLAGS.img_size or (28 if mnist else 224),
               in_chans=FLAGS.in_chans or (1 if mnist else 3))
    if FLAGS.data_path:
        cfg["data_path"] = str(caller_path(FLAGS.data_path))
    for name in ("teacher_checkpoint", "finetune"):
        if cfg[name]:
            cfg[name] = str(caller_path(cfg[name]))
            if not pathlib.Path(cfg[name]).exists():
                raise ConfigError(f"--{name} {cfg[name]} does not exist")
    if cfg["teacher_model"] and not cfg["teacher_checkpoint"]:
        raise ConfigError("--teacher_model needs --teacher_checkpoint (a randomly initialised teacher teaches nothing)")
    for name in ("epochs", "batch_size", "accum_steps"):
        if cfg[name] <= 0:
            raise ConfigError(f"--{name} must be > 0, got {cfg[name]}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg['lr']}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg["output"] = str(caller_path(FLAGS.output or f"runs/{FLAGS.model}-{stamp}"))
    return cfg


def parse_flags_or_exit(argv):
    """absl flags parser for app.run that reports errors in one line with exit code 2."""
    try:
        return FLAGS(argv)
    except flags.Error as exc:
        print(f"error: {exc} (see --helpfull)", file=sys.stderr)
        sys.exit(2)
