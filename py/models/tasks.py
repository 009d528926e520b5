"""What training and evaluation need from a model beyond its forward: its loss and its reports.

    task = py.models.build_task(model, teacher=teacher, label_smoothing=0.1)
    loss, logits = task.loss(model_or_wrapper, images, targets)    # targets: (B,) labels or (B, C) soft
    row.update(task.epoch_report(model, images))                     # extra per-epoch metrics ({} usually)
    task = py.models.build_task(model, mesa=1.0)                     # MESA: task.loss(..., ema=ema_module)

The trainer, the profiler and export call this interface; which family needs what (DyVM: its own
objective with a teacher, keep-ratio and GFLOPs reports; detectors and segmenters: their own losses,
`task.kind` "detection"/"segmentation", and logits None) is known only here, in py/models.
"""
import torch
import torch.nn.functional as F

__all__ = ["ClassificationTask", "DetectionTask", "DyVMTask", "MesaTask", "SegmentationTask", "build_task",
           "mesa_term"]


class ClassificationTask:
    """Cross-entropy on the logits (soft targets from mixup/cutmix as their expectation)."""

    kind = "classification"

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing

    def loss(self, model, images, targets):
        """(loss, logits) of `model` (the module to call: possibly DDP/compiled) on a training batch."""
        logits = model(images)
        if targets.dim() == 2:
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean(), logits
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing), logits

    def epoch_report(self, model, images=None):
        """Extra metrics for the epoch line (none for plain classifiers)."""
        return {}


class DyVMTask(ClassificationTask):
    """DyVM's objective (classification + token/block ratio + distillation from a frozen teacher,
    py.models.dyvm.DyVMLoss) and its per-epoch reports: achieved token and block keep ratios and the
    inference GFLOPs per image, measured on real images (pruning and block skipping depend on them)."""

    def __init__(self, model, teacher=None, label_smoothing=0.0):
        super().__init__(label_smoothing)
        self.objective = model.build_loss(teacher=teacher, label_smoothing=label_smoothing)

    def loss(self, model, images, targets):
        return self.objective(model, images, targets)

    def epoch_report(self, model, images=None):
        from py.models.flops import count_flops
        report = model.keep_ratio_report()
        if images is not None and len(images):
            report["gflops_per_image"] = count_flops(model, inputs=images)["total"] / len(images) / 1e9
            model.keep_ratio_report()  # the counting forward's gates do not belong to the next epoch
        return report


class MesaTask:
    """MESA (EMA self-distillation, as in PVMamba's/VSSD's classification/main.py): the wrapped task's
    loss + weight · SoftCE(logits, softmax(EMA logits)), the EMA logits from the EMA model in eval mode
    under inference_mode. `ema` (the EMA module, or None while MESA is not yet on) is passed per call:
    the caller decides from when (PVMamba: from epoch 0.25·epochs on)."""

    def __init__(self, task, weight):
        self.task, self.weight = task, weight

    def loss(self, model, images, targets, ema=None):
        loss, logits = self.task.loss(model, images, targets)
        if ema is None or self.weight == 0:
            return loss, logits
        return loss + self.weight * mesa_term(logits, ema, images), logits

    def epoch_report(self, model, images=None):
        return self.task.epoch_report(model, images)


def mesa_term(logits, ema, images):
    """SoftCE(logits, softmax(ema(images))): mean over the batch of -Σ_c p_ema,c · log_softmax(logits)_c."""
    was_training = ema.training
    ema.eval()
    with torch.inference_mode():
        ema_logits = ema(images)
    ema.train(was_training)
    target = F.softmax(ema_logits.float().clone(), dim=-1)  # clone: inference tensors cannot enter autograd
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class DetectionTask:
    """A torchvision-style detector (py.models.dense.mask_rcnn): in training mode the model takes the
    images (a list of (3, H, W) tensors) and targets (dicts of boxes/labels/masks) and returns its loss
    terms; the loss is their sum. Returns (loss, None): there are no logits to score."""

    kind = "detection"

    def loss(self, model, images, targets):
        terms = model(images, targets)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return sum(terms.values()), None

    def epoch_report(self, model, images=None):
        return {}


class SegmentationTask:
    """A segmenter (py.models.dense.upernet): in training mode the model returns its decode and
    auxiliary logits; the loss is mmseg's per-pixel cross-entropy over all pixels (dense.md §2.4), through
    the model's OHEM pixel sampler (`model.ohem`) when it has one."""

    kind = "segmentation"

    def __init__(self, model):
        self.aux_weight = getattr(model, "aux_weight", 0.0)
        self.ohem = getattr(model, "ohem", None)

    def loss(self, model, images, labels):
        from py.models.dense.upernet import segmentation_loss
        loss, parts = segmentation_loss(model(images), labels, aux_weight=self.aux_weight, ohem=self.ohem)
        self.last_terms = {k: float(v.detach()) for k, v in parts.items()}
        return loss, None

    def epoch_report(self, model, images=None):
        return {}


def build_task(model, teacher=None, label_smoothing=0.0, mesa=0.0):
    """The task object for `model` (unwrapped: not DDP/compiled); mesa > 0 adds MESA with that weight."""
    from py.models.dyvm import DyVM
    kind = getattr(model, "task", "classification")
    if kind == "detection":
        return DetectionTask()
    if kind == "segmentation":
        return SegmentationTask(model)
    task = DyVMTask(model, teacher, label_smoothing) if isinstance(model, DyVM) else ClassificationTask(label_smoothing)
    return MesaTask(task, mesa) if mesa > 0 else task
