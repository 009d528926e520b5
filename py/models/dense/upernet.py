"""UperNet semantic segmentation on a DenseBackbone (spec /work/shared/specs/dense.md §2, §3, §6.1).

    model = create_model("upernet_vmamba_tiny_s1l8", num_classes=150)
    model.train(); out = model(images)                  # {"decode": (B, K, H/4, W/4), "aux": (B, K, H/16, W/16)}
    loss, parts = segmentation_loss(out, labels)        # labels (B, H, W), 255 = ignore
    model.eval(); logits = model(images)                # (B, K, H/4, W/4): decode head only

UPerHead (§2.2): PPM on the last level + 1x1 laterals on the others, top-down bilinear adds, 3x3 FPN
convs, everything resized to level 0 and fused by a 3x3 conv, Dropout2d, 1x1 classifier. FCN auxiliary
head (§2.3) on level 2, training only. Module names follow mmseg (psp_modules, bottleneck,
lateral_convs, fpn_convs, fpn_bottleneck, conv_seg; ConvModule = conv/bn/activate).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from py.models.dense.backbone import DenseBackbone, dense_layer_ids
from py.models.registry import imagenet_cfg, register_model

__all__ = ["UperNet", "UPerHead", "FCNHead", "ConvModule", "segmentation_loss"]

PPM_SCALES = (1, 2, 3, 6)


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm2d -> ReLU; conv kaiming-normal (fan_out, relu), BN 1 / 0."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


def _classifier(channels, num_classes):
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _check_class_prior(class_prior, num_classes):
    """None, or a tuple of num_classes pixel frequencies in (0, 1]; anything else is a ValueError."""
    if class_prior is None:
        return None
    try:
        prior = tuple(float(p) for p in class_prior)
    except (TypeError, ValueError):
        prior = ()
    if len(prior) != num_classes or not all(0 < p <= 1 for p in prior) or sum(prior) > 1 + 1e-6:
        raise ValueError(f"class_prior must be None or {num_classes} pixel frequencies in (0, 1] summing to at "
                         f"most 1 (one per class), got {class_prior!r}")
    return prior


class UPerHead(nn.Module):
    """in_channels (one per level, finest first) -> logits (B, num_classes, H0, W0) at level 0's size."""

    def __init__(self, in_channels, channels=512, num_classes=150, dropout=0.1):
        super().__init__()
        *lower, top = in_channels
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(top, channels, 1)) for s in PPM_SCALES)
        self.bottleneck = ConvModule(top + len(PPM_SCALES) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in lower)
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in lower)
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = _classifier(channels, num_classes)

    def psp_forward(self, x):
        size = x.shape[-2:]
        return self.bottleneck(torch.cat([x] + [_resize(m(x), size) for m in self.psp_modules], dim=1))

    def forward(self, feats):
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.psp_forward(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 ConvModule, Dropout2d, 1x1 classifier (no input concat)."""

    def __init__(self, in_channels, channels=256, num_classes=150, dropout=0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = _classifier(channels, num_classes)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class _DecodeOnly(nn.Module):
    """The spec §3.1 segmentation FLOP protocol: backbone + decode head, no aux head, no final resize."""

    def __init__(self, backbone, decode_head):
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head

    def forward(self, x):
        return self.decode_head(self.backbone(x))


class UperNet(nn.Module):
    """UperNet: DenseBackbone -> UPerHead (+ FCN aux head on level 2 while training).

    forward(x): eval -> decode logits (B, K, ceil(H/s), ceil(W/s)) at the backbone's first stride s (4 for
    the paper backbones, 2 for upernet_vmamba_mnist); train -> {"decode": ..., "aux": ...} (no "aux" when
    aux_channels is 0). Upsampling to the label size happens in segmentation_loss.
    """

    task = "segmentation"

    def __init__(self, backbone: DenseBackbone, num_classes, channels=512, aux_channels=256, aux_weight=0.4,
                 dropout=0.1, ohem=None, class_prior=None):
        super().__init__()
        if len(backbone.channels) != 4:
            raise ValueError(f"UperNet needs a 4-level backbone, got channels {backbone.channels}")
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.ohem = _check_ohem(ohem)  # the decode head's pixel sampler (segmentation_loss)
        self.backbone = backbone
        self.decode_head = UPerHead(backbone.channels, channels, num_classes, dropout)
        self.auxiliary_head = (FCNHead(backbone.channels[2], aux_channels, num_classes, dropout)
                               if aux_channels else None)
        # RetinaNet's prior initialisation: classifier biases log(frequency), so training starts from the
        # class frequencies instead of spending its first hundreds of steps learning that most pixels
        # are background (mmseg's init is zero; paper models keep it).
        prior = _check_class_prior(class_prior, num_classes)
        if prior is not None:
            for head in (self.decode_head, self.auxiliary_head):
                if head is not None:
                    with torch.no_grad():
                        head.conv_seg.bias.copy_(torch.tensor(prior).log())

    def forward(self, x):
        if self.training and x.shape[0] < 2:
            raise ValueError(f"UperNet trains with BatchNorm in its heads, which needs at least 2 images per batch "
                             f"(the pyramid pooling's 1x1 map has one value per channel); got x of shape "
                             f"{tuple(x.shape)}. Use model.eval() to predict one image.")
        feats = self.backbone(x)
        logits = self.decode_head(feats)
        if not self.training:
            return logits
        out = dict(decode=logits)
        if self.auxiliary_head is not None:
            out["aux"] = self.auxiliary_head(feats[2])
        return out

    @property
    def max_input_size(self):
        """Largest input (H, W) of a fixed-grid backbone (Vim), else None; py.training.dense runs larger
        images in sliding windows of this size (Vim's slide test)."""
        return self.backbone.max_input_size

    def layer_ids(self):
        """Layer-wise lr decay ids (py.models.layer_ids): the backbone's, the heads last."""
        return dense_layer_ids(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing in the backbone (the heads are cheap to keep)."""
        self.backbone.set_grad_checkpointing(enable)

    def flop_count_module(self):
        """A module whose forward(x) is what spec §3.1 counts: backbone + decode head."""
        return _DecodeOnly(self.backbone, self.decode_head)


def _check_ohem(ohem):
    """None, or a copy of dict(thresh in [0, 1], min_kept >= 1 per image); anything else is a ValueError."""
    if not ohem:
        return None
    number = lambda v, kinds: isinstance(v, kinds) and not isinstance(v, bool)  # True is an int in Python
    ok = isinstance(ohem, dict) and set(ohem) == {"thresh", "min_kept"}
    ok = ok and number(ohem["thresh"], (int, float)) and 0 <= ohem["thresh"] <= 1
    ok = ok and number(ohem["min_kept"], int) and ohem["min_kept"] >= 1
    if not ok:
        raise ValueError(f"ohem must be None or dict(thresh=<float in [0, 1]>, min_kept=<int >= 1, pixels per "
                         f"image>), got {ohem!r}")
    return dict(ohem)


def ohem_weights(logits, labels, thresh, min_kept, ignore_index=255):
    """mmseg's OHEMPixelSampler (by probability) on label-sized logits (B, K, H, W): weight 1 on the
    non-ignored pixels whose softmax probability of their own class is below max(thresh, p_k), 0 elsewhere,
    where p_k is the sorted probabilities' element min(min_kept·B, n − 1) (0-based, n valid pixels): at
    least ~min_kept pixels per image stay. Easy pixels (mostly background) drop out of the loss."""
    with torch.no_grad():
        valid = labels != ignore_index
        prob = logits.float().softmax(1).gather(1, labels.masked_fill(~valid, 0).long().unsqueeze(1)).squeeze(1)
        kept = prob[valid]
        if kept.numel() == 0:
            return torch.zeros_like(prob)
        k = min(min_kept * labels.shape[0], kept.numel() - 1) + 1  # kthvalue counts from 1
        bar = kept.kthvalue(k).values.clamp(min=thresh)  # a tensor: no device sync
        return (valid & (prob < bar)).to(prob.dtype)


def segmentation_loss(outputs, labels, aux_weight=0.4, ignore_index=255, ohem=None):
    """(loss, parts) with mmseg's CE (spec §2.4, §8.7): logits bilinearly upsampled to the label size,
    per-pixel CE summed and divided by ALL B*H*W pixels (ignored ones included); decode weight 1, aux
    weight `aux_weight`. outputs: UperNet's training dict or a logits tensor; labels: (B, H, W) integers;
    ohem: None or dict(thresh, min_kept): mmseg's OHEM pixel sampler on the decode head (ohem_weights).
    parts: {"decode": ..., "aux": ...} unweighted, detached."""
    if labels.dim() != 3 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer (B, H, W) tensor, got {labels.dtype} {tuple(labels.shape)}")
    ohem = _check_ohem(ohem)
    outputs = outputs if isinstance(outputs, dict) else dict(decode=outputs)
    weights = dict(decode=1.0, aux=aux_weight)
    loss, parts = 0.0, {}
    for name, logits in outputs.items():
        if name not in weights:
            raise ValueError(f"outputs: unknown head {name!r}; expected 'decode' and optionally 'aux'")
        if logits.dim() != 4 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"outputs[{name!r}] must be logits (B, K, h, w) with B = {labels.shape[0]}, "
                             f"got {tuple(logits.shape)}")
        up = _resize(logits, labels.shape[-2:])
        ce = F.cross_entropy(up, labels.long(), ignore_index=ignore_index, reduction="none")
        if ohem is not None and name == "decode":
            ce = ce * ohem_weights(up, labels, ohem["thresh"], ohem["min_kept"], ignore_index)
        value = ce.sum() / labels.numel()
        parts[name] = value.detach()
        loss = loss + weights[name] * value
    return loss, parts


# ----------------------------------------------------------------------------------------------
# Registered models (spec §1.2 backbones and drop-path, §2.2 heads, §6.1 Vim-S)
# ----------------------------------------------------------------------------------------------
_SEG_CFG = imagenet_cfg(input_size=(3, 512, 512), num_classes=150, task="segmentation", crop_pct=1.0,
                        interpolation="bilinear", first_conv="", classifier="decode_head.conv_seg")
_HEAD_KEYS = ("channels", "aux_channels", "aux_weight", "dropout", "ohem", "class_prior")
_BACKBONE_KEYS = ("drop_path_rate", "frozen_stages")


def _build(backbone_name, num_classes, img_size, defaults, pretrained_backbone=None, backbone_kwargs=None,
           **overrides):
    unknown = sorted(set(overrides) - set(_HEAD_KEYS) - set(_BACKBONE_KEYS))
    if unknown:
        raise ValueError(f"unknown UperNet overrides {unknown}; expected some of {_HEAD_KEYS + _BACKBONE_KEYS} "
                         "or pretrained_backbone, backbone_kwargs")
    cfg = dict(defaults, **overrides)
    bb_kwargs = dict(cfg.pop("backbone_kwargs", {}), **(backbone_kwargs or {}))
    bb_kwargs.update({k: cfg.pop(k) for k in _BACKBONE_KEYS if k in cfg})
    backbone = DenseBackbone(backbone_name, img_size=img_size, **bb_kwargs)
    if pretrained_backbone:
        backbone.load_pretrained(pretrained_backbone)
    return UperNet(backbone, num_classes, **cfg)


@register_model(_SEG_CFG)
def upernet_vmamba_tiny_s1l8(num_classes=150, img_size=(512, 512), **overrides):
    """UperNet + VMamba-T[s1l8] (61,902,572 params; 948.78 GFLOPs at 512x2048)."""
    return _build("vmamba_tiny_s1l8", num_classes, img_size, dict(drop_path_rate=0.2), **overrides)


@register_model(_SEG_CFG)
def upernet_vmamba_small_s2l15(num_classes=150, img_size=(512, 512), **overrides):
    """UperNet + VMamba-S[s2l15] (81,801,260 params; 1028.40 GFLOPs at 512x2048)."""
    return _build("vmamba_small_s2l15", num_classes, img_size, dict(drop_path_rate=0.3), **overrides)


@register_model(_SEG_CFG)
def upernet_vmamba_base_s2l15(num_classes=150, img_size=(512, 512), **overrides):
    """UperNet + VMamba-B[s2l15] (122,069,292 params; 1170.34 GFLOPs at 512x2048)."""
    return _build("vmamba_base_s2l15", num_classes, img_size, dict(drop_path_rate=0.6), **overrides)


@register_model(_SEG_CFG)
def upernet_pvmamba_tiny(num_classes=150, img_size=(512, 512), **overrides):
    """UperNet + PVMamba-T (our design, spec §5: no official dense code)."""
    return _build("pvmamba_tiny", num_classes, img_size, dict(drop_path_rate=0.2), **overrides)


@register_model(_SEG_CFG)
def upernet_vim_small(num_classes=150, img_size=(512, 512), **overrides):
    """UperNet + Vim-S with the simple pyramid (spec §6.1: taps 5/11/17/23, head channels 384)."""
    return _build("vim_small", num_classes, img_size, dict(channels=384), **overrides)


@register_model(dict(_SEG_CFG, input_size=(3, 128, 128), num_classes=11))
def upernet_vmamba_mnist(num_classes=11, img_size=(128, 128), **overrides):
    """A small UperNet for the MNIST canvases (background + 10 digits): VMamba dims 32, depths 1-1-2-1
    (VMamba-T[s1l8]'s SSM settings) with a stride-2 stem, so the pyramid is at strides 2/4/8/16 and the
    head predicts at stride 2 (the strokes are 3-5 pixels wide: ideal class probabilities pooled to
    stride 4 and upsampled score only 72.8 mIoU on the validation canvases, 94.4 at stride 2); head 64 /
    aux 32 channels, no dropout or drop-path; mmseg's OHEM pixel sampler on the decode head (thresh 0.7,
    min_kept 375 per image: ~9% of a 64² crop) and classifier biases initialised to the pixel frequencies
    (background 93.5%), since background dominates. Not a published model. Measured (canvas recipe, 6
    epochs, stride 4, head 128): without the prior init the model predicted only background for its first
    ~2 epochs (49.6 mIoU at the end); with it and stride 2, 9 epochs: 72.1 (README)."""
    background = 0.935
    prior = (background,) + ((1 - background) / (num_classes - 1),) * (num_classes - 1) if num_classes > 1 else None
    defaults = dict(channels=64, aux_channels=32, dropout=0.0, drop_path_rate=0.0, class_prior=prior,
                    ohem=dict(thresh=0.7, min_kept=375),
                    backbone_kwargs=dict(dims=32, depths=(1, 1, 2, 1), patch_size=2))
    return _build("vmamba_tiny_s1l8", num_classes, img_size, defaults, **overrides)
