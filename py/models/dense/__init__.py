"""Dense prediction on the VisionSSM backbones: feature-pyramid backbones, UperNet, Mask R-CNN.

Importing it registers `mask_rcnn_<backbone>` (detection) and `upernet_<backbone>` (segmentation) with
py.models (and timm); their `default_cfg["task"]` tells the trainer and the eval tools what they are.
"""
from py.models.dense import backbone, mask_rcnn, upernet  # noqa: F401  (registers the models)
from py.models.dense.backbone import DenseBackbone, build_backbone
from py.models.dense.upernet import segmentation_loss

__all__ = ["DenseBackbone", "build_backbone", "segmentation_loss"]
