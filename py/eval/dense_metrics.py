"""Dense prediction metrics (spec dense.md §7): COCO box/mask AP and ADE20K-style mIoU.

CocoEvaluator collects detections as COCO results JSON (one list serves both iou types: a result
carries bbox and, with masks, segmentation, as mmdet writes them) and runs pycocotools' COCOeval over
the images it was given, with its prints captured into `report`. SegmentationMetric accumulates
per-class intersection/union/areas over the dataset (mmseg IoUMetric) and can sum them across ranks.
"""
import contextlib
import copy
import io
import math

import numpy as np
import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _numpy(x, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype) if dtype is not None else x


class CocoEvaluator:
    """COCO AP for one dataset. label_to_cat_id maps a model label (1..K) to the COCO category id
    (a dict, or anything indexable by the label)."""

    def __init__(self, coco_gt, label_to_cat_id, iou_types=("bbox", "segm")):
        bad = [t for t in iou_types if t not in ("bbox", "segm")]
        if bad or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of ('bbox', 'segm'), got {iou_types}")
        self.coco_gt, self.label_to_cat_id, self.iou_types = coco_gt, label_to_cat_id, tuple(iou_types)
        self.results, self.image_ids, self.report = [], [], ""

    def update(self, image_id, boxes, scores, labels, masks=None):
        """Adds the detections of one image (boxes xyxy in original pixels, masks at the original
        size as probabilities or bools, (N,H,W) or (N,1,H,W)); returns its results JSON entries."""
        from pycocotools import mask as mask_utils
        image_id = int(image_id)
        if image_id not in self.coco_gt.imgs:
            raise ValueError(f"image_id {image_id} is not an image of the ground truth")
        boxes, scores = _numpy(boxes, np.float64), _numpy(scores, np.float64)
        labels = _numpy(labels, np.int64)
        n = len(scores)
        if boxes.shape != (n, 4) or labels.shape != (n,) or scores.shape != (n,):
            raise ValueError(f"expected boxes (N,4), scores (N,), labels (N,) with the same N; got boxes "
                             f"{boxes.shape}, scores {scores.shape}, labels {labels.shape}")
        rles = None
        if "segm" in self.iou_types:
            if masks is None:
                raise ValueError("masks are required when iou_types includes 'segm'")
            masks = _numpy(masks)
            if masks.ndim == 4 and masks.shape[1] == 1:
                masks = masks[:, 0]
            info = self.coco_gt.imgs[image_id]
            if masks.shape != (n, info["height"], info["width"]):
                raise ValueError(f"masks must be (N, H, W) = ({n}, {info['height']}, {info['width']}) for image "
                                 f"{image_id} (or (N,1,H,W)), got {masks.shape}")
            binary = np.asfortranarray((masks >= 0.5).transpose(1, 2, 0).astype(np.uint8))
            rles = mask_utils.encode(binary) if n else []
        out = []
        for k in range(n):
            x0, y0, x1, y1 = boxes[k].tolist()
            res = {"image_id": image_id, "category_id": int(self.label_to_cat_id[int(labels[k])]),
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[k])}
            if rles is not None:
                res["segmentation"] = {"size": [int(s) for s in rles[k]["size"]],
                                       "counts": rles[k]["counts"].decode("ascii")}
            out.append(res)
        self.results.extend(out)
        self.image_ids.append(image_id)
        return out

    def gather(self):
        """Merges results and image ids of all torch.distributed ranks (every rank gets all of them)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (self.results, self.image_ids))
        seen, results, ids = set(), [], []
        for part_results, part_ids in parts:
            fresh = set(part_ids) - seen  # an image evaluated on two ranks counts once
            results += [r for r in part_results if r["image_id"] in fresh]
            ids += [i for i in part_ids if i in fresh]
            seen |= fresh
        self.results, self.image_ids = results, ids

    def summarize(self):
        """{"bbox_AP", "bbox_AP50", ..., "segm_APl"} x100 over the images seen; 0.0 with no detection,
        nan for an area range without ground truth."""
        from pycocotools.cocoeval import COCOeval
        metrics, text = {}, io.StringIO()
        for iou_type in self.iou_types:
            if not self.results:
                metrics.update({f"{iou_type}_{s}": 0.0 for s in STAT_NAMES})
                print(f"{iou_type}: no detections", file=text)
                continue
            with contextlib.redirect_stdout(text):
                coco_dt = self.coco_gt.loadRes(copy.deepcopy(self.results))
                ev = COCOeval(self.coco_gt, coco_dt, iou_type)
                ev.params.imgIds = sorted(set(self.image_ids))
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            for name, value in zip(STAT_NAMES, ev.stats[:6]):
                metrics[f"{iou_type}_{name}"] = float(value) * 100 if value >= 0 else math.nan
        self.report = text.getvalue()
        return metrics


class SegmentationMetric:
    """Dataset-level mIoU / mAcc / aAcc (§7.2). update() takes predicted and true label maps (H,W);
    label pixels equal to ignore_index are skipped."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.reset()

    def reset(self):
        zeros = lambda: torch.zeros(self.num_classes, dtype=torch.int64)
        self.intersect, self.union, self.pred_area, self.label_area = zeros(), zeros(), zeros(), zeros()

    def update(self, pred, label):
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        if pred.shape != label.shape or pred.dim() != 2:
            raise ValueError(f"pred and label must both be (H, W), got {tuple(pred.shape)} and {tuple(label.shape)}")
        if pred.dtype.is_floating_point or label.dtype.is_floating_point:
            raise ValueError(f"pred and label must be integer class maps, got {pred.dtype} and {label.dtype}")
        keep = label != self.ignore_index
        pred, label = pred[keep].long(), label[keep].long()
        for name, x in (("pred", pred), ("label", label)):
            if x.numel() and (x.min() < 0 or x.max() >= self.num_classes):
                raise ValueError(f"{name} values must be in [0, {self.num_classes}) or {self.ignore_index}, "
                                 f"got [{x.min().item()}, {x.max().item()}]")
        count = lambda x: torch.bincount(x, minlength=self.num_classes).cpu()
        inter, area_p, area_l = count(pred[pred == label]), count(pred), count(label)
        self.intersect += inter
        self.pred_area += area_p
        self.label_area += area_l
        self.union += area_p + area_l - inter

    def all_reduce(self, device):
        """Sums the accumulators over torch.distributed ranks (device: where the collective runs)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        stacked = torch.stack([self.intersect, self.union, self.pred_area, self.label_area]).to(device)
        torch.distributed.all_reduce(stacked)
        self.intersect, self.union, self.pred_area, self.label_area = stacked.cpu().unbind(0)

    def compute(self):
        """{"mIoU", "mAcc", "aAcc"} x100 and per-class "IoU", "Acc" lists (nan for a class whose union,
        resp. label area, is empty; a class predicted but absent from the labels has IoU 0)."""
        inter, union, label_area = (t.double() for t in (self.intersect, self.union, self.label_area))
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))
        acc = torch.where(label_area > 0, inter / label_area.clamp_min(1), torch.full_like(inter, math.nan))
        total = label_area.sum().item()
        return {"mIoU": _nanmean(iou) * 100, "mAcc": _nanmean(acc) * 100,
                "aAcc": inter.sum().item() / total * 100 if total else math.nan,
                "IoU": (iou * 100).tolist(), "Acc": (acc * 100).tolist()}


def _nanmean(x):
    valid = x[~torch.isnan(x)]
    return valid.mean().item() if len(valid) else math.nan
