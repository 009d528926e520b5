"""Dense-prediction datasets and transforms on planted COCO / ADE20K trees and the MNIST canvases."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from py.training import canvases, dense_data as dd
from py.training.data import DataError

torch.set_num_threads(1)


def _rle(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


RLE_MASK = np.zeros((48, 64), np.uint8)
RLE_MASK[30:40, 40:60] = 1


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """Category ids 3 and 7 (gap: labels 1, 2). Image 1 is usable, 2 too small, 3 and 4 without usable
    annotations, 5 a corrupt file, 6 a file of another size than annotated."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "train2017").mkdir()
    sizes = {1: (48, 64), 2: (20, 40), 3: (40, 40), 4: (40, 40), 5: (40, 40), 6: (40, 40)}
    rng = np.random.default_rng(0)
    for i, (h, w) in sizes.items():
        if i == 5:
            (root / "train2017" / f"{i}.jpg").write_bytes(b"not an image at all")
        else:
            h, w = (h, w + 1) if i == 6 else (h, w)  # 6: the file disagrees with its annotated size
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "train2017" / f"{i}.jpg")
    anns = [
        dict(image_id=1, category_id=7, bbox=[10, 5, 20, 20], area=400, iscrowd=0,
             segmentation=[[10, 5, 30, 5, 30, 25, 10, 25]]),
        dict(image_id=1, category_id=3, bbox=[40, 30, 20, 10], area=200, iscrowd=0, segmentation=_rle(RLE_MASK)),
        dict(image_id=1, category_id=3, bbox=[0, 0, 5, 5], area=25, iscrowd=1, segmentation=_rle(RLE_MASK)),
        dict(image_id=1, category_id=3, bbox=[3, 3, 0.5, 8], area=4, iscrowd=0, segmentation=[[3, 3, 3.5, 3, 3.5, 11]]),
        dict(image_id=1, category_id=7, bbox=[60, 40, 10, 10], area=100, iscrowd=0,  # clipped to the image
             segmentation=[[60, 40, 70, 40, 70, 50, 60, 50]]),
        dict(image_id=1, category_id=7, bbox=[70, 0, 5, 5], area=25, iscrowd=0,  # outside: dropped
             segmentation=[[70, 0, 75, 0, 75, 5]]),
        dict(image_id=2, category_id=3, bbox=[1, 1, 10, 10], area=100, iscrowd=0, segmentation=[[1, 1, 11, 1, 11, 11]]),
        dict(image_id=4, category_id=7, bbox=[1, 1, 10, 10], area=100, iscrowd=1, segmentation=_rle(np.ones((40, 40)))),
        dict(image_id=5, category_id=7, bbox=[1, 1, 10, 10], area=100, iscrowd=0, segmentation=[[1, 1, 11, 1, 11, 11]]),
        dict(image_id=6, category_id=7, bbox=[1, 1, 10, 10], area=100, iscrowd=0, segmentation=[[1, 1, 11, 1, 11, 11]]),
    ]
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w} for i, (h, w) in sizes.items()],
            "annotations": [dict(a, id=k + 1) for k, a in enumerate(anns)],
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def canvas_root(tmp_path_factory):
    return canvases.ensure_canvases(tmp_path_factory.mktemp("canvas"), canvas_size=96, train_canvases=8,
                                    val_canvases=4)


def test_coco_filter_labels_and_targets(coco_root):
    ds = dd.CocoDetection(coco_root, "train")
    assert ds.ids == [1, 5, 6]  # 2: side < 32, 3: no annotation, 4: only a crowd
    assert ds.image_sizes == [(48, 64), (40, 40), (40, 40)]
    assert ds.class_names == ["__background__", "three", "seven"]
    assert ds.label_to_cat_id == {1: 3, 2: 7}
    assert len(dd.CocoDetection(coco_root, "train", train_filter=False)) == 6
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert t["image_id"] == 1 and t["orig_size"] == (48, 64)
    assert t["labels"].tolist() == [2, 1, 2]  # crowd, 0.5 px wide and outside boxes are not targets
    assert t["boxes"].tolist() == [[10, 5, 30, 25], [40, 30, 60, 40], [60, 40, 64, 48]]
    assert t["masks"].shape == (3, 48, 64) and t["masks"].dtype == torch.uint8
    assert np.array_equal(t["masks"][1].numpy(), RLE_MASK)  # RLE
    poly = t["masks"][0].numpy()  # polygon, rasterised
    assert poly[6:24, 11:29].all() and poly.sum() == poly[4:27, 9:32].sum() and 380 <= poly.sum() <= 441


