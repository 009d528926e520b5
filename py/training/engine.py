"""Training and evaluation loops, EMA, distributed helpers."""
import contextlib
import copy
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Distributed

def init_distributed(device_kind):
    """Joins the torchrun group if launched by torchrun; returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def shutdown_distributed():
    """Leaves the process group, if any. Without it the group is torn down during interpreter exit,
    where gloo's threads can abort the process ("terminate called without an active exception")
    after training has finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values, device):
    """Sums a list of floats across ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------------------------
# EMA

class ModelEma:
    """Exponential moving average of a model's weights (buffers copied), kept in fp32."""

    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m.detach(), alpha=1.0 - self.decay)
            else:
                e.copy_(m)


# ----------------------------------------------------------------------------------------------
# Loops

def autocast(device_kind, amp):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_kind, dtype=dtype)


def train_one_epoch(ctx, epoch, loader, start_step_in_epoch, running, on_step_end):
    """Runs one epoch (or its remainder after a resume).

    ctx: the Trainer (model, optimizer, schedule, ...). running: dict of sums carried across a
    resume so epoch means are exact. on_step_end(step_in_epoch) may checkpoint or stop; it returns
    True to stop early.
    """
    model, cfg = ctx.model, ctx.cfg
    model.train()
    accum = cfg["accum_steps"]
    steps_per_epoch = ctx.steps_per_epoch
    step_in_epoch = start_step_in_epoch
    progress = ctx.progress_bar(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}")
    micro = 0
    t0 = time.perf_counter()
    images_seen = 0
    ctx.optimizer.zero_grad(set_to_none=True)
    stepped = False  # did any micro-batch of this optimizer step produce gradients
    for batch in loader:
        images, targets, skipped = split_batch(batch)
        running["skipped_images"] = running.get("skipped_images", 0) + skipped
        if ctx.mixup is not None and images.shape[0] % 2:
            # Unreadable images made the batch odd; timm's Mixup pairs each image with the reversed batch.
            images, targets = images[:-1], targets[:-1]
        images = to_device(images, ctx.device)
        targets = to_device(targets, ctx.device)
        sync = (micro + 1) % accum == 0
        if len(images) == 0:  # every image of this micro-batch was unreadable: nothing to learn from
            finite = True
            empty = True
        else:
            empty = False
            if ctx.mixup is not None:
                images, soft_targets = ctx.mixup(images, targets)
            else:
                soft_targets = None
        no_sync = model.no_sync if (hasattr(model, "no_sync") and not sync) else contextlib.nullcontext
        with no_sync():
            diverged = False
            if not empty:
                try:
                    with autocast(ctx.device.type, cfg["amp"]):
                        loss, logits = ctx.compute_loss(images, targets, soft_targets)
                    finite = bool(torch.isfinite(loss.detach()).all())
                except ValueError as exc:
                    # Ops reject non-finite derived parameters ("A must be finite", where A = -exp(A_log)
                    # overflowed): the run diverged, like a NaN loss.
                    if "must be finite" not in str(exc):
                        raise
                    loss, finite, diverged = torch.tensor(float("nan")), False, True
                if finite:
                    ctx.scaler.scale(loss / accum).backward()
                    stepped = True
        if not finite:
            if cfg["on_nan"] == "stop" or diverged or not params_finite(ctx.unwrapped):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step_in_epoch + 1}; "
                                    "stopping; the last good checkpoint stays latest "
                                    "(--on_nan=skip skips such steps while the weights are finite)")
            running["skipped_steps"] += 1
            ctx.optimizer.zero_grad(set_to_none=True)
            micro = 0
            stepped = False
            step_in_epoch += 1
            progress.update(1)
            continue
        micro += 1
        if not empty:
            running["loss_sum"] += loss.item() * len(images)
            running["count"] += len(images)
            if logits is not None and soft_targets is None:  # dense tasks have no logits to score
                running["correct"] += (logits.argmax(-1) == targets).sum().item()
            images_seen += len(images)
        if not sync:
            continue
        micro = 0
        ctx.schedule.set_step(ctx.global_step)
        if stepped:
            if cfg["clip_grad"] > 0:
                ctx.scaler.unscale_(ctx.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:  # no readable image in the whole step: the step counts (schedule, resume offsets) but changes nothing
            running["skipped_steps"] += 1
        stepped = False
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.ema is not None:
            ctx.ema.update(ctx.unwrapped)
        ctx.global_step += 1
        step_in_epoch += 1
        elapsed = time.perf_counter() - t0
        progress.update(1)
        progress.set_postfix(loss=f"{running['loss_sum'] / max(1, running['count']):.4f}",
                             lr=f"{max(g['lr'] for g in ctx.optimizer.param_groups):.2e}",
                             img_s=f"{images_seen * ctx.world_size / max(elapsed, 1e-9):.0f}")
        if on_step_end(step_in_epoch):
            progress.close()
            return step_in_epoch, images_seen, time.perf_counter() - t0
    progress.close()
    return step_in_epoch, images_seen, time.perf_counter() - t0


def to_device(obj, device):
    """Tensors, or lists/tuples/dicts of them (detection images and targets), on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def split_batch(batch):
    """(images, targets, number of unreadable images dropped) of a loader batch: data.skip_collate
    gives all three, a default-collated batch the first two."""
    if len(batch) == 3:
        return batch[0], batch[1], int(batch[2])
    images, targets = batch
    return images, targets, 0


@torch.no_grad()
def evaluate(model, loader, device, amp, num_classes, stats=None):
    """(top1 %, top5 %, mean loss, per-class accuracy %) over the loader, summed across ranks.

    `stats`, a dict, receives "images" (evaluated) and "skipped_images" (unreadable, dropped)."""
    model.eval()
    loss_sum = correct1 = correct5 = count = skipped = 0.0
    per_class_correct = torch.zeros(num_classes, dtype=torch.float64)
    per_class_count = torch.zeros(num_classes, dtype=torch.float64)
    for batch in loader:
        images, targets, dropped = split_batch(batch)
        skipped += dropped
        if images.shape[0] == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast(device.type, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit1 = top[:, 0] == targets
        correct1 += hit1.sum().item()
        correct5 += (top == targets[:, None]).any(-1).sum().item()
        count += targets.numel()
        per_class_count += torch.bincount(targets.cpu(), minlength=num_classes).double()
        per_class_correct += torch.bincount(targets[hit1].cpu(), minlength=num_classes).double()
    sums = all_reduce_sum([loss_sum, correct1, correct5, count, skipped] + per_class_correct.tolist()
                          + per_class_count.tolist(), device)
    loss_sum, correct1, correct5, count, skipped = sums[:5]
    if stats is not None:
        stats["images"], stats["skipped_images"] = int(count), int(skipped)
    pc_correct = torch.tensor(sums[5:5 + num_classes])
    pc_count = torch.tensor(sums[5 + num_classes:])
    per_class = (100.0 * pc_correct / pc_count.clamp(min=1)).tolist()
    count = max(count, 1.0)
    return 100.0 * correct1 / count, 100.0 * correct5 / count, loss_sum / count, per_class


def params_finite(module):
    return all(torch.isfinite(p).all() for p in module.parameters())


def seconds_to_text(s):
    m, s = divmod(int(math.ceil(s)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
