"""AdamW parameter groups and the per-step warmup + cosine learning-rate schedule."""
import math

import torch

# Parameters that get no weight decay, besides every 1-D tensor (norm weights, biases): the SSM's
# A_log/D (Mamba convention) and embeddings/tokens (Swin/DeiT convention).
NO_DECAY_NAMES = ("A_log", "A_b_log", "Ds", "D", "D_b", "A_logs", "pos_embed", "cls_token",
                  "absolute_pos_embed", "relative_position_bias_table")


def _no_decay(name, param):
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or name.endswith(".bias") or leaf in NO_DECAY_NAMES


def param_groups(model, weight_decay):
    """Two AdamW groups: decayed weights, and norms/biases/A_log/D/embeddings without decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


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
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def set_step(self, step):
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
