"""What the eval tools share beyond the command-line layer (py.common.cli): building and loading models.

A model comes from a trainer run (runs/<name>/, its checkpoints/ or one checkpoints/step_*/ directory,
with the run's resolved config in config.json) or from a single weights file plus a model name; both
are read by py.models.weights.
Results are written with py.common.files.write_json (temp file + fsync + rename).
"""
import py.models as models
from py.common.cli import UsageError, parse_json_dict, pick_device  # noqa: F401  (the tools' error type)
from py.common.files import caller_path, write_json  # noqa: F401
from py.models import registry


def registered_cfg(name):
    """The default_cfg a model was registered with (create_model's own defaults are 224 / 1000 classes)."""
    if name not in models.list_models():
        raise UsageError(f"unknown --model {name!r}; known: {', '.join(models.list_models())}")
    return registry.registered_cfg(name)


def build_model(name, num_classes, img_size, in_chans=None, model_kwargs=None):
    """Builds a registered model; None keeps the model's own default (e.g. in_chans 1 for vim_mnist).
    model_kwargs: a dict, or the JSON text of --model_kwargs."""
    registered_cfg(name)
    kwargs = dict(parse_json_dict("model_kwargs", model_kwargs) if isinstance(model_kwargs, str) or
                  model_kwargs is None else model_kwargs)
    if in_chans is not None:
        kwargs.setdefault("in_chans", in_chans)
    try:
        return models.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot build --model={name} with img_size={img_size}, {kwargs}: {exc}")


def load_weights(path, trust_pickle=False):
    """Weights named by --checkpoint, read through py.models.weights (never unpickled unless
    --trust_pickle): (run config or None, {label: state_dict}, step or None, source).

    Labels are "model" and "ema" (an official file's "model_ema"); a run directory gives its newest
    checkpoint whose checksums verify, and its config."""
    from py.models import weights
    path = caller_path(path)
    try:
        ckpt = weights.read(path, trust_pickle=trust_pickle)
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


def load_model(name, checkpoint=None, model_kwargs=None, img_size=None, in_chans=None, weights="model",
               trust_pickle=False):
    """(model in eval mode, info dict) from a registered name and/or --checkpoint: a trainer run's config
    supplies name, overrides and sizes; the values given here (flags) win. model_kwargs: JSON text."""
    run_cfg, states, source = None, {}, None
    if checkpoint:
        run_cfg, states, _, source = load_weights(checkpoint, trust_pickle)
    if run_cfg:
        if name and name != run_cfg["model"]:
            raise UsageError(f"--model={name} but the checkpoint's run trained {run_cfg['model']}")
        name = run_cfg["model"]
    if not name:
        raise UsageError("pass --model=NAME (and/or --checkpoint)")
    reg = registered_cfg(name)
    kwargs = dict(run_cfg.get("model_kwargs") or {}) if run_cfg else {}
    if model_kwargs:
        kwargs = parse_json_dict("model_kwargs", model_kwargs)
    img_size = img_size or (run_cfg or {}).get("img_size") or reg["input_size"][-1]
    in_chans = in_chans or (run_cfg or {}).get("in_chans") or reg["input_size"][0]
    state = None
    if states:
        if weights not in states:
            raise UsageError(f"--weights={weights}: {source} has only {', '.join(states)}")
        state = states[weights]
    heads = [v for k, v in (state or {}).items() if k.endswith("head.weight") and v.dim() == 2]
    num_classes = heads[0].shape[0] if heads else reg["num_classes"]
    model = build_model(name, num_classes, img_size, in_chans, kwargs)
    if state is not None:
        load_state(model, state, source)
    info = dict(model=name, model_kwargs=kwargs, img_size=img_size, in_chans=in_chans, checkpoint=source,
                random_weights=state is None)
    return model.eval(), info


def dense_config(flags_, task, run_cfg, name):
    """The settings py.training.dense needs, from the flags, else the run's config, else defaults."""
    run_cfg = run_cfg or {}

    def pick(key, fallback):  # every one of these flags defaults to None
        value = getattr(flags_, key)
        if value is not None:
            return value
        return run_cfg[key] if run_cfg.get(key) is not None else fallback

    data_path = pick("data_path", None)
    if data_path:
        data_path = str(caller_path(data_path))
    cfg = {"task": task, "model": name, "data_path": data_path, "multiscale": False,
           "val_fraction": pick("val_fraction", 0.2), "img_size": pick("img_size", None)}
    if data_path:
        from py.training import dense
        try:
            cfg["dataset"] = dense.dataset_kind(task, caller_path(data_path))
        except ValueError as exc:
            raise UsageError(f"--data_path {exc}")
    return cfg
