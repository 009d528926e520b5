"""Mask R-CNN (torchvision's framework) on the VisionSSM backbones, with mmdet's R50-FPN settings.

Spec: /work/shared/specs/dense.md §1.3 (neck and heads), §1.4 (train/test cfg), §3 (params, FLOPs), §4
(what differs from torchvision's defaults and how it is overridden here), §8.8.

    model = create_model("mask_rcnn_vmamba_tiny_s1l8")     # 80 classes, labels 1..80 in targets
    losses = model(images, targets)                        # train: dict of the 5 losses
    detections = model(images)                             # eval: boxes/labels/scores/masks per image

What is torchvision's: the GeneralizedRCNN flow, resize/normalise/pad transform, FPN + LastLevelMaxPool,
anchors, RPN head, proposal filtering, matchers and samplers, box coder, detection post-processing and
mask pasting. What is mmdet's (overridden here): 1000 train proposals, L1 box losses (RPN and R-CNN),
RoIAlign with adaptive sampling and aligned=True, mmdet's RoI level rule, a class-specific box regressor
without a background column and a mask predictor without a background channel (both padded with zeros
so torchvision's decoding and paste stay as they are), aligned binarised mask targets, the heads' init,
and masks binarised at 0.5 after pasting.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from py.models.dense.backbone import build_backbone, dense_layer_ids
from py.models.registry import IMAGENET_MEAN, IMAGENET_STD, imagenet_cfg, register_model

__all__ = ["MaskRCNN", "BackboneWithFPN", "AlignedMultiScaleRoIAlign", "L1RegionProposalNetwork",
           "MMDetRoIHeads", "BoxPredictor", "MaskPredictor", "roi_levels", "fastrcnn_l1_loss",
           "aligned_mask_loss"]

FPN_LEVELS = ("0", "1", "2", "3")  # P2..P5; "pool" (P6) is for the RPN only


# ----------------------------------------------------------------------------------------------
# Backbone + FPN
# ----------------------------------------------------------------------------------------------
class BackboneWithFPN(nn.Module):
    """A DenseBackbone (4 maps, strides 4..32) + torchvision's FPN with P6 = max-pool k1 s2 of P5
    (mmdet num_outs 5, no extra convs): OrderedDict {'0'..'3', 'pool'} of `out_channels` maps."""

    def __init__(self, body, out_channels=256):
        super().__init__()
        if len(body.channels) != 4:
            raise ValueError(f"backbone must give 4 levels (strides 4..32), got channels {body.channels}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        # mmdet's FPN declares Xavier-uniform for its convs (spec §4: optional, second-order)
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        feats = self.body(x)
        return self.fpn(OrderedDict(zip(FPN_LEVELS, feats)))


# ----------------------------------------------------------------------------------------------
# RoI pooling (mmdet's SingleRoIExtractor)
# ----------------------------------------------------------------------------------------------
def roi_levels(boxes, num_levels=4, finest_scale=56):
    """mmdet's level of each (x1, y1, x2, y2) box: clamp(floor(log2(sqrt(w*h) / 56 + 1e-6)), 0, L-1)."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign as mmcv's RoIAlign: sampling_ratio 0 (adaptive), aligned=True (half-pixel
    offset), fixed feature strides (no scale inference) and mmdet's level rule (`roi_levels`)."""

    def __init__(self, featmap_names, output_size, strides=(4, 8, 16, 32), finest_scale=56):
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        if len(strides) != len(featmap_names):
            raise ValueError(f"strides {strides} must give one stride per feature map {featmap_names}")
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def forward(self, x, boxes, image_shapes=None):
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        levels = roi_levels(rois[:, 1:], len(feats), self.finest_scale)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1]) + self.output_size)
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                pooled = roi_align(feat, rois[idx], self.output_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=0, aligned=True)
                out[idx] = pooled.to(out.dtype)
        return out


# ----------------------------------------------------------------------------------------------
# RPN with mmdet's L1 box loss
# ----------------------------------------------------------------------------------------------
class L1RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with mmdet's losses: BCE over the sampled anchors, L1 (not smooth-L1 β=1/9) on
    the positives' deltas, both divided by the number of sampled anchors."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], regression_targets[pos], reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


