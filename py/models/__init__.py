"""VisionSSM models: VMamba, Vim, DyVM and PVMamba families, created by name.

    import py.models
    model = py.models.create_model("vmamba_tiny_s1l8", num_classes=1000)
    py.models.list_models("vim*")

Importing this package also registers every model with timm (`timm.create_model(name)`).
"""
import contextlib

from py.models import dyvm, pvmamba, vim, vmamba  # noqa: F401  (registers the models)
from py.models import dense  # noqa: F401,E402  (registers mask_rcnn_* / upernet_*, after the backbones)
from py.models import weights  # noqa: F401  (the one weights path: py.models.weights.read/load_into)
from py.models.features import layer_ids
from py.models.flops import count_flops
from py.models.registry import create_model, imagenet_cfg, list_models, load_checkpoint, register_model
from py.models.tasks import build_task


@contextlib.contextmanager
def export_mode(model):
    """Graph capture (torch.export) switches of every submodule that has one (DyVM: traceable branch
    gates, its gate log restored afterwards); plain models need none."""
    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if hasattr(type(m), "export_mode"):
                stack.enter_context(m.export_mode())
        yield model


__all__ = ["build_task", "count_flops", "create_model", "export_mode", "imagenet_cfg", "layer_ids", "list_models",
           "load_checkpoint", "register_model"]
