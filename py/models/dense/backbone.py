"""Dense-prediction backbones: a registered classifier as a feature pyramid at strides 4/8/16/32 (a VMamba
with patch_size=2: 2/4/8/16).

Spec: /work/shared/specs/dense.md §1.2 (VMamba's Backbone_VSSM), §5 (PVMamba), §6.1/§6.3 (Vim/DyVM).

    backbone = DenseBackbone("vmamba_tiny_s1l8", drop_path_rate=0.2)
    feats = backbone(images)            # 4 NCHW maps, level i at ceil(H/strides[i]) x ceil(W/strides[i])
    backbone.load_pretrained("vssm_tiny.pth")

Only the model contract is used (py/models/features.py): create_model(..., features_only=True,
out_indices=...), feature_info, layer_ids() and adapt_checkpoint(). Two kinds of model:
  * hierarchical (VMamba, PVMamba: the taps have growing strides): the taps are the pyramid. Their
    features_only forward already applies the official per-stage `outnorm{i}`.
  * plain (Vim, DyVM: every tap at the patch stride): BEiT's simple pyramid turns the 4 taps into
    strides 4/8/16/32 (spec §6.1), with BEiT's module names fpn1..fpn4. The patch grid is fixed, so
    inputs are zero-padded (bottom/right) to the model's img_size and every level is cropped back.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from py.models import interop, weights
from py.models.registry import create_model

__all__ = ["DenseBackbone", "build_backbone"]

# Modules a classification checkpoint has and a features_only model lacks (VMamba `classifier.*`,
# PVMamba's final `norm.*` and `head.*`, Vim/DyVM `head.*`): dropped when loading one.
_CLASSIFIER_PREFIXES = ("classifier.", "head.", "norm.")
# The per-stage norms Backbone_VSSM / Backbone_PVMAMBA add: absent from classification checkpoints.
_OUTNORM = re.compile(r"^outnorm\d+\.")
_DENSE_PREFIX = "backbone."


def _is_neck_or_head(key):
    """An mmdet/mmseg module other than the backbone: `neck.*` or `<something>_head.*`."""
    top = key.split(".", 1)[0]
    return top == "neck" or top.endswith("_head")


class DenseBackbone(nn.Module):
    """A registered classification model as a 4-level feature pyramid, through the model contract only
    (create_model(..., features_only=True, out_indices=...)); never reaches into model internals beyond that.

    name: a registered model name (vmamba_*, pvmamba_*, vim_*, dyvm_*).
    img_size: the model's img_size (Vim/DyVM: the fixed patch grid, inputs up to this size; default the
        registered one). in_chans, drop_path_rate (None: the model's default), model_kwargs: passed to
        create_model. out_indices: the taps (None: the family's default, 0-3 / Vim layers 5-11-17-23).
    frozen_stages: -1 none; k >= 0 freezes the stem and the first k stages (Vim/DyVM: the embeddings and
        the first k*depth/4 layers): requires_grad False, and kept in eval mode by train().
    """

    def __init__(self, name, img_size=None, in_chans=3, drop_path_rate=None, frozen_stages=-1,
                 out_indices=None, **model_kwargs):
        super().__init__()
        self.name = name
        self.family = interop.family_of(name)
        self.in_chans = in_chans
        kwargs = dict(model_kwargs, features_only=True, in_chans=in_chans)
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        self.model = create_model(name, num_classes=0, img_size=img_size, **kwargs)
        self.input_size = tuple(self.model.default_cfg["input_size"][1:])

        info = self.model.feature_info
        reductions, channels = info.reduction(), info.channels()
        self.plain = len(set(reductions)) == 1
        if self.plain:
            r = reductions[0]
            if len(reductions) != 4 or r % 4:
                raise ValueError(f"{name}: the simple pyramid needs 4 taps at one stride divisible by 4, got "
                                 f"out_indices with strides {reductions} (use 4 out_indices)")
            dim = channels[0]
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                                      nn.ConvTranspose2d(dim, dim, 2, stride=2))
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2))
            self.fpn3 = nn.Identity()
            # ceil_mode: an odd patch grid keeps its last row/column (same as floor for even grids)
            self.fpn4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
            self.strides = [r // 4, r // 2, r, 2 * r]
            self.channels = [dim] * 4
        else:
            self.strides = list(reductions)
            self.channels = list(channels)
        # VMamba accepts only inputs that are multiples of its stem stride; upstream's convs take any size
        # (ceil(n/2) per step). Zero-padding to that multiple gives the same map sizes; values differ only
        # at the bottom/right border, and only when H or W mod 4 is 1 or 2.
        self.pad_multiple = self.strides[0] if self.family == "vmamba" else 1
        self.frozen_stages = frozen_stages
        self._frozen_modules = self._freeze(frozen_stages)

    # -- freezing -------------------------------------------------------------------------------
    def _freeze(self, k):
        """Sets requires_grad False on the stem and the first k stages; returns the names (in self.model)
        of the largest modules whose parameters are all frozen, which train() keeps in eval mode."""
        info = self.model.feature_info
        num_stages = 4 if self.plain else len(info)
        if not isinstance(k, int) or not -1 <= k <= num_stages:
            raise ValueError(f"frozen_stages must be an int in [-1, {num_stages}], got {k!r}")
        if k < 0:
            return []
        ids = self.model.layer_ids()  # the stem / embeddings are layer 0
        if self.plain:  # layer i has id i + 1; k stages = k * depth / 4 layers
            last = k * len(info) // 4
            frozen = {n for n, i in ids.items() if i <= last}
        else:
            stages = tuple(m + "." for m in info.module_name(list(range(k))))
            frozen = {n for n, i in ids.items() if i == 0 or n.startswith(stages)}
        for n, p in self.model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        names = []
        for mname, module in self.model.named_modules():
            params = [mname + "." + n if mname else n for n, _ in module.named_parameters()]
            if mname and params and all(n in frozen for n in params) and not any(
                    mname.startswith(done + ".") for done in names):
                names.append(mname)
        return names

    def train(self, mode=True):
        super().train(mode)
        for name in self._frozen_modules:
            self.model.get_submodule(name).eval()
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        """Recompute the model's blocks in the backward instead of keeping their activations."""
        self.model.set_grad_checkpointing(enable)

    def layer_ids(self):
        """The backbone model's layer_ids() (embeddings 0, ..., its last id for norms/head), the simple
        pyramid with that last id."""
        ids = {f"model.{k}": v for k, v in self.model.layer_ids().items()}
        last = max(ids.values())
        return {n: ids.get(n, last) for n, _ in self.named_parameters()}

    @property
    def max_input_size(self):
        """(H, W) the backbone accepts at most (Vim/DyVM: the fixed patch grid), None if any."""
        return self.input_size if self.plain else None

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{self.name}: expected an NCHW float batch (B, {self.in_chans}, H, W), "
                             f"got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.plain:
            size_h, size_w = self.input_size
            if h > size_h or w > size_w:
                raise ValueError(f"{self.name}: input {h}x{w} is larger than the model's img_size "
                                 f"{size_h}x{size_w} (its patch grid is fixed); build the backbone with "
                                 f"img_size >= the input size, or resize/crop the input")
            taps = self.model(F.pad(x, (0, size_w - w, 0, size_h - h)))
            feats = [self.fpn1(taps[0]), self.fpn2(taps[1]), self.fpn3(taps[2]), self.fpn4(taps[3])]
        else:
            m = self.pad_multiple
            feats = self.model(F.pad(x, (0, -w % m, 0, -h % m)))
        return [f[..., :math.ceil(h / s), :math.ceil(w / s)] for f, s in zip(feats, self.strides)]

    # -- weights --------------------------------------------------------------------------------
    def load_pretrained(self, path, trust_pickle=False):
        """Loads backbone weights through py.models.weights; returns the notes (also printed).

        Accepts a classification checkpoint (ours or official; its classifier is dropped and the
        `outnorm{i}` it lacks keep their init) or an official detection/segmentation checkpoint (the
        `backbone.*` keys, complete incl. `outnorm{i}` and, for Vim/DyVM, `fpn1..fpn4`; `neck.*` and
        `*_head.*` ignored). Anything else missing, unexpected or of another shape raises
        weights.WeightsError listing the keys (never a silent random init). Vim/DyVM position
        embeddings are resampled to this img_size."""
        ckpt = weights.read(path, trust_pickle=trust_pickle)
        _, state = ckpt.select("model")
        source, notes = ckpt.source, []
        dense = any(k.startswith(_DENSE_PREFIX) for k in state)
        if dense:
            state = self._backbone_part(state, source, notes)
        pyramid = {k: v for k, v in state.items() if self.plain and k.startswith("fpn")}
        state = {k: v for k, v in state.items() if k not in pyramid}
        try:
            state = dict(interop.to_ours(self.model, state))
        except ValueError as exc:
            raise weights.WeightsError(f"{source}: {exc}")
        if not dense:
            self._classification_part(state, notes)
        adapt = getattr(self.model, "adapt_checkpoint", None)
        if adapt is not None:
            state = adapt(state, notes)
        weights.load_state(self.model, state, source=source)
        if self.plain and dense:
            pyramid_model = nn.ModuleDict(dict(fpn1=self.fpn1, fpn2=self.fpn2))
            weights.load_state(pyramid_model, pyramid, source=f"{source} (simple pyramid)")
        elif pyramid:
            raise weights.WeightsError(f"{source}: a classification checkpoint with simple-pyramid keys "
                                       f"{sorted(pyramid)[:5]}: pass the whole detection/segmentation checkpoint")
        for note in notes:
            print(f"note: {note}", flush=True)
        return notes

    def _backbone_part(self, state, source, notes):
        """The `backbone.*` tensors of a detection/segmentation checkpoint, prefix removed."""
        others = [k for k in state if not k.startswith(_DENSE_PREFIX)]
        unknown = [k for k in others if not _is_neck_or_head(k)]
        if unknown:
            raise weights.WeightsError(f"{source}: a detection/segmentation checkpoint (it has `backbone.` keys) "
                                       f"with keys that are neither backbone nor neck/head: {unknown[:10]}")
        if others:
            tops = sorted({k.split(".", 1)[0] for k in others})
            notes.append(f"ignored {len(others)} neck/head tensors of the checkpoint ({', '.join(tops)})")
        return {k[len(_DENSE_PREFIX):]: v for k, v in state.items() if k.startswith(_DENSE_PREFIX)}

    def _classification_part(self, state, notes):
        """In place: drops the classifier a features_only model lacks; the missing `outnorm{i}` keep their
        init. Everything else is left for weights.load_state to validate."""
        ours = self.model.state_dict()
        head = [k for k in state if k not in ours and k.startswith(_CLASSIFIER_PREFIXES)]
        for k in head:
            del state[k]
        if head:
            notes.append(f"dropped the classifier of the classification checkpoint ({len(head)} tensors: "
                         f"{', '.join(sorted({k.split('.', 1)[0] for k in head}))})")
        fresh = [k for k in ours if k not in state and _OUTNORM.match(k)]
        for k in fresh:
            state[k] = ours[k]
        if fresh:
            notes.append(f"{', '.join(sorted({k.split('.', 1)[0] for k in fresh}))} are not in the classification "
                         "checkpoint: they keep their initialisation")


def dense_layer_ids(model):
    """{parameter name: layer id} of a detector/segmenter for layer-wise lr decay (BEiT/Vim seg style):
    its DenseBackbone numbered by the backbone model's own layer_ids(), the simple pyramid, neck and
    heads with the last id (full lr)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, DenseBackbone)]
    if len(found) != 1:
        raise TypeError(f"{type(model).__name__} holds {len(found)} DenseBackbones; layer ids need exactly one")
    prefix, backbone = found[0]
    ids = {f"{prefix}.{k}": v for k, v in backbone.layer_ids().items()}
    last = max(ids.values())
    return {n: ids.get(n, last) for n, _ in model.named_parameters()}


def build_backbone(name, **kwargs):
    """DenseBackbone(name, **kwargs)."""
    return DenseBackbone(name, **kwargs)
