"""Detection and segmentation for the trainer and the eval tools: their datasets and evaluation loops.

    train_set, val_set, info = dense.build_datasets(cfg)            # cfg["task"], cfg["dataset"], ...
    metrics = dense.evaluate(model, loader, device, amp, val_set, "detection")   # {"bbox_AP": ...}

Datasets (py.training.dense_data): COCO instances for detection, ADE20K or COCO instances for
segmentation, and with no --data_path the embedded MNIST-5k digit canvases (py.training.canvases),
written once in COCO layout so the same loaders serve them. Metrics (py.eval.dense_metrics): COCO box
and mask AP through pycocotools; mIoU/mAcc/aAcc accumulated over the whole split (dense.md §7).
"""
import math

import torch
import torch.nn.functional as F

from py.training import engine

HEADLINE = {"detection": ("bbox_AP", "box AP"), "segmentation": ("mIoU", "mIoU")}
# The canvases' segmentation pipeline departs from mmseg's: a mirrored digit is not a digit (no flip),
# the digits are already drawn at 1-2x (ratio 0.75-1.25, not 0.5-2), and background always covers
# more than 75% of a canvas, so the crop retries only ask for some digit (>= 1% of the pixels).
CANVAS_SEG_POLICY = dict(flip_p=0.0, ratio_range=(0.75, 1.25), cat_max_ratio=0.99)
TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg's multi-scale test, each with and without h-flip


# What --data_path must hold, per task (the error messages name it).
DATA_LAYOUTS = {
    "classification": "train/ and val/ directories, one sub-directory per class",
    "detection": "COCO: annotations/instances_train2017.json, annotations/instances_val2017.json, train2017/, val2017/",
    "segmentation": "ADE20K: images/{training,validation}/ and annotations/{training,validation}/, or COCO instances "
                    "(annotations/instances_{train,val}2017.json, train2017/, val2017/)",
}


def dataset_kind(task, data_path):
    """mnist5k / imagefolder (classification), mnist_canvas (dense, no data_path), coco or ade20k; a
    ValueError saying what the directory lacks."""
    if task == "classification":
        return "mnist5k" if data_path is None else "imagefolder"
    if data_path is None:
        return "mnist_canvas"
    if task == "segmentation" and (data_path / "images" / "training").is_dir():
        return "ade20k"
    if (data_path / "annotations" / "instances_train2017.json").is_file():
        return "coco"
    raise ValueError(f"{data_path} does not hold a {task} dataset (expected {DATA_LAYOUTS[task]})")


def dataset_root(cfg):
    """--data_path, or the embedded canvases (written on first use, verified on every later one)."""
    if cfg["data_path"]:
        return cfg["data_path"]
    from py.training import canvases
    return canvases.ensure_canvases(val_fraction=cfg["val_fraction"])


def crop_size(cfg):
    """Segmentation training crop (H, W): --img_size, else the model's own input size (512² for the
    paper models, 128² for the canvases)."""
    if cfg.get("img_size"):
        return (cfg["img_size"], cfg["img_size"])
    from py.models.registry import registered_cfg
    return tuple(registered_cfg(cfg["model"])["input_size"][1:])


def build_datasets(cfg, train=True):
    """(train set or None, val set, info) for cfg["task"]; info: num_classes, class_names."""
    from py.training import dense_data
    root = dataset_root(cfg)
    if cfg["task"] == "detection":
        # 1x: flip only (the model resizes); 3x: flip, then the multi-scale resize/crop (dense.md §1.5).
        train_tf = (dense_data.Compose([dense_data.HorizontalFlip(0.5), dense_data.MultiScaleCrop()])
                    if cfg.get("multiscale") else dense_data.HorizontalFlip(0.5))
        train_set = dense_data.CocoDetection(root, "train", train_tf, train_filter=True) if train else None
        val_set = dense_data.CocoDetection(root, "val", None)
        names = list(val_set.class_names)  # names[label]; names[0] is the background
        return train_set, val_set, {"num_classes": len(names) - 1, "class_names": names}
    train_tf, eval_tf = segmentation_transforms(cfg)
    train_set = dense_data.SemanticSegmentation(root, "train", train_tf) if train else None
    val_set = dense_data.SemanticSegmentation(root, "val", eval_tf)
    # flip_tta: --tta mirrors the images only if training does (never the canvases' digits)
    return train_set, val_set, {"num_classes": val_set.num_classes, "class_names": val_set.class_names,
                                "flip_tta": train_tf.flip_p > 0}


def segmentation_transforms(cfg):
    """(train, eval) transforms: mmseg's §2.5 pipeline scaled to the crop, or for the canvases (no
    --data_path) CANVAS_SEG_POLICY at the canvases' own size whatever the crop (a smaller crop is a
    cheaper step; validation sees whole canvases)."""
    from py.training import dense_data
    crop = crop_size(cfg)
    if cfg["data_path"]:
        scale, policy = (4 * crop[1], crop[0]), {}  # mmseg: (2048, 512) for a 512² crop
    else:
        from py.training import canvases
        scale, policy = (4 * canvases.CANVAS_SIZE, canvases.CANVAS_SIZE), CANVAS_SEG_POLICY
    return (dense_data.SegTrainTransform(scale=scale, crop_size=crop, **policy),
            dense_data.SegEvalTransform(scale=scale))


