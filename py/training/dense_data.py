"""Datasets and transforms for dense prediction (spec dense.md §1.5, §2.5, §7).

- CocoDetection: COCO-layout instances (COCO 2017 or the MNIST canvases of py.training.canvases) as
  (image float32 (3,H,W) in [0,1], target dict) for torchvision's Mask R-CNN, which normalises and
  resizes itself; the 3x schedule's multi-scale crop happens here (MultiScaleCrop).
- SemanticSegmentation: ADE20K (images/ + annotations/ PNGs) or a COCO-layout instance set
  rasterised to a label map (background 0 is a class), as (normalised image, int64 label, meta).
`class_names[label]` names a label in every dataset (detection index 0 is "__background__").
Unreadable images give None (logged) so `dense_collate` can drop and count them, as in data.py.
Random choices use torch's global RNG, which DataLoader seeds differently in every worker.
"""
import contextlib
import io
import logging
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from py.training.data import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
IGNORE = 255
# ADE20K SceneParsing's 150 classes, in label order (first name of each row of objectInfo150).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")
_ADE_SPLITS = {"train": "training", "val": "validation"}


def _check_split(split):
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _read_rgb(path):
    """uint8 (H, W, 3) RGB, or (None, reason) when the file cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), None
    except Exception as exc:  # PIL raises many types for corrupt files
        return None, f"{path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _load_coco(ann_file, root, split):
    from pycocotools.coco import COCO
    img_dir = root / f"{split}2017"
    if not ann_file.is_file() or not img_dir.is_dir():
        raise DataError(f"COCO dataset at {root} is incomplete: need {ann_file} and {img_dir}/ (layout "
                        f"<root>/annotations/instances_{{train,val}}2017.json + <root>/{{train,val}}2017/*.jpg)")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(ann_file))
    if not coco.getImgIds():
        raise DataError(f"{ann_file} lists no images")
    return coco, img_dir


def _usable(ann):
    """A training target (§1.5): not a crowd, positive area, box at least 1 px wide and high."""
    x, y, w, h = ann["bbox"]
    return not ann.get("iscrowd", 0) and ann.get("area", w * h) > 0 and w >= 1 and h >= 1


class CocoDetection(Dataset):
    """COCO instances: item i = (image float32 (3,H,W) in [0,1], target) or None if unreadable.

    target = {"boxes" float32 (N,4) xyxy px, "labels" int64 (N,) in 1..K, "masks" uint8 (N,H,W),
    "image_id" int, "orig_size" (H, W)}. Labels follow the sorted category ids. Crowd and degenerate
    annotations are never targets; train_filter (default: on for "train") also drops images with a
    side < 32 px or no usable annotation.
    """

    def __init__(self, root, split, transform=None, train_filter=None):
        _check_split(split)
        self.root = pathlib.Path(root)
        self.coco, self.img_dir = _load_coco(self.root / "annotations" / f"instances_{split}2017.json",
                                             self.root, split)
        cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id = {k + 1: c for k, c in enumerate(cat_ids)}
        self.cat_id_to_label = {c: k for k, c in self.label_to_cat_id.items()}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in cat_ids]
        self.transform = transform
        ids = sorted(self.coco.getImgIds())
        if train_filter is None:
            train_filter = split == "train"
        if train_filter:
            ids = [i for i in ids if min(self.coco.imgs[i]["height"], self.coco.imgs[i]["width"]) >= 32
                   and any(_usable(a) for a in self.coco.imgToAnns[i])]
            if not ids:
                raise DataError(f"no image of {self.img_dir} is usable for training (side >= 32 px and at "
                                f"least one non-crowd annotation with a positive box)")
        self.ids = ids
        # (h, w) per item, from the annotations: lets a sampler group images of equal orientation (§1.5).
        self.image_sizes = [(self.coco.imgs[i]["height"], self.coco.imgs[i]["width"]) for i in ids]
        self.skipped = 0

    def __len__(self):
        return len(self.ids)

    def target(self, image_id, height, width):
        """The target dict of one image, its masks at (height, width)."""
        anns = [a for a in self.coco.imgToAnns[image_id] if _usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        inside = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()  # torchvision rejects others
        anns, boxes = [a for a, keep in zip(anns, inside) if keep], boxes[inside]
        masks = np.zeros((len(anns), height, width), np.uint8)
        for k, a in enumerate(anns):
            if a.get("segmentation"):  # polygons or RLE; pycocotools sizes them from the image entry
                masks[k] = self.coco.annToMask(a)
        labels = torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks), "image_id": int(image_id),
                "orig_size": (height, width)}

    def __getitem__(self, i):
        info = self.coco.imgs[self.ids[i]]
        path = self.img_dir / info["file_name"]
        rgb, reason = _read_rgb(path)
        if rgb is None or rgb.shape[:2] != (info["height"], info["width"]):
            reason = reason or (f"{path}: the file is {rgb.shape[0]}x{rgb.shape[1]} (h x w), the annotations "
                                f"say {info['height']}x{info['width']}")
            self.skipped += 1
            log.warning("skipping unreadable image %s; %d skipped so far in this worker", reason, self.skipped)
            return None
        h, w = rgb.shape[:2]
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
        target = self.target(info["id"], h, w)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


# ---- detection transforms: callables (image (3,H,W) float, target) -> (image, target) ----------------

class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class HorizontalFlip:
    """Mirrors image, boxes and masks with probability p."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, target):
        if torch.rand(()).item() >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
        target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


