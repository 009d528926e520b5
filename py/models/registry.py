"""Model registry: `create_model(name)` / `list_models()`, mirrored into timm's registry.

Each family module decorates its builders with `@register_model(default_cfg)`. A builder takes
`num_classes`, `img_size` and config overrides as keyword arguments and returns an nn.Module that
exposes `forward_features`, `forward_head`, `num_classes`, `reset_classifier` and `default_cfg`.
"""
import fnmatch

from py.models import weights as weights_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BUILDERS = {}
_DEFAULT_CFGS = {}


def imagenet_cfg(**kwargs):
    """The data-pipeline defaults of an ImageNet classifier (timm's default_cfg keys)."""
    cfg = dict(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875,
               interpolation="bicubic", num_classes=1000, first_conv="", classifier="head")
    cfg.update(kwargs)
    return cfg


def register_model(default_cfg=None):
    """Decorator: registers `fn` under its own name here and in timm (so timm.create_model works)."""
    def wrap(fn):
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = fn
        _DEFAULT_CFGS[name] = dict(default_cfg or imagenet_cfg())
        _register_with_timm(name)
        return fn
    return wrap


def _register_with_timm(name):
    try:
        from timm.models import _registry as timm_registry
    except ImportError:  # timm is optional for py.models itself
        return

    def timm_entry(pretrained=False, **kwargs):
        # timm's way to name a local file: pretrained_cfg_overlay=dict(file=PATH) (or a pretrained_cfg
        # with "file"); pretrained=True without one raises WeightsError (no hub is used).
        cfgs = [kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)]
        kwargs.pop("cache_dir", None)
        files = [c.get("file") for c in cfgs if isinstance(c, dict) and c.get("file")]
        if pretrained and files:
            pretrained = files[-1]
        return create_model(name, pretrained=pretrained or None, **kwargs)

    timm_entry.__name__ = name
    timm_entry.__module__ = __name__
    if name not in timm_registry._model_entrypoints:
        timm_registry.register_model(timm_entry)


def list_models(pattern="*"):
    """Sorted names of registered models matching a shell-style pattern."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def registered_cfg(name):
    """A copy of the default_cfg `name` was registered with (its own input size, classes, mean/std)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    return dict(_DEFAULT_CFGS[name])


def create_model(name, pretrained=None, num_classes=None, img_size=None, **overrides):
    """Builds a registered model.

    pretrained: None/False, or local weights to start from (anything py.models.weights.read takes: a
        .safetensors or torch file, ours or an official one, or a trainer run/step directory). They
        are adapted as for fine-tuning: a classifier of another size is re-initialised and Vim's
        position embeddings are resampled to `img_size`, each with a one-line notice. True raises a
        WeightsError saying how to pass a file (no weights hub is used).
    num_classes: classifier outputs (0 for a headless feature extractor); default: the model's own
        (1000 for the ImageNet models, 10 for the *_mnist ones).
    img_size: input resolution (int or (H, W)); must fit the model's patch grid. Default: the model's
        own (224, or 28 for the *_mnist ones).
    overrides: config values of the family (e.g. drop_path_rate, features_only, out_indices).
    """
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[0] in n][:8]
        raise ValueError(f"unknown model {name!r}; known: {close or list_models()}")
    cfg = dict(_DEFAULT_CFGS[name])
    if num_classes is None:
        num_classes = cfg["num_classes"]
    if img_size is None:
        img_size = tuple(cfg["input_size"][1:])
    model = _BUILDERS[name](num_classes=num_classes, img_size=img_size, **overrides)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    cfg.update(input_size=(cfg["input_size"][0],) + size, num_classes=num_classes)
    model.default_cfg = cfg
    model.pretrained_cfg = cfg
    if pretrained is not None and pretrained is not False:
        load_checkpoint(model, pretrained, adapt=True)
    return model


def load_checkpoint(model, path, weights="model", adapt=False, trust_pickle=False):
    """Loads weights into `model` through py.models.weights (read, convert official layouts, validate,
    strict load); adapt=True also adapts them for fine-tuning. Raises weights.WeightsError."""
    weights_path.load_into(model, path, weights=weights, adapt=adapt, trust_pickle=trust_pickle)
    return model
