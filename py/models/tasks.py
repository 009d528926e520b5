"""What training and evaluation need from a model beyond its forward: its loss and its reports.

    task = py.models.build_task(model, teacher=teacher, label_smoothing=0.1)
    loss, logits = task.loss(model_or_wrapper, images, targets)    # targets: (B,) labels or (B, C) soft
    row.update(task.epoch_report(model, images))                     # extra per-epoch metrics ({} usually)

The trainer, the profiler and export call this interface; which family needs what (DyVM: its own
objective with a teacher, keep-ratio and GFLOPs reports) is known only here, in py/models.
"""
import torch
import torch.nn.functional as F

__all__ = ["ClassificationTask", "DyVMTask", "build_task"]


class ClassificationTask:
    """Cross-entropy on the logits (soft targets from mixup/cutmix as their expectation)."""

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


def build_task(model, teacher=None, label_smoothing=0.0):
    """The task object for `model` (unwrapped: not DDP/compiled)."""
    from py.models.dyvm import DyVM
    if isinstance(model, DyVM):
        return DyVMTask(model, teacher, label_smoothing)
    return ClassificationTask(label_smoothing)