# ----------------------------------------------------------------------------------------------
# Box and mask predictors without background outputs (mmdet parameter parity)
# ----------------------------------------------------------------------------------------------
class BoxPredictor(nn.Module):
    """cls FC → K+1 (softmax, background 0), class-specific reg FC → 4K (mmdet: no background column).
    The regression is returned with 4 zero columns prepended for background, so torchvision's
    (K+1)*4 decoding and loss indexing (labels 1..K) work unchanged. Init N(0, .01) / N(0, .001)."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x):
        x = x.flatten(1)
        deltas = self.bbox_pred(x)
        return self.cls_score(x), F.pad(deltas, (4, 0))


class MaskPredictor(nn.Module):
    """ConvTranspose 2x2 s2 + ReLU → 1x1 conv → K mask logits (mmdet FCNMaskHead's upsample and
    conv_logits), returned with a zero background channel prepended (never indexed: labels are 1..K).
    Init kaiming-normal (fan_out, relu), bias 0."""

    def __init__(self, in_channels, hidden_channels, num_classes):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, hidden_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(hidden_channels, num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x):
        logits = self.conv_logits(F.relu(self.upsample(x)))
        return F.pad(logits, (0, 0, 0, 0, 1, 0))


# ----------------------------------------------------------------------------------------------
# R-CNN losses (mmdet) and RoI heads
# ----------------------------------------------------------------------------------------------
def fastrcnn_l1_loss(class_logits, box_regression, labels, regression_targets):
    """(CE over the sampled RoIs, L1 on the positives' GT-class deltas / number of sampled RoIs).
    class_logits (N, K+1); box_regression (N, (K+1)*4); labels / regression_targets: per image."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(class_logits), -1, 4)[pos, labels[pos]]
    box_loss = F.l1_loss(deltas, regression_targets[pos], reduction="sum") / labels.numel()
    return classification_loss, box_loss


def aligned_mask_loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs):
    """mmdet's mask loss: targets = GT mask cropped by RoIAlign (aligned=True, adaptive sampling) to
    M×M and binarised at 0.5; BCE on the GT class's logits, mean over all pixels of all positives."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs)])
    targets = []
    for masks, boxes, idx in zip(gt_masks, proposals, matched_idxs):
        rois = torch.cat([idx[:, None].to(boxes), boxes], dim=1)
        crops = roi_align(masks[:, None].to(boxes), rois, (size, size), spatial_scale=1.0,
                          sampling_ratio=0, aligned=True)
        targets.append((crops[:, 0] >= 0.5).to(mask_logits.dtype))
    targets = torch.cat(targets)
    if not len(targets):
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, targets)


class MMDetRoIHeads(RoIHeads):
    """torchvision's RoIHeads (box + mask only) with mmdet's losses (`fastrcnn_l1_loss`,
    `aligned_mask_loss`); sampling, matching and post-processing are torchvision's own methods."""

    def _mask_logits(self, features, boxes, image_shapes):
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if not self.training:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            masks = maskrcnn_inference(self._mask_logits(features, boxes, image_shapes), labels)
            return [dict(boxes=b, labels=lab, scores=s, masks=m)
                    for b, lab, s, m in zip(boxes, labels, scores, masks)], {}

        loss_classifier, loss_box_reg = fastrcnn_l1_loss(class_logits, box_regression, labels, regression_targets)
        # the mask head is trained on the positive RoIs only
        pos = [torch.where(lab > 0)[0] for lab in labels]
        mask_proposals = [p[i] for p, i in zip(proposals, pos)]
        mask_matched = [m[i] for m, i in zip(matched_idxs, pos)]
        mask_logits = self._mask_logits(features, mask_proposals, image_shapes)
        loss_mask = aligned_mask_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                      [t["labels"] for t in targets], mask_matched)
        return [], dict(loss_classifier=loss_classifier, loss_box_reg=loss_box_reg, loss_mask=loss_mask)


