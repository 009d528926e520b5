"""VisionSSM models: VMamba, Vim, DyVM and PVMamba families, created by name.

    import py.models
    model = py.models.create_model("vmamba_tiny_s1l8", num_classes=1000)
    py.models.list_models("vim*")

Importing this package also registers every model with timm (`timm.create_model(name)`).
"""
from py.models import dyvm, pvmamba, vim, vmamba  # noqa: F401  (registers the models)
from py.models import weights  # noqa: F401  (the one weights path: py.models.weights.read/load_into)
from py.models.flops import count_flops
from py.models.registry import create_model, imagenet_cfg, list_models, load_checkpoint, register_model

__all__ = ["create_model", "list_models", "load_checkpoint", "register_model", "imagenet_cfg", "count_flops"]
