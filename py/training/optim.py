"""AdamW parameter groups and the per-step learning-rate schedules (warmup, then cosine, step or poly)."""
import math

import torch

# Parameters that get no weight decay, besides every 1-D tensor (norm weights, biases): the SSM's
# A_log/D (Mamba convention) and embeddings/tokens (Swin/DeiT convention).
NO_DECAY_NAMES = ("A_log", "A_b_log", "Ds", "D", "D_b", "A_logs", "pos_embed", "cls_token",
                  "absolute_pos_embed", "relative_position_bias_table")


# mmdet/mmseg's rule for the dense recipes (dense.md §1.6, mmengine custom_keys): no decay for every
# parameter whose full name contains one of these; everything else (biases, A_logs, Ds, the index-named
# stem/downsample LayerNorms, BatchNorm `bn` weights) is decayed.
NORM_NAME_KEYS = ("norm", "absolute_pos_embed", "relative_position_bias_table")
NO_DECAY_RULES = ("default", "norm_names")


def _no_decay(name, param, rule="default"):
    if rule == "norm_names":
        return any(k in name for k in NORM_NAME_KEYS)
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or name.endswith(".bias") or leaf in NO_DECAY_NAMES


def param_groups(model, weight_decay, layer_decay=1.0, rule="default"):
    """AdamW groups: decayed weights, and norms/biases/A_log/D/embeddings without decay (rule
    "default"), or, rule "norm_names", only the parameters named like norms (mmdet/mmseg recipes).

    layer_decay < 1 (layer-wise lr decay, BEiT/timm style) splits both by the family's layer ids
    (py.models.layer_ids: embeddings 0, layers in order, head last = L - 1); group "lr_scale" is
    layer_decay ** (L - 1 - id), so the head trains at the full lr and the embeddings at the least."""
    if layer_decay == 1.0:
        ids, num_layers = None, 1
    else:
        from py.models import layer_ids
        ids, num_layers = layer_ids(model)
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = ids[name] if ids is not None else 0
        no_decay = _no_decay(name, p, rule)
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - 1 - layer), "layer_id": layer}
        groups[key]["params"].append(p)
    if ids is None:  # the two groups always exist (and in this order), as the optimizer state expects
        for no_decay in (False, True):
            groups.setdefault((0, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                              "lr_scale": 1.0, "layer_id": 0})
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8, layer_decay=1.0, rule="default"):
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"no-decay rule must be one of {NO_DECAY_RULES}, got {rule!r}")
    return torch.optim.AdamW(param_groups(model, weight_decay, layer_decay, rule), lr=lr, betas=betas, eps=eps)


def peak_group_lr(optimizer):
    """The schedule's lr: that of the groups at lr_scale 1 (with layer decay, the head's)."""
    return max(g["lr"] for g in optimizer.param_groups)


class WarmupCosine:
    """lr(step): linear warmup_lr → base_lr over warmup_steps, then cosine base_lr → min_lr.

    Stateless in `step`, so resuming only needs the step counter.
    """

    def __init__(self, optimizer, base_lr, total_steps, warmup_steps=0, warmup_lr=0.0, min_lr=0.0):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        self.optimizer = optimizer
        self.base_lr, self.min_lr, self.warmup_lr = base_lr, min_lr, warmup_lr
        self.total_steps, self.warmup_steps = total_steps, min(warmup_steps, total_steps)

    def lr_at(self, step):
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        return self.after_warmup(step)

    def after_warmup(self, step):
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def set_step(self, step):
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


class WarmupStep(WarmupCosine):
    """Warmup, then base_lr × factor^(number of milestones passed) (mmdet's 1x/3x: ×0.1 after epochs
    8 and 11, or 27 and 33); milestones are step counts (the trainer converts epochs)."""

    def __init__(self, optimizer, base_lr, total_steps, milestones, factor=0.1, warmup_steps=0, warmup_lr=0.0):
        super().__init__(optimizer, base_lr, total_steps, warmup_steps, warmup_lr)
        self.milestones, self.factor = sorted(milestones), factor

    def after_warmup(self, step):
        return self.base_lr * self.factor ** sum(step >= m for m in self.milestones)


class WarmupPoly(WarmupCosine):
    """Warmup, then min_lr + (base_lr − min_lr)·(1 − (step − warmup)/(total − warmup))^power (mmseg's 160k
    schedule: power 1, min_lr 0, warmup 1500 iterations from 1e-6 × base)."""

    def __init__(self, optimizer, base_lr, total_steps, power=1.0, warmup_steps=0, warmup_lr=0.0, min_lr=0.0):
        super().__init__(optimizer, base_lr, total_steps, warmup_steps, warmup_lr, min_lr)
        self.power = power

    def after_warmup(self, step):
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 - t) ** self.power