def _resize_det(image, target, size):
    """Resizes image (bilinear), masks (nearest, pixel centres: see _resize_seg) and boxes to size (h, w)."""
    h, w = image.shape[-2:]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    target = dict(target)
    scale = torch.tensor([size[1] / w, size[0] / h] * 2, dtype=torch.float32)
    target["boxes"] = target["boxes"] * scale
    masks = target["masks"]
    target["masks"] = (F.interpolate(masks[None], size=size, mode="nearest-exact")[0] if len(masks)
                       else masks.new_zeros((0, *size)))
    return image, target


def keep_ratio_size(h, w, short, long):
    """(h', w') fitting short x long with the aspect ratio kept (mmcv rescale_size: round half up)."""
    factor = min(long / max(h, w), short / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class MultiScaleCrop:
    """The 3x ms-crop (§1.5) without its flip: with probability 1/2 resize to a short side drawn from
    `scales` (long side <= max_size); else resize to a short side from `crop_scales`, crop a random
    h x w with each side uniform in [min(side, crop_range[0]), min(side, crop_range[1])] (boxes
    clipped, emptied ones dropped, empty crops allowed), then resize as in the first branch."""

    def __init__(self, scales=DETR_SCALES, max_size=1333, crop_scales=(400, 500, 600), crop_range=(384, 600)):
        if not scales or not crop_scales or not 0 < crop_range[0] <= crop_range[1]:
            raise ValueError(f"scales and crop_scales must be non-empty and crop_range (lo, hi) with "
                             f"0 < lo <= hi; got {scales}, {crop_scales}, {crop_range}")
        self.scales, self.max_size = tuple(scales), max_size
        self.crop_scales, self.crop_range = tuple(crop_scales), tuple(crop_range)

    def _resize_random(self, image, target, scales):
        short = scales[torch.randint(len(scales), ()).item()]
        return _resize_det(image, target, keep_ratio_size(*image.shape[-2:], short, self.max_size))

    def _crop(self, image, target):
        h, w = image.shape[-2:]
        lo, hi = self.crop_range
        ch = torch.randint(min(h, lo), min(h, hi) + 1, ()).item()
        cw = torch.randint(min(w, lo), min(w, hi) + 1, ()).item()
        y0 = torch.randint(0, h - ch + 1, ()).item()
        x0 = torch.randint(0, w - cw + 1, ()).item()
        boxes = target["boxes"] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        boxes[:, 0::2].clamp_(0, cw)
        boxes[:, 1::2].clamp_(0, ch)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = dict(target, boxes=boxes[keep], labels=target["labels"][keep],
                      masks=target["masks"][keep][:, y0:y0 + ch, x0:x0 + cw])
        return image[:, y0:y0 + ch, x0:x0 + cw], target

    def __call__(self, image, target):
        if torch.rand(()).item() < 0.5:
            image, target = self._resize_random(image, target, self.crop_scales)
            image, target = self._crop(image, target)
        return self._resize_random(image, target, self.scales)


# ---- semantic segmentation ---------------------------------------------------------------------------

class SemanticSegmentation(Dataset):
    """ADE20K or a COCO-layout instance set as a semantic segmentation dataset.

    item i = (image float32 (3,h,w) normalised, label int64 (h,w) with 255 = ignore,
    {"orig_size": (H, W), "file": path}) or None if unreadable. ADE20K: 150 classes, label 0 is
    "unlabelled" and with reduce_zero_label becomes 255 (others shift down by one). COCO layout:
    category k (sorted order, 1..K) -> label k, background 0 is a class (K + 1 classes), crowd regions
    are ignored; later annotations are painted over earlier ones.
    """

    def __init__(self, root, split, transform=None, reduce_zero_label=True):
        _check_split(split)
        self.root, self.split = pathlib.Path(root), split
        self.transform = transform
        ann_file = self.root / "annotations" / f"instances_{split}2017.json"
        if ann_file.is_file() and not (self.root / "images").exists():
            self.coco, img_dir = _load_coco(ann_file, self.root, split)
            cat_ids = sorted(self.coco.getCatIds())
            self.cat_id_to_label = {c: k + 1 for k, c in enumerate(cat_ids)}
            self.class_names = ["background"] + [self.coco.cats[c]["name"] for c in cat_ids]
            self.reduce_zero_label = False
            self.items = [(img_dir / self.coco.imgs[i]["file_name"], i) for i in sorted(self.coco.getImgIds())]
        else:
            self.coco = None
            self.reduce_zero_label = reduce_zero_label
            self.class_names = list(ADE20K_CLASSES) if reduce_zero_label else ["unlabelled", *ADE20K_CLASSES]
            self.items = self._ade_items(_ADE_SPLITS[split])
        self.num_classes = len(self.class_names)
        self.skipped = 0

    def _ade_items(self, sub):
        img_dir, ann_dir = self.root / "images" / sub, self.root / "annotations" / sub
        layout = ("<root>/images/{training,validation}/*.jpg + <root>/annotations/{training,validation}/*.png "
                  "(ADE20K), or <root>/annotations/instances_{train,val}2017.json + <root>/{train,val}2017/ (COCO)")
        if not img_dir.is_dir() or not ann_dir.is_dir():
            raise DataError(f"segmentation dataset at {self.root} is incomplete: need {img_dir}/ and {ann_dir}/; "
                            f"expected layout {layout}")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        items = [(p, ann_dir / f"{p.stem}.png") for p in images]
        missing = [a.name for _, a in items if not a.is_file()]
        if missing:
            raise DataError(f"{len(missing)} images of {img_dir} have no label PNG in {ann_dir} "
                            f"(first: {missing[0]}); expected layout {layout}")
        if not items:
            raise DataError(f"{img_dir} holds no .jpg/.png images; expected layout {layout}")
        return items

    def __len__(self):
        return len(self.items)

    def _coco_label(self, image_id, h, w):
        label = np.zeros((h, w), np.int64)
        for ann in self.coco.imgToAnns[image_id]:
            if not ann.get("segmentation"):
                continue
            m = self.coco.annToMask(ann).astype(bool)
            label[m] = IGNORE if ann.get("iscrowd", 0) else self.cat_id_to_label[ann["category_id"]]
        return label

    def load(self, i):
        """(uint8 (H,W,3) RGB, int64 (H,W) label) before any transform, or (None, reason)."""
        path, source = self.items[i]
        rgb, reason = _read_rgb(path)
        if rgb is None:
            return None, reason
        if self.coco is not None:
            info = self.coco.imgs[source]
            if rgb.shape[:2] != (info["height"], info["width"]):
                return None, (f"{path}: the file is {rgb.shape[0]}x{rgb.shape[1]} (h x w), the annotations say "
                              f"{info['height']}x{info['width']}")
            return (rgb, self._coco_label(source, *rgb.shape[:2])), None
        try:
            with Image.open(source) as im:
                label = np.asarray(im).astype(np.int64)
        except Exception as exc:
            return None, f"{source}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if label.shape != rgb.shape[:2]:
            return None, f"{source}: label is {label.shape}, image {path.name} is {rgb.shape[:2]}"
        if self.reduce_zero_label:
            label = np.where(label == 0, IGNORE, label - 1)
            label[label == IGNORE - 1] = IGNORE
        return (rgb, label), None

    def __getitem__(self, i):
        pair, reason = self.load(i)
        if pair is None:
            self.skipped += 1
            log.warning("skipping unreadable sample %s; %d skipped so far in this worker", reason, self.skipped)
            return None
        rgb, label = pair
        meta = {"orig_size": tuple(label.shape), "file": str(self.items[i][0])}
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()  # 0..255
        label = torch.from_numpy(label)
        if self.transform is not None:
            image, label = self.transform(image, label)
        else:
            image = normalize(image)
        return image, label, meta


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(3,h,w) float on the 0..255 scale -> ImageNet-normalised."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return (image - m) / s


def _resize_seg(image, label, size):
    """Image bilinear, label nearest, both sampling at pixel centres (align_corners=False). torch's plain
    "nearest" (like cv2's INTER_NEAREST, which mmseg uses) samples at pixel corners instead, half a source
    pixel off the image: on 3-pixel digit strokes that moved the labels off a third of the stroke."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image, label


def _fit_size(h, w, scale, ratio=1.0):
    """Keep-ratio size whose long side <= max(scale) * ratio and short side <= min(scale) * ratio."""
    return keep_ratio_size(h, w, int(min(scale) * ratio), int(max(scale) * ratio))


def _rgb_to_hsv(img):
    """(3,h,w) RGB in [0,255] -> H in degrees [0,360), S and V in [0,1] (OpenCV's float formulas)."""
    r, g, b = img / 255.0
    v, _ = img.max(0)
    v = v / 255.0
    mn = torch.minimum(torch.minimum(r, g), b)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = delta.clamp_min(1e-12)
    h = torch.where(v == r, 60 * (g - b) / safe,
                    torch.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = torch.where(delta > 0, h, torch.zeros_like(h)) % 360
    return torch.stack([h, s, v])


def _hsv_to_rgb(hsv):
    h, s, v = hsv
    c = v * s
    hp = h / 60.0
    x = c * (1 - (hp % 2 - 1).abs())
    zero = torch.zeros_like(h)
    sector = hp.floor().long().clamp(0, 5)
    choices = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = torch.zeros(3, *h.shape, dtype=h.dtype)
    for k, (r, g, b) in enumerate(choices):
        sel = sector == k
        rgb[0][sel], rgb[1][sel], rgb[2][sel] = r[sel], g[sel], b[sel]
    return (rgb + (v - c)) * 255.0


def photometric_distortion(image, brightness=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18):
    """§2.5 on a (3,h,w) 0..255 float image; each step with p=0.5, contrast before or after the HSV steps.
    `hue` is on OpenCV's 0..180 scale (18 = 36 degrees)."""
    coin = lambda: torch.rand(()).item() < 0.5
    uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(()).item()
    if coin():
        image = (image + uniform(-brightness, brightness)).clamp(0, 255)
    contrast_first = coin()
    if contrast_first and coin():
        image = (image * uniform(*contrast)).clamp(0, 255)
    do_sat, do_hue = coin(), coin()
    if do_sat or do_hue:
        hsv = _rgb_to_hsv(image)
        if do_sat:
            hsv[1] = (hsv[1] * uniform(*saturation)).clamp(0, 1)
        if do_hue:
            hsv[0] = (hsv[0] + 2 * torch.randint(-hue, hue + 1, ()).item()) % 360
        image = _hsv_to_rgb(hsv).clamp(0, 255)
    if not contrast_first and coin():
        image = (image * uniform(*contrast)).clamp(0, 255)
    return image


class SegTrainTransform:
    """§2.5 training pipeline on (image (3,H,W) 0..255 float, label int64 (H,W)) -> normalised crop.

    Keep-ratio resize to fit scale * r, r ~ U(ratio_range) (image bilinear, label nearest); random
    crop_size crop, retried up to 10 times until no class covers >= cat_max_ratio of the non-ignored
    pixels and at least two classes are present (else the last try); flip; photometric distortion;
    normalise; pad image with 0 and label with 255 to crop_size (bottom/right).
    """

    def __init__(self, scale=(2048, 512), ratio_range=(0.5, 2.0), crop_size=(512, 512), cat_max_ratio=0.75,
                 flip_p=0.5, photometric=True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.scale, self.ratio_range, self.crop_size = tuple(scale), tuple(ratio_range), tuple(crop_size)
        self.cat_max_ratio, self.flip_p, self.photometric = cat_max_ratio, flip_p, photometric
        self.mean, self.std = mean, std

    def _crop_box(self, h, w):
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        y0 = torch.randint(0, h - ch + 1, ()).item()
        x0 = torch.randint(0, w - cw + 1, ()).item()
        return y0, y0 + ch, x0, x0 + cw

    def _acceptable(self, crop):
        _, counts = torch.unique(crop[crop != IGNORE], return_counts=True)
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image, label):
        if label.shape != image.shape[-2:]:
            raise ValueError(f"label must be (H, W) = {tuple(image.shape[-2:])} like the image, "
                             f"got {tuple(label.shape)}")
        r = self.ratio_range[0] + (self.ratio_range[1] - self.ratio_range[0]) * torch.rand(()).item()
        image, label = _resize_seg(image, label, _fit_size(*image.shape[-2:], self.scale, r))
        box = self._crop_box(*label.shape)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._acceptable(label[box[0]:box[1], box[2]:box[3]]):
                    break
                box = self._crop_box(*label.shape)
        y0, y1, x0, x1 = box
        image, label = image[:, y0:y1, x0:x1], label[y0:y1, x0:x1]
        if torch.rand(()).item() < self.flip_p:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        image = normalize(image, self.mean, self.std)
        ph, pw = self.crop_size[0] - image.shape[1], self.crop_size[1] - image.shape[2]
        if ph > 0 or pw > 0:
            image = F.pad(image, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
            label = F.pad(label, (0, max(pw, 0), 0, max(ph, 0)), value=IGNORE)
        return image.contiguous(), label.contiguous()


class SegEvalTransform:
    """§2.5 single-scale test: keep-ratio resize of the image to fit `scale`, normalise; the label stays
    at the original resolution (metrics are computed there)."""

    def __init__(self, scale=(2048, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.scale, self.mean, self.std = tuple(scale), mean, std

    def __call__(self, image, label):
        image, _ = _resize_seg(image, None, _fit_size(*image.shape[-2:], self.scale))
        return normalize(image, self.mean, self.std), label


def dense_collate(batch):
    """(images, targets, skipped) from the readable items of a batch, as lists (sizes differ).

    Detection items (image, target) give targets[i] = target; segmentation items (image, label, meta)
    give targets[i] = (label, meta). None items (unreadable files) are dropped and counted."""
    kept = [item for item in batch if item is not None]
    images = [item[0] for item in kept]
    targets = [item[1] if len(item) == 2 else tuple(item[1:]) for item in kept]
    return images, targets, len(batch) - len(kept)
