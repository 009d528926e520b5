"""Trainer flags, config files and their resolution into one plain dict.

Precedence: command-line flags > `--config` file (YAML, keys are flag names) > flag defaults; on a
resume, flags given neither way take the run's own value (its config.json).
Every value, whichever way it came, goes through its flag's parser and the same checks (`build`), so
a YAML value or a run's config.json is held to exactly the command line's rules. Every problem with
flags, paths or configs ends the program with one `error:` line and exit code 2 (ConfigError).
"""
import json
import math
import os
import pathlib
import stat
import sys
import time

from absl import flags

from py.common import cli
from py.common.files import caller_path

FLAGS = flags.FLAGS

# Model and data.
flags.DEFINE_string("config", None, "YAML file of flag values (e.g. py/training/configs/vim_small.yaml); "
                    "flags given on the command line win")
# --model, --model_kwargs, --trust_pickle, --device, --threads: the layer shared with the eval tools.
cli.define_model_flags(FLAGS, checkpoint=None, model_default="vim_mnist", model_kwargs_default="{}")
cli.define_runtime_flags(FLAGS)
flags.DEFINE_enum("task", "auto", ["auto", "classification", "detection", "segmentation"],
                  "what is trained; auto: the model's own task (mask_rcnn_* detection, upernet_* segmentation). "
                  "detection/segmentation without --model train mask_rcnn_vmamba_mnist/upernet_vmamba_mnist")
flags.DEFINE_string("data_path", None, "dataset root; classification: ImageNet-style train/ and val/ class folders; "
                    "detection: COCO (annotations/instances_{train,val}2017.json, train2017/, val2017/); "
                    "segmentation: ADE20K (images/ and annotations/ {training,validation}) or COCO instances. "
                    "Empty: the embedded MNIST-5k (digit canvases for detection/segmentation)")
flags.DEFINE_string("backbone_checkpoint", None, "detection/segmentation: backbone weights (a classification "
                    "checkpoint, ours or official, or an official detection/segmentation checkpoint's backbone.*)")
flags.DEFINE_bool("multiscale", False, "detection: the 3x recipe's multi-scale + crop augmentation in the data "
                  "(dense.md §1.5) instead of the model's fixed resize")
flags.DEFINE_integer("img_size", None, "input resolution, 1..4096 (default: 28 for MNIST-5k, 224 otherwise)")
flags.DEFINE_integer("in_chans", None, "input channels fed to the model, 1..64 (default: 1 for MNIST-5k, "
                     "3 otherwise; ImageFolder data is RGB: 3)")
flags.DEFINE_float("val_fraction", 0.2, "MNIST-5k: stratified validation fraction, in (0, 1)")
flags.DEFINE_integer("limit_train", 0, "use only the first N training samples (0: all); for smoke tests "
                     "(validation always uses the whole split, as the eval tools do)")
flags.DEFINE_integer("num_workers", None, "data loader workers per process, 0..256 (default: CPUs-1, at most 8)")

# Schedule and optimisation.
flags.DEFINE_integer("epochs", 12, "training epochs")
flags.DEFINE_integer("batch_size", 32, "per-process batch size (global = batch_size × processes × accum_steps)")
flags.DEFINE_integer("accum_steps", 1, "gradient accumulation steps per optimizer step")
flags.DEFINE_float("lr", 4e-3, "peak learning rate (not rescaled by batch size: put the scaled value here)")
flags.DEFINE_float("min_lr", 1e-5, "final learning rate of the cosine schedule (0 <= min_lr <= lr)")
flags.DEFINE_float("warmup_epochs", 0.5, "linear warmup length in epochs (0 <= warmup_epochs <= epochs)")
flags.DEFINE_float("warmup_lr", 1e-6, "learning rate at step 0")
flags.DEFINE_integer("warmup_steps", 0, "warmup length in optimizer steps; > 0 replaces --warmup_epochs "
                     "(the dense recipes: 1000 for Mask R-CNN, 1500 for UperNet)")