class _Transform(GeneralizedRCNNTransform):
    """torchvision's transform; eval masks (pasted at the input size as probabilities) are binarised
    at `mask_threshold` afterwards (mmdet: mask >= 0.5), as float 0/1. None keeps probabilities."""

    def __init__(self, *args, mask_threshold=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_threshold = mask_threshold

    def postprocess(self, result, image_shapes, original_image_sizes):
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if not self.training and self.mask_threshold is not None:
            for r in result:
                if "masks" in r:
                    r["masks"] = (r["masks"] >= self.mask_threshold).to(r["masks"].dtype)
        return result


# ----------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------
class MaskRCNN(GeneralizedRCNN):
    """Mask R-CNN with mmdet's `mask-rcnn_r50_fpn` settings (spec §1.3/§1.4) on a DenseBackbone.

    backbone: a DenseBackbone-like module (`channels`, `strides` (4, 8, 16, 32), forward → 4 maps).
    num_classes: K object classes; targets' labels are 1..K (0 is background, internal).
    fpn_channels, representation_size (box head FCs), mask_head_channels: widths (256, 1024, 256).
    min_size, max_size: torchvision's keep-ratio resize (800, 1333); skip_resize_in_training: the data
        pipeline already resized (3x multi-scale recipe, spec §4); evaluation still resizes.
    box_batch_size_per_image (512), rpn_batch_size_per_image (256): sampler sizes.
    rpn_pre_nms_top_n (2000, 1000) per level and rpn_post_nms_top_n (1000, 1000) per image: the RPN's
        proposals (training, testing).
    stock_heads: torchvision's FastRCNNPredictor / MaskRCNNPredictor ((K+1)*4 regression, K+1 mask
        logits) instead of mmdet's (4K, K). mask_threshold: eval masks binarised at this (None: probabilities).

    forward as torchvision's: train (images list of (3, H, W) in [0, 1], targets list of dicts boxes
    float (N, 4) xyxy, labels int64 (N,) in 1..K, masks uint8 (N, H, W)) → {loss_objectness,
    loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask}; eval → per image dict boxes (N, 4),
    labels (N,), scores (N,) sorted, masks (N, 1, H, W) at the input image's size.
    """

    task = "detection"

    def __init__(self, backbone, num_classes, fpn_channels=256, representation_size=1024,
                 mask_head_channels=256, min_size=800, max_size=1333, box_batch_size_per_image=512,
                 rpn_batch_size_per_image=256, skip_resize_in_training=False, stock_heads=False,
                 mask_threshold=0.5, rpn_pre_nms_top_n=(2000, 1000), rpn_post_nms_top_n=(1000, 1000)):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (object classes, no background), got {num_classes!r}")
        if tuple(backbone.strides) != (4, 8, 16, 32):
            raise ValueError(f"backbone.strides must be (4, 8, 16, 32), got {tuple(backbone.strides)}")
        features = BackboneWithFPN(backbone, fpn_channels)

        anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
        rpn = L1RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=0.5, pre_nms_top_n=dict(training=rpn_pre_nms_top_n[0], testing=rpn_pre_nms_top_n[1]),
            post_nms_top_n=dict(training=rpn_post_nms_top_n[0], testing=rpn_post_nms_top_n[1]), nms_thresh=0.7)

        box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        for fc in (box_head.fc6, box_head.fc7):  # mmdet Shared2FCBBoxHead: Xavier-uniform, bias 0
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        mask_head = MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, dilation=1)
        if stock_heads:
            box_predictor = FastRCNNPredictor(representation_size, num_classes + 1)
            mask_predictor = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1)
        else:
            box_predictor = BoxPredictor(representation_size, num_classes)
            mask_predictor = MaskPredictor(mask_head_channels, mask_head_channels, num_classes)
        roi_heads = MMDetRoIHeads(
            AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, backbone.strides), box_head, box_predictor,
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=box_batch_size_per_image,
            positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05,
            nms_thresh=0.5, detections_per_img=100,
            mask_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, backbone.strides),
            mask_head=mask_head, mask_predictor=mask_predictor)

        transform = _Transform(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32,
                               _skip_resize=skip_resize_in_training, mask_threshold=mask_threshold)
        super().__init__(features, rpn, roi_heads, transform)
        self.num_classes = num_classes

    def forward(self, images, targets=None):
        if self.training:
            self._check_targets(images, targets)
        return super().forward(images, targets)

    def _check_targets(self, images, targets):
        if targets is None or len(targets) != len(images):
            raise ValueError(f"training needs one target dict per image ({len(images)} images), got "
                             f"{None if targets is None else len(targets)}")
        for i, (image, t) in enumerate(zip(images, targets)):
            boxes, labels, masks = t.get("boxes"), t.get("labels"), t.get("masks")
            if boxes is None or labels is None or masks is None:
                raise ValueError(f"targets[{i}] needs 'boxes', 'labels' and 'masks', got keys {sorted(t)}")
            n = len(boxes)
            if not boxes.is_floating_point() or boxes.shape != (n, 4):
                raise ValueError(f"targets[{i}]['boxes'] must be float (N, 4) xyxy, got {boxes.dtype} "
                                 f"{tuple(boxes.shape)}")
            if labels.dtype != torch.int64 or labels.shape != (n,):
                raise ValueError(f"targets[{i}]['labels'] must be int64 ({n},), got {labels.dtype} "
                                 f"{tuple(labels.shape)}")
            if n and (labels.min() < 1 or labels.max() > self.num_classes):
                raise ValueError(f"targets[{i}]['labels'] must be in 1..{self.num_classes} (0 is background), "
                                 f"got {labels.min().item()}..{labels.max().item()}")
            if masks.shape != (n,) + tuple(image.shape[-2:]):
                raise ValueError(f"targets[{i}]['masks'] must be (N, H, W) = ({n}, {image.shape[-2]}, "
                                 f"{image.shape[-1]}), got {tuple(masks.shape)}")

    def layer_ids(self):
        """Layer-wise lr decay ids (py.models.layer_ids): the backbone's, FPN and heads last."""
        return dense_layer_ids(self)

    def flop_count_module(self, num_box_rois=1000, num_mask_rois=100):
        """An nn.Module whose forward(x (1, 3, H, W)) runs what VMamba's mmdet FLOP count runs (spec §3.1):
        backbone + FPN + RPN head on all 5 levels + box head on `num_box_rois` and mask head on
        `num_mask_rois` dummy RoI features (no transform, proposal filtering, NMS or RoIAlign)."""
        return _FlopCountForward(self, num_box_rois, num_mask_rois)