def test_unreadable_image_is_none_and_collate_counts_it(coco_root):
    ds = dd.CocoDetection(coco_root, "train")
    assert ds[1] is None and ds[2] is None and ds.skipped == 2
    seg = dd.SemanticSegmentation(coco_root, "train", None)
    assert seg[4] is None and seg[5] is None and seg[0][1].shape == (48, 64)
    images, targets, skipped = dd.dense_collate([ds[0], ds[1], ds[0]])
    assert len(images) == len(targets) == 2 and skipped == 1 and targets[0]["image_id"] == 1


def test_missing_layout_is_a_data_error(tmp_path, coco_root):
    with pytest.raises(DataError, match="instances_val2017.json"):
        dd.CocoDetection(coco_root, "val")
    with pytest.raises(DataError, match="images/validation"):
        dd.SemanticSegmentation(tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        dd.CocoDetection(coco_root, "test")


def _mask_box(mask):
    ys, xs = np.nonzero(mask.numpy())
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_horizontal_flip_moves_boxes_with_masks(canvas_root):
    ds = dd.CocoDetection(canvas_root, "train")
    image, t = ds[0]
    flipped, ft = dd.HorizontalFlip(p=1.0)(image, t)
    assert torch.equal(flipped, image.flip(-1))
    for box, mask in zip(ft["boxes"].tolist(), ft["masks"]):
        assert box == _mask_box(mask)  # canvas boxes are tight boxes of the masks
    same, st = dd.HorizontalFlip(p=0.0)(image, t)
    assert same is image and torch.equal(st["boxes"], t["boxes"])


def test_multi_scale_crop_sizes_and_boxes(canvas_root):
    ds = dd.CocoDetection(canvas_root, "train")
    image, t = ds[1]
    tf = dd.MultiScaleCrop(scales=(64, 80), max_size=200, crop_scales=(96,), crop_range=(40, 60))
    shapes, counts = set(), set()
    for seed in range(30):
        torch.manual_seed(seed)
        out, ot = tf(image, t)
        h, w = out.shape[-2:]
        assert min(h, w) in (64, 80) and max(h, w) <= 200
        assert ot["masks"].shape == (len(ot["boxes"]), h, w) and len(ot["labels"]) == len(ot["boxes"])
        b = ot["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all() and (b >= 0).all()
        shapes.add((h, w))
        counts.add(len(b))
    assert len(shapes) > 2  # crops of different aspect ratios
    assert len(t["boxes"]) in counts and min(counts) < len(t["boxes"])  # crops dropped boxes sometimes
    with pytest.raises(ValueError, match="crop_range"):
        dd.MultiScaleCrop(crop_range=(600, 384))


def test_keep_ratio_size():
    assert dd.keep_ratio_size(480, 640, 800, 1333) == (800, 1067)
    assert dd.keep_ratio_size(500, 2000, 800, 1333) == (333, 1333)  # long side limits


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    for sub in ("training", "validation"):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
    label = np.zeros((30, 40), np.uint8)
    label[:, 10:20], label[:, 20:30], label[:, 30:] = 1, 150, 7
    Image.fromarray(np.full((30, 40, 3), 100, np.uint8)).save(root / "images" / "validation" / "ADE_val_1.jpg")
    Image.fromarray(label).save(root / "annotations" / "validation" / "ADE_val_1.png")
    return root


def test_ade20k_reduce_zero_label(ade_root):
    ds = dd.SemanticSegmentation(ade_root, "val", None)
    assert ds.num_classes == 150 and ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    image, label, meta = ds[0]
    assert image.shape == (3, 30, 40) and label.dtype == torch.int64 and meta["orig_size"] == (30, 40)
    assert abs(image[0, 0, 0].item() - (100 / 255 - 0.485) / 0.229) < 0.05  # normalised (JPEG rounding)
    assert label[0, ::10].tolist() == [255, 0, 149, 6]
    raw = dd.SemanticSegmentation(ade_root, "val", None, reduce_zero_label=False)
    assert raw.num_classes == 151 and raw[0][1][0, ::10].tolist() == [0, 1, 150, 7]
    (ade_root / "images" / "training" / "ADE_train_1.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no label PNG"):
        dd.SemanticSegmentation(ade_root, "train", None)


def test_coco_layout_label_map_from_instances(canvas_root):
    seg = dd.SemanticSegmentation(canvas_root, "val", None)
    det = dd.CocoDetection(canvas_root, "val")
    assert seg.num_classes == 11 and seg.class_names[0] == "background" and seg.class_names[1:] == det.class_names[1:]
    _, label, _ = seg[2]
    _, t = det[2]
    expected = torch.zeros_like(label)
    for lab, m in zip(t["labels"], t["masks"]):
        expected[m.bool()] = lab
    assert torch.equal(label, expected) and len(label.unique()) > 2


def test_seg_train_transform_crop_pad_and_labels():
    torch.manual_seed(0)
    image = torch.rand(3, 60, 80) * 255
    label = torch.zeros(60, 80, dtype=torch.int64)
    label[:, 40:] = 3
    label[:5] = 255
    tf = dd.SegTrainTransform(scale=(80, 60), ratio_range=(0.5, 1.0), crop_size=(48, 48))
    for _ in range(10):
        x, y = tf(image, label)
        assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 3, 255}
    small = dd.SegTrainTransform(scale=(40, 30), ratio_range=(1.0, 1.0), crop_size=(48, 48), photometric=False,
                                 flip_p=0.0)
    x, y = small(image, label)
    assert (y[30:] == 255).all() and (x[:, 30:] == 0).all() and (y[:30, :40] != 255).any()
    with pytest.raises(ValueError, match="label"):
        tf(image, label[:10])


def test_cat_max_ratio_prefers_crops_with_two_classes():
    label = torch.zeros(100, 100, dtype=torch.int64)
    label[:, 90:] = 1  # only crops touching the right edge see class 1
    image = torch.full((3, 100, 100), 128.0)
    picky = dd.SegTrainTransform(scale=(100, 100), ratio_range=(1.0, 1.0), crop_size=(30, 30), flip_p=0.0,
                                 photometric=False)
    blind = dd.SegTrainTransform(scale=(100, 100), ratio_range=(1.0, 1.0), crop_size=(30, 30), flip_p=0.0,
                                 photometric=False, cat_max_ratio=1.0)
    torch.manual_seed(0)
    with_two = lambda tf: sum(len(tf(image, label)[1].unique()) == 2 for _ in range(100))
    assert with_two(picky) > 2 * with_two(blind)


def test_hsv_round_trip_and_photometric_range():
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16) * 255
    image[:, 0, 0] = torch.tensor([10.0, 10.0, 10.0])  # grey: no hue
    assert torch.allclose(dd._hsv_to_rgb(dd._rgb_to_hsv(image)), image, atol=1e-3)
    hsv = dd._rgb_to_hsv(torch.tensor([255.0, 0.0, 0.0]).view(3, 1, 1))
    assert hsv.flatten().tolist() == [0.0, 1.0, 1.0]
    changed = 0
    for _ in range(20):
        out = dd.photometric_distortion(image)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 255
        changed += not torch.allclose(out, image)
    assert changed >= 15