flags.DEFINE_enum("schedule", "cosine", ["cosine", "step", "poly"], "after warmup: cosine to --min_lr, step "
                  "(× --lr_step_factor after each of --lr_steps epochs; Mask R-CNN 1x/3x) or poly "
                  "(power --poly_power to --min_lr; UperNet)")
flags.DEFINE_string("lr_steps", "", "step schedule: comma-separated epochs after which the lr drops, e.g. 8,11")
flags.DEFINE_float("lr_step_factor", 0.1, "step schedule: lr factor per milestone, in (0, 1]")
flags.DEFINE_float("poly_power", 1.0, "poly schedule: power, > 0")
flags.DEFINE_enum("no_decay_rule", "default", ["default", "norm_names"], "which parameters get no weight decay: "
                  "default (1-D tensors, biases, A_log/D, embeddings) or norm_names (names containing norm, "
                  "absolute_pos_embed or relative_position_bias_table: the mmdet/mmseg recipes)")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay (none on norms, biases, A_log, D, embeddings)")
flags.DEFINE_float("layer_decay", 1.0, "layer-wise lr decay, in (0, 1] (1: off): layer i of L (embeddings 0, "
                   "head L-1, per family: py.models.layer_ids) trains at lr × layer_decay^(L-1-i)")
flags.DEFINE_float("clip_grad", 5.0, "max gradient norm (0: off)")
flags.DEFINE_float("drop_path", 0.0, "stochastic depth rate passed to the model as drop_path_rate, in [0, 1)")
flags.DEFINE_float("label_smoothing", 0.1, "label smoothing, in [0, 1) (ignored when mixup/cutmix are on; "
                   "detection/segmentation ignore this default and refuse the flag)")
flags.DEFINE_float("mixup", 0.0, "mixup alpha (0: off; on needs an even --batch_size)")
flags.DEFINE_float("cutmix", 0.0, "cutmix alpha (0: off; on needs an even --batch_size)")
flags.DEFINE_string("randaug", "", "timm RandAugment spec for ImageFolder data, e.g. rand-m9-mstd0.5-inc1")
flags.DEFINE_float("reprob", 0.0, "random erasing probability for ImageFolder data, in [0, 1]")
flags.DEFINE_float("color_jitter", 0.4, "colour jitter strength for ImageFolder data, >= 0 (timm's "
                   "create_transform; like timm it applies only while --randaug is off, as in the DeiT and "
                   "Swin pipelines)")
flags.DEFINE_integer("repeated_aug", 0, "repeated augmentation (DeiT: 3): each sample this many times per "
                     "epoch, differently augmented, the copies on different processes; 0 or 1: off")
flags.DEFINE_float("ema_decay", 0.0, "EMA decay of the weights, in [0, 1) (0: off), evaluated alongside the model")
flags.DEFINE_bool("mesa", False, "MESA (EMA self-distillation, PVMamba/VSSD): from epoch --mesa_start × epochs "
                  "on, loss += --mesa_weight × soft cross-entropy against the EMA model's eval-mode softmax; "
                  "needs --ema_decay")
flags.DEFINE_float("mesa_weight", 1.0, "MESA loss weight, >= 0 (upstream --mesa_value)")
flags.DEFINE_float("mesa_start", 0.25, "MESA starts at epoch ceil(mesa_start × epochs) (0-based: the first "
                   "epoch e with e >= mesa_start × epochs), in [0, 1]")
flags.DEFINE_enum("amp", "none", ["none", "bf16", "fp16"], "autocast dtype (fp16 uses a GradScaler; CUDA only)")
flags.DEFINE_bool("compile", False, "torch.compile the model")
flags.DEFINE_bool("deterministic", False, "deterministic algorithms (same seed ⇒ same weights, also across resume)")
flags.DEFINE_integer("seed", 0, "random seed, 0..2147483647")