class _FlopCountForward(nn.Module):
    def __init__(self, detector, num_box_rois, num_mask_rois):
        super().__init__()
        self.detector = detector
        self.num_box_rois, self.num_mask_rois = num_box_rois, num_mask_rois

    def forward(self, x):
        det = self.detector
        feats = det.backbone(x)
        det.rpn.head(list(feats.values()))
        channels = det.backbone.out_channels
        heads = det.roi_heads
        heads.box_predictor(heads.box_head(x.new_zeros(self.num_box_rois, channels, 7, 7)))
        heads.mask_predictor(heads.mask_head(x.new_zeros(self.num_mask_rois, channels, 14, 14)))
        return feats


# ----------------------------------------------------------------------------------------------
# Registered models
# ----------------------------------------------------------------------------------------------
_DET_CFG = dict(input_size=(3, 800, 1333), num_classes=80, task="detection", crop_pct=1.0,
                interpolation="bilinear")


def _fixed_grid(img_size):
    """The square patch grid a fixed-grid backbone (Vim) needs for inputs up to img_size after the
    transform's padding to /32: ceil(max side / 32) * 32 (800x1333 → 1344)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return int(math.ceil(max(size) / 32) * 32)


def _build(backbone_name, num_classes, img_size, default_drop_path, fixed_grid=False, pretrained_backbone=None,
           drop_path_rate=None, backbone_kwargs=None, **options):
    """builder(num_classes, img_size, **overrides) of every registered Mask R-CNN. img_size: the largest
    input (H, W); only fixed-grid backbones (Vim) use it (the resize is min_size/max_size). overrides:
    pretrained_backbone (path for DenseBackbone.load_pretrained), drop_path_rate, backbone_kwargs
    (dict for DenseBackbone / the backbone model), and MaskRCNN's options."""
    kwargs = dict(backbone_kwargs or {})
    if fixed_grid:
        kwargs.setdefault("img_size", _fixed_grid(img_size))
    backbone = build_backbone(backbone_name, drop_path_rate=default_drop_path if drop_path_rate is None
                              else drop_path_rate, **kwargs)
    if pretrained_backbone:
        backbone.load_pretrained(pretrained_backbone)
    return MaskRCNN(backbone, num_classes, **options)