def test_seg_eval_transform_resizes_image_only():
    image, label = torch.rand(3, 100, 300) * 255, torch.zeros(100, 300, dtype=torch.int64)
    x, y = dd.SegEvalTransform(scale=(400, 50))(image, label)
    assert x.shape == (3, 50, 150) and y is label
    x, _ = dd.SegEvalTransform(scale=(200, 100))(image, label)
    assert x.shape == (3, 67, 200)  # the long side limits


@pytest.mark.parametrize("size", [(70, 70), (97, 97), (50, 50)])
def test_resized_labels_and_masks_stay_on_the_image(size):
    """A thin stroke and its label resized by a non-integer factor: the label (and an instance mask) must
    cover the resized image's bright pixels, not sit half a source pixel off them (torch's plain "nearest")."""
    image = torch.zeros(3, 64, 64)
    label = torch.zeros(64, 64, dtype=torch.int64)
    for r in range(8, 56, 6):  # 2-pixel strokes, both orientations
        image[:, r:r + 2, 4:60] = 255
        image[:, 4:60, r + 3:r + 5] = 255
    label[image[0] > 0] = 1
    x, y = dd._resize_seg(image, label, size)
    _, target = dd._resize_det(image, dict(boxes=torch.zeros(0, 4), masks=label[None].to(torch.uint8)), size)
    bright = x[0] > 127.5  # bilinear: over half stroke
    for name, fg in (("seg label", y == 1), ("instance mask", target["masks"][0] == 1)):
        iou = (fg & bright).sum() / (fg | bright).sum()
        assert iou > 0.85, f"{name}: IoU {iou:.2f} with the image's stroke pixels at size {size}"