# DyVM fine-tuning.
flags.DEFINE_string("teacher_model", None, "DyVM: teacher model name (e.g. vim_small)")
flags.DEFINE_string("teacher_model_kwargs", "{}", "DyVM: JSON dict of teacher config overrides (as --model_kwargs)")
flags.DEFINE_string("teacher_checkpoint", None, "DyVM: teacher weights (.safetensors, torch file or trainer run)")
flags.DEFINE_string("finetune", None, "initialise the model from these weights (student init for DyVM)")

# Outputs, checkpoints, robustness.
flags.DEFINE_string("output", None, "output directory (default: runs/<model>-<timestamp>); one trainer at a "
                    "time (<output>/train.lock)")
flags.DEFINE_string("resume", "auto", "'auto': continue from the newest checkpoint in --output that verifies "
                    "(error if checkpoints exist but none does); 'never': start fresh, moving an earlier run's "
                    "outputs aside into <output>/previous-<time>/; or a run/checkpoints/step directory to "
                    "continue from")
flags.DEFINE_bool("allow_config_change", False, "resume even though flags given now differ from the run's "
                  "config.json (the differing keys are listed)")
flags.DEFINE_integer("ckpt_every_steps", 0, "also checkpoint every N optimizer steps (0: each epoch only)")
flags.DEFINE_integer("keep_checkpoints", 3, "how many checkpoints to keep (0: all)")
flags.DEFINE_enum("on_nan", "stop", ["stop", "skip"], "non-finite loss: stop (exit 3) or skip the step")
flags.DEFINE_integer("max_steps", 0, "stop with a checkpoint (and a metrics row marked partial) after this many "
                     "optimizer steps in total (0: no limit); the schedule still spans --epochs, so --resume "
                     "continues it exactly")
flags.DEFINE_bool("progress", True, "show a progress bar (rank 0, interactive or not)")

# Flags that say how this process runs, not what is trained: they may differ on a resume and are never
# taken from the run's config.
RUNTIME_KEYS = frozenset({"config", "output", "resume", "allow_config_change", "trust_pickle", "progress",
                          "num_workers", "threads", "device", "compile", "max_steps", "ckpt_every_steps",
                          "keep_checkpoints", "on_nan"})
_JSON_FLAGS = ("model_kwargs", "teacher_model_kwargs")
_PATH_FLAGS = ("config", "data_path", "teacher_checkpoint", "finetune", "output", "resume")
MAX_SEED = 2**31 - 1

_from_config_file = set()  # flags the last apply_config_file() set
_sources = {}  # flag name -> where its value came from, when not the command line or the default


class ConfigError(Exception):
    """A bad flag value, path or config file: reported in one line, exit code 2."""


def flag_names():
    """The trainer's own flags (absl's built-in ones are not trainer settings), the shared ones included."""
    return [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])] + list(cli.SHARED_FLAGS)


def _expected(flag):
    kind = type(flag.parser).__name__
    return {"IntegerParser": "an integer", "FloatParser": "a number", "BooleanParser": "true or false",
            "EnumParser": f"one of {getattr(flag.parser, 'enum_values', '?')}"}.get(kind, "a string")


def coerce(name, value, where):
    """A typed value (from YAML or a run's config.json) parsed by flag `name`'s own parser, exactly as
    its text on the command line would be. ConfigError names `where` and the flag."""
    flag = FLAGS[name]
    if value is None:
        if flag.default is None:
            return None
        raise ConfigError(f"{where}: {name} is null; expected {_expected(flag)}")
    if name in _JSON_FLAGS and isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {name} must be a mapping of plain values ({exc})")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = repr(value) if isinstance(value, float) else str(value)
    else:
        raise ConfigError(f"{where}: {name} must be {_expected(flag)}, got a {type(value).__name__} ({value!r:.60})")
    try:
        return flag.parser.parse(text)
    except (ValueError, TypeError, OverflowError) as exc:
        detail = " ".join(str(a) for a in exc.args) if exc.args else type(exc).__name__
        raise ConfigError(f"{where}: bad value {value!r:.60} for {name}: expected {_expected(flag)} ({detail})")