@register_model(imagenet_cfg(**_DET_CFG))
def mask_rcnn_vmamba_tiny_s1l8(num_classes=80, img_size=None, **overrides):
    """Mask R-CNN, VMamba-T[s1l8] backbone (drop_path 0.2): 49,755,312 params, 271.16 GFLOPs at 1280x800."""
    return _build("vmamba_tiny_s1l8", num_classes, img_size, 0.2, **overrides)


@register_model(imagenet_cfg(**_DET_CFG))
def mask_rcnn_vmamba_small_s2l15(num_classes=80, img_size=None, **overrides):
    """Mask R-CNN, VMamba-S[s2l15] backbone (drop_path 0.3): 69,654,000 params, 348.92 GFLOPs."""
    return _build("vmamba_small_s2l15", num_classes, img_size, 0.3, **overrides)


@register_model(imagenet_cfg(**_DET_CFG))
def mask_rcnn_vmamba_base_s2l15(num_classes=80, img_size=None, **overrides):
    """Mask R-CNN, VMamba-B[s2l15] backbone (drop_path 0.6): 107,931,376 params, 485.49 GFLOPs."""
    return _build("vmamba_base_s2l15", num_classes, img_size, 0.6, **overrides)


@register_model(imagenet_cfg(**_DET_CFG))
def mask_rcnn_pvmamba_tiny(num_classes=80, img_size=None, **overrides):
    """Mask R-CNN, PVMamba-T backbone (drop_path 0.2; our design, spec §5: no upstream dense code runs)."""
    return _build("pvmamba_tiny", num_classes, img_size, 0.2, **overrides)


@register_model(imagenet_cfg(**_DET_CFG))
def mask_rcnn_vim_small(num_classes=80, img_size=None, **overrides):
    """Mask R-CNN, Vim-S backbone + simple pyramid on a fixed square patch grid (1344 for 800x1333 inputs;
    smaller inputs are zero-padded by the backbone). Our design: upstream Vim detection is ViTDet (§6.2)."""
    return _build("vim_small", num_classes, (800, 1333) if img_size is None else img_size, None,
                  fixed_grid=True, **overrides)


# Sized for a CPU: the mask head on the sampled positives dominates a training step, so fewer RoIs
# (64, at most 16 positives) and 32 mask channels (measured: 1.8 s -> 0.9 s per batch of 8 on 2 cores);
# a canvas holds at most 6 digits, so 300/100 proposals (train/test) instead of 1000/1000.
_MNIST_OPTIONS = dict(fpn_channels=64, representation_size=256, mask_head_channels=32, min_size=128,
                      max_size=128, box_batch_size_per_image=64, rpn_pre_nms_top_n=(500, 300),
                      rpn_post_nms_top_n=(300, 100))


@register_model(imagenet_cfg(**dict(_DET_CFG, input_size=(3, 128, 128), num_classes=10)))
def mask_rcnn_vmamba_mnist(num_classes=10, img_size=None, **overrides):
    """Small Mask R-CNN for 128x128 MNIST canvases: VMamba dims 32, depths 1-1-2-1 (other settings as
    VMamba-T[s1l8]), FPN 64, box FCs 256, mask head 32, 64 sampled RoIs per image."""
    backbone_kwargs = {"dims": 32, "depths": (1, 1, 2, 1), **(overrides.pop("backbone_kwargs", None) or {})}
    return _build("vmamba_tiny_s1l8", num_classes, img_size, 0.2, backbone_kwargs=backbone_kwargs,
                  **dict(_MNIST_OPTIONS, **overrides))