def train_collate(task):
    """Detection: lists (images differ in size; the model batches them). Segmentation: stacked crops."""
    from py.training import dense_data

    def collate(batch):
        images, targets, skipped = dense_data.dense_collate(batch)
        if task == "segmentation":  # targets are (label, meta) pairs
            if not images:
                return torch.zeros(0), torch.zeros(0, dtype=torch.long), skipped
            return torch.stack(images), torch.stack([label for label, _ in targets]), skipped
        return images, targets, skipped
    return collate


def val_collate(batch):
    from py.training import dense_data
    return dense_data.dense_collate(batch)


@torch.no_grad()
def evaluate(model, loader, device, amp, dataset, task, tta=False, stats=None, flip=True):
    """The task's validation metrics over the loader (every rank's share, merged); tta, flip: see segment."""
    model.eval()
    if task == "detection":
        return evaluate_detection(model, loader, device, amp, dataset, stats)
    return evaluate_segmentation(model, loader, device, amp, dataset.num_classes, tta, stats, flip)


def evaluate_detection(model, loader, device, amp, dataset, stats=None):
    """COCO box and mask AP (pycocotools, dense.md §7.1) of the model's detections."""
    from py.eval.dense_metrics import CocoEvaluator
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    count = skipped = 0
    for batch in loader:
        images, targets, dropped = engine.split_batch(batch)
        skipped += dropped
        if not len(images):
            continue
        with engine.autocast(device.type, amp):
            outputs = model(engine.to_device(list(images), device))
        for out, target in zip(outputs, targets):
            masks = out.get("masks")
            evaluator.update(int(target["image_id"]), out["boxes"].float().cpu(), out["scores"].float().cpu(),
                             out["labels"].cpu(), None if masks is None else masks.float().cpu())
        count += len(images)
    evaluator.gather()
    _record(stats, count, skipped, device)
    return evaluator.summarize()


def evaluate_segmentation(model, loader, device, amp, num_classes, tta=False, stats=None, flip=True):
    """mIoU, mAcc, aAcc (dense.md §7.2) at the labels' original resolution; tta: multi-scale (+ flip)."""
    from py.eval.dense_metrics import SegmentationMetric
    metric = SegmentationMetric(num_classes)
    count = skipped = 0
    for batch in loader:
        images, targets, dropped = engine.split_batch(batch)
        skipped += dropped
        for image, (label, _) in zip(images, targets):
            scores = segment(model, image.to(device), tuple(label.shape[-2:]), amp, tta, flip)
            metric.update(scores.argmax(0).cpu(), label)
            count += 1
    metric.all_reduce(device)
    _record(stats, count, skipped, device)
    return metric.compute()


def segment(model, image, out_size, amp="none", tta=False, flip=True):
    """(K, H, W) class scores of one normalised (3, h, w) image at `out_size` (the label's size).

    Single scale: logits resized to the input, then to out_size (bilinear), as mmseg's whole-image
    test. tta: the mean of the softmax over TTA_RATIOS × {plain, h-flipped}, each view's input the
    image resized by the ratio (mmseg 1.x); flip=False leaves out the flipped views (build_datasets'
    info["flip_tta"]: False for the digit canvases)."""
    if not tta:
        return F.interpolate(_logits(model, image[None], amp), size=out_size, mode="bilinear",
                             align_corners=False)[0]
    total = 0
    h, w = image.shape[-2:]
    for r in TTA_RATIOS:
        size = (max(1, int(h * r + 0.5)), max(1, int(w * r + 0.5)))
        view = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            logits = _logits(model, view.flip(-1) if mirrored else view, amp)
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            total = total + F.softmax(logits.flip(-1) if mirrored else logits, dim=1)
    return total[0] / ((2 if flip else 1) * len(TTA_RATIOS))


def _logits(model, x, amp):
    """Decode logits resized to x's size; models with a fixed input size (Vim's patch grid) are run in
    sliding windows of that size, overlapping by a third, logits averaged (Vim's slide test)."""
    window = getattr(model, "max_input_size", None)
    with engine.autocast(x.device.type, amp):
        if window is None or (x.shape[-2] <= window[0] and x.shape[-1] <= window[1]):
            return F.interpolate(model(x).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return _slide(model, x, window)


def _slide(model, x, window):
    (h, w), (wh, ww) = x.shape[-2:], window
    sh, sw = max(1, math.ceil(wh * 2 / 3)), max(1, math.ceil(ww * 2 / 3))
    total, hits = None, x.new_zeros(1, 1, h, w)
    for top in _starts(h, wh, sh):
        for left in _starts(w, ww, sw):
            crop = x[..., top:top + wh, left:left + ww]
            logits = F.interpolate(model(crop).float(), size=crop.shape[-2:], mode="bilinear", align_corners=False)
            if total is None:
                total = x.new_zeros(1, logits.shape[1], h, w)
            total[..., top:top + wh, left:left + ww] += logits
            hits[..., top:top + wh, left:left + ww] += 1
    return total / hits


def _starts(size, window, stride):
    """Window offsets covering [0, size): stride apart, the last one flush with the border."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def _record(stats, count, skipped, device):
    if stats is not None:
        count, skipped = engine.all_reduce_sum([count, skipped], device)
        stats["images"], stats["skipped_images"] = int(count), int(skipped)