def apply_config_file():
    """Sets flags from --config for every flag not given on the command line."""
    _from_config_file.clear()
    _sources.clear()
    if not FLAGS.config:
        return
    if "\0" in FLAGS.config:
        raise ConfigError("--config contains a NUL character")
    path = caller_path(FLAGS.config)
    kind = _kind(path, "config")
    if kind is None:
        raise ConfigError(f"--config {path} does not exist")
    if kind != "file":
        raise ConfigError(f"--config {path} is not a file (expected a YAML file of flag values)")
    import yaml
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} cannot be read as text ({exc})")
    try:
        values = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {exc}")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must be a mapping of flag names to values")
    names = set(flag_names())
    where = f"--config {path}"
    for key, value in values.items():
        if not isinstance(key, str) or key == "config" or key not in names:
            raise ConfigError(f"{where}: unknown flag {key!r} (keys are the trainer's flag names, see --helpfull)")
        if FLAGS[key].present:
            continue
        setattr(FLAGS, key, coerce(key, value, where))
        _from_config_file.add(key)
        _sources[key] = where


def explicit_keys():
    """Flags given on the command line or by --config (as opposed to left at their defaults)."""
    return {n for n in flag_names() if FLAGS[n].present} | set(_from_config_file)


def _json_dict(name, value):
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise ConfigError(f"--{name} is not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        raise ConfigError(f"--{name} must be a JSON object, e.g. '{{\"depth\": 4}}'")
    return parsed


def _flag(name):
    src = _sources.get(name)
    return f"--{name} (from {src})" if src else f"--{name}"


def _check_int(cfg, name, lo, hi=None):
    v = cfg[name]
    if v is None:
        return
    if not lo <= v or (hi is not None and v > hi):
        want = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{_flag(name)} must be {want}, got {v}")


def _check_float(cfg, name, lo, hi=None, lo_open=False, hi_open=False):
    v = cfg[name]
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        want = f"> {lo}" if lo_open and hi is None else (f">= {lo}" if hi is None else f"in {left}{lo}, {hi}{right}")
        raise ConfigError(f"{_flag(name)} must be a finite number {want}, got {v}")


def _kind(path, name):
    """'dir', 'file', 'other' or None (missing) for a path a flag names; ConfigError if it cannot be
    examined (name too long, permission denied, ...)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{_flag(name)} {str(path)[:200]}: cannot be accessed ({getattr(exc, 'strerror', None) or exc})")
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def _path(cfg, name):
    """Resolves a path flag (relative to where the user ran the command); None/'' stay unset."""
    v = cfg[name]
    if not v:
        return None
    if "\0" in v:
        raise ConfigError(f"{_flag(name)} contains a NUL character")
    return caller_path(v)


# The model trained by --task=detection/segmentation when no --model is given: learns on the CPU in minutes.
DENSE_DEFAULT_MODELS = {"detection": "mask_rcnn_vmamba_mnist", "segmentation": "upernet_vmamba_mnist"}
# Classification-only settings, refused for the dense tasks rather than silently ignored.
_CLASSIFICATION_ONLY = (("mixup", 0.0), ("cutmix", 0.0), ("label_smoothing", 0.0), ("randaug", ""), ("reprob", 0.0),
                        ("repeated_aug", 0), ("mesa", False), ("teacher_model", None))


def dataset_kind(task, data_path):
    """py.training.dense.dataset_kind, its error as a ConfigError naming the flag."""
    from py.training import dense
    try:
        return dense.dataset_kind(task, data_path)
    except ValueError as exc:
        raise ConfigError(f"{_flag('data_path')} {exc}")


def _check_dense(cfg):
    for name, off in _CLASSIFICATION_ONLY:
        if cfg[name] in (off, None):
            continue
        if cfg[name] != FLAGS[name].default or name in explicit_keys():
            raise ConfigError(f"{_flag(name)} applies to classification only (--task={cfg['task']})")
        cfg[name] = off  # the classification default (label smoothing 0.1), left unset, means nothing here
    if cfg["in_chans"] not in (None, 3):
        raise ConfigError(f"{_flag('in_chans')} must be 3 for {cfg['task']} (images are decoded as RGB), "
                          f"got {cfg['in_chans']}")
    cfg["in_chans"] = 3
    if cfg["multiscale"] and cfg["task"] != "detection":
        raise ConfigError(f"{_flag('multiscale')} is the detection 3x recipe's augmentation (--task=detection)")


def lr_step_epochs(cfg):
    """--lr_steps as a sorted list of epochs in 1..epochs; ConfigError for anything else."""
    text = str(cfg["lr_steps"] or "").strip()
    if not text:
        if cfg["schedule"] == "step":
            raise ConfigError(f"--schedule=step needs {_flag('lr_steps')}, e.g. 8,11")
        return []
    try:
        epochs = [int(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"{_flag('lr_steps')} must be comma-separated epochs, e.g. 8,11; got {text!r}")
    if any(not 1 <= e <= cfg["epochs"] for e in epochs) or epochs != sorted(set(epochs)):
        raise ConfigError(f"{_flag('lr_steps')} must be increasing epochs in 1..{cfg['epochs']} (--epochs), got {text!r}")
    if cfg["schedule"] != "step":
        raise ConfigError(f"{_flag('lr_steps')} is for --schedule=step (now {cfg['schedule']})")
    return epochs


def build(values):
    """The run's configuration from flag values (by name): derived settings filled in, every value
    checked. Raises ConfigError naming the flag and what was expected."""
    cfg = dict(values)
    for name in flag_names():
        v = cfg.get(name)
        if isinstance(v, str) and "\0" in v:
            raise ConfigError(f"{_flag(name)} contains a NUL character")
    import py.models as models
    from py.models import registry
    known = models.list_models()
    if cfg["model"] not in known:
        raise ConfigError(f"{_flag('model')}: unknown model {cfg['model']!r}; known: {', '.join(known)}")
    cfg["model_kwargs"] = _json_dict("model_kwargs", cfg["model_kwargs"])
    cfg["teacher_model_kwargs"] = _json_dict("teacher_model_kwargs", cfg["teacher_model_kwargs"])
    model_task = registry.registered_cfg(cfg["model"]).get("task", "classification")
    if cfg["task"] == "auto":
        cfg["task"] = model_task
    elif cfg["task"] != model_task:
        raise ConfigError(f"{_flag('task')}={cfg['task']} but --model={cfg['model']} is a {model_task} model (detection: "
                          f"{', '.join(models.list_models('mask_rcnn_*'))}; segmentation: "
                          f"{', '.join(models.list_models('upernet_*'))})")
    data_path = _path(cfg, "data_path")
    if data_path is not None and _kind(data_path, "data_path") != "dir":
        from py.training.dense import DATA_LAYOUTS
        raise ConfigError(f"{_flag('data_path')} {data_path} is not a directory (expected a dataset root: "
                          f"{DATA_LAYOUTS[cfg['task']]})")
    cfg["data_path"] = str(data_path) if data_path else None
    cfg["dataset"] = dataset_kind(cfg["task"], data_path)
    _check_int(cfg, "img_size", 1, 4096)
    _check_int(cfg, "in_chans", 1, 64)
    if cfg["task"] == "classification":
        mnist = data_path is None
        cfg["img_size"] = cfg["img_size"] or (28 if mnist else 224)
        cfg["in_chans"] = cfg["in_chans"] or (1 if mnist else 3)
        if not mnist and cfg["in_chans"] != 3:
            raise ConfigError(f"{_flag('in_chans')} must be 3 for ImageFolder data (its images are decoded as RGB), "
                              f"got {cfg['in_chans']}")
    else:
        _check_dense(cfg)
    _check_float(cfg, "val_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    _check_int(cfg, "limit_train", 0)
    _check_int(cfg, "num_workers", 0, 256)
    _check_int(cfg, "epochs", 1, 1_000_000)
    _check_int(cfg, "batch_size", 1, 1 << 24)
    if cfg["task"] == "segmentation" and cfg["batch_size"] < 2:
        raise ConfigError(f"{_flag('batch_size')} must be >= 2 for segmentation: UperNet's heads use BatchNorm, "
                          "which cannot normalise a single image's 1x1 pyramid-pooling map")
    _check_int(cfg, "accum_steps", 1, 1 << 16)
    _check_float(cfg, "lr", 0.0, lo_open=True)
    _check_float(cfg, "min_lr", 0.0, cfg["lr"])
    _check_float(cfg, "warmup_lr", 0.0)
    _check_float(cfg, "warmup_epochs", 0.0, float(cfg["epochs"]))
    _check_int(cfg, "warmup_steps", 0)
    _check_float(cfg, "lr_step_factor", 0.0, 1.0, lo_open=True)
    _check_float(cfg, "poly_power", 0.0, lo_open=True)
    cfg["lr_steps"] = ",".join(str(e) for e in lr_step_epochs(cfg))
    _check_float(cfg, "weight_decay", 0.0)
    _check_float(cfg, "layer_decay", 0.0, 1.0, lo_open=True)
    _check_float(cfg, "clip_grad", 0.0)
    _check_float(cfg, "drop_path", 0.0, 1.0, hi_open=True)
    _check_float(cfg, "label_smoothing", 0.0, 1.0, hi_open=True)
    _check_float(cfg, "mixup", 0.0)
    _check_float(cfg, "cutmix", 0.0)
    if (cfg["mixup"] > 0 or cfg["cutmix"] > 0) and cfg["batch_size"] % 2:
        raise ConfigError(f"--mixup/--cutmix mix each batch with its reverse and need an even {_flag('batch_size')}, "
                          f"got {cfg['batch_size']}")
    _check_float(cfg, "reprob", 0.0, 1.0)
    _check_float(cfg, "ema_decay", 0.0, 1.0, hi_open=True)
    _check_float(cfg, "color_jitter", 0.0)
    _check_int(cfg, "repeated_aug", 0, 64)
    _check_float(cfg, "mesa_weight", 0.0)
    _check_float(cfg, "mesa_start", 0.0, 1.0)
    if cfg["mesa"] and cfg["ema_decay"] == 0:
        raise ConfigError(f"{_flag('mesa')} distils from the EMA model and needs --ema_decay > 0 "
                          "(PVMamba's recipe: 0.9999)")
    if cfg["randaug"]:
        try:
            from timm.data import create_transform
            create_transform(cfg["img_size"], is_training=True, auto_augment=cfg["randaug"])
        except Exception as exc:  # timm's spec parser raises assert/Value/Key/IndexErrors
            raise ConfigError(f"{_flag('randaug')} {cfg['randaug']!r} is not a timm augmentation spec "
                              f"such as rand-m9-mstd0.5-inc1 ({type(exc).__name__}: {exc})")
    _check_int(cfg, "seed", 0, MAX_SEED)
    _check_int(cfg, "threads", 0, 1024)
    if cfg["teacher_model"]:
        if cfg["teacher_model"] not in known:
            raise ConfigError(f"{_flag('teacher_model')}: unknown model {cfg['teacher_model']!r}; known: "
                              f"{', '.join(known)}")
    else:
        cfg["teacher_model"] = None
    for name in ("teacher_checkpoint", "finetune", "backbone_checkpoint"):
        p = _path(cfg, name)
        if p is not None and _kind(p, name) is None:
            raise ConfigError(f"{_flag(name)} {p} does not exist")
        cfg[name] = str(p) if p else None
    if cfg["teacher_model"] and not cfg["teacher_checkpoint"]:
        raise ConfigError("--teacher_model needs --teacher_checkpoint (a randomly initialised teacher teaches nothing)")
    _check_int(cfg, "ckpt_every_steps", 0)
    _check_int(cfg, "keep_checkpoints", 0)
    _check_int(cfg, "max_steps", 0)
    out = _path(cfg, "output") or caller_path(f"runs/{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if _kind(out, "output") not in (None, "dir"):
        raise ConfigError(f"{_flag('output')} {out} exists and is not a directory")
    cfg["output"] = str(out)
    resume = cfg["resume"]
    if resume == "none":  # the older spelling
        resume = "never"
    if resume not in ("auto", "never"):
        given = _path(cfg, "resume")
        if given is None:
            raise ConfigError(f"{_flag('resume')} must be 'auto', 'never' or a checkpoint directory, got {resume!r}")
        if _kind(given, "resume") != "dir":
            raise ConfigError(f"{_flag('resume')} {given} is not a directory (expected a trainer run, its "
                              "checkpoints/ or one checkpoints/step_N/ directory)")
        resume = str(given)
    cfg["resume"] = resume
    if cfg["config"]:
        cfg["config"] = str(caller_path(cfg["config"]))
    return cfg


CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def resolve():
    """The run's configuration as a dict (written to <output>/config.json).

    --task=detection/segmentation with neither --model nor --config trains the task's small default
    model with its recipe (configs/<model>.yaml): the embedded canvases in minutes on a CPU."""
    if FLAGS.task in DENSE_DEFAULT_MODELS and not FLAGS.config and not FLAGS["model"].present:
        FLAGS.config = str(CONFIG_DIR / f"{DENSE_DEFAULT_MODELS[FLAGS.task]}.yaml")
    apply_config_file()
    values = {name: FLAGS[name].value for name in flag_names()}
    if values["task"] in DENSE_DEFAULT_MODELS and "model" not in explicit_keys():
        values["model"] = DENSE_DEFAULT_MODELS[values["task"]]
    return build(values)


def merge_run_config(cfg, run_cfg, explicit, allow_change, where):
    """Reconciles this invocation's config with the config of the run being resumed.

    Settings not given now (neither on the command line nor by --config) take the run's value, parsed
    and checked like a flag; settings given now that differ from the run's are refused (ConfigError
    listing every differing key) unless allow_change. RUNTIME_KEYS may always differ. `explicit`
    None treats every setting as given. Returns (merged cfg, [(key, run's value, new value)])."""
    if not isinstance(run_cfg, dict):
        raise ConfigError(f"{where} does not hold a JSON object of settings")
    values = {name: cfg[name] for name in flag_names()}
    inherited = set()
    for name in flag_names():
        if name in RUNTIME_KEYS or name not in run_cfg:
            continue
        if explicit is not None and name not in explicit:
            values[name] = coerce(name, run_cfg[name], where)
            _sources[name] = where
            inherited.add(name)
    merged = build(values)
    diffs = []
    for name in flag_names():
        if name in RUNTIME_KEYS or name in inherited:
            continue
        old = run_cfg[name] if name in run_cfg else FLAGS[name].default
        if name in _JSON_FLAGS and isinstance(old, str):
            try:
                old = json.loads(old)
            except ValueError:
                pass
        if (name in ("img_size", "in_chans") and old is None) or (name == "task" and old == "auto"):
            continue  # an older run without the resolved value: nothing to compare
        if merged[name] != old:
            diffs.append((name, old, merged[name]))
    if diffs and not allow_change:
        listed = "; ".join(f"{k}: run {json.dumps(o, default=str)}, now {json.dumps(n, default=str)}"
                           for k, o, n in diffs)
        raise ConfigError(f"the run in {merged['output']} was started with other settings than given now ({listed}); "
                          "pass --allow_config_change to resume with the new ones, drop those flags to keep the "
                          "run's, or start fresh with --resume=never or another --output")
    return merged, diffs


def parse_flags_or_exit(argv):
    """absl flags parser for app.run through the shared command-line layer (py.common.cli): -h/--help
    print the trainer's own flags and exit 0; a bad flag is one `error:` line and exit code 2."""
    main = sys.modules.get("__main__")
    code = cli.parse(argv, FLAGS, getattr(main, "__doc__", None), prog="train")
    if code is not None:
        sys.exit(code)
    return [argv[0]]