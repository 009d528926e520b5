"""COCO AP and mIoU against planted ground truth with hand-computed values; the drawing helpers."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from py.eval import dense_metrics as dm
from py.eval import draw_dense

H, W = 100, 120
# (image_id, category_id, xyxy): 40x40 objects are "medium" (32² < 1600 < 96²). Category ids 3 and 8
# (labels 1 and 2) test the label -> category mapping.
OBJECTS = [(1, 3, (10, 10, 50, 50)), (1, 8, (60, 40, 100, 80)), (2, 3, (20, 30, 60, 70))]
LABEL_TO_CAT = {1: 3, 2: 8}


def _box_mask(box, dx=0):
    m = np.zeros((H, W), np.uint8)
    m[box[1]:box[3], box[0] + dx:box[2] + dx] = 1
    return m


def _make_coco_gt():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    anns = []
    for k, (img, cat, box) in enumerate(OBJECTS):
        rle = mask_utils.encode(np.asfortranarray(_box_mask(box)))
        anns.append({"id": k + 1, "image_id": img, "category_id": cat, "iscrowd": 0, "area": 1600,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.png"} for i in (1, 2)],
                    "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture(scope="module")
def coco_gt():
    return _make_coco_gt()


def _evaluate(coco_gt, dx=0, drop=(), probs=False, images=(1, 2)):
    ev = dm.CocoEvaluator(coco_gt, LABEL_TO_CAT)
    for img in images:
        objs = [(k, o) for k, o in enumerate(OBJECTS) if o[0] == img and k not in drop]
        boxes = torch.tensor([[o[2][0] + dx, o[2][1], o[2][2] + dx, o[2][3]] for _, o in objs],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([{3: 1, 8: 2}[o[1]] for _, o in objs], dtype=torch.int64)
        masks = torch.from_numpy(np.stack([_box_mask(o[2], dx) for _, o in objs]) if objs
                                 else np.zeros((0, H, W), np.uint8))
        if probs:  # (N,1,H,W) probabilities: 0.7 inside, 0.3 outside
            masks = (masks.float() * 0.4 + 0.3)[:, None]
        ev.update(img, boxes, torch.linspace(0.9, 0.8, len(objs)), labels, masks)
    return ev, ev.summarize()


def test_perfect_predictions_score_100(coco_gt, capsys):
    ev, m = _evaluate(coco_gt, probs=True)
    for t in ("bbox", "segm"):
        assert m[f"{t}_AP"] == pytest.approx(100) and m[f"{t}_AP50"] == pytest.approx(100)
        assert m[f"{t}_APm"] == pytest.approx(100)
        assert math.isnan(m[f"{t}_APs"]) and math.isnan(m[f"{t}_APl"])  # no small or large ground truth
    assert capsys.readouterr().out == ""  # pycocotools' prints go to the report
    assert "Average Precision" in ev.report and "segm" in ev.report.lower()
    first = ev.results[0]
    assert first["category_id"] == 3 and first["bbox"] == [10, 10, 40, 40]
    assert isinstance(first["segmentation"]["counts"], str) and first["segmentation"]["size"] == [H, W]


def test_shifted_predictions_match_only_low_thresholds(coco_gt):
    # Shift by 9 px: IoU = 31/49 = 0.633, a match at IoU 0.50, 0.55, 0.60 only -> AP = 3/10.
    _, m = _evaluate(coco_gt, dx=9)
    for t in ("bbox", "segm"):
        assert m[f"{t}_AP"] == pytest.approx(30.0)
        assert m[f"{t}_AP50"] == pytest.approx(100.0) and m[f"{t}_AP75"] == pytest.approx(0.0)


def test_missed_object_lowers_recall(coco_gt):
    # Category 3 finds 1 of its 2 objects: precision 1 up to recall 0.5 = 51 of COCO's 101 recall
    # points; category 8 is perfect. AP = (51/101 + 1) / 2.
    _, m = _evaluate(coco_gt, drop=(2,))
    expected = (51 / 101 + 1) / 2 * 100
    assert m["bbox_AP"] == pytest.approx(expected) and m["segm_AP"] == pytest.approx(expected)


def test_only_images_seen_are_evaluated(coco_gt):
    _, m = _evaluate(coco_gt, images=(1,))
    assert m["bbox_AP"] == pytest.approx(100)  # image 2's object is not a miss: it was not evaluated


def test_no_detections_is_zero_not_a_crash(coco_gt):
    ev = dm.CocoEvaluator(coco_gt, LABEL_TO_CAT)
    assert all(v == 0.0 for v in ev.summarize().values()) and len(ev.summarize()) == 12
    ev.update(1, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, H, W))
    m = ev.summarize()
    assert m["bbox_AP"] == 0.0 and m["segm_AP75"] == 0.0
    ev.gather()  # not distributed: a no-op
    assert ev.image_ids == [1]


def test_update_rejects_bad_inputs(coco_gt):
    ev = dm.CocoEvaluator(coco_gt, LABEL_TO_CAT)
    box, score, label = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([1])
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\) = \(1, 100, 120\)"):
        ev.update(1, box, score, label, torch.zeros(1, 50, 60))
    with pytest.raises(ValueError, match="masks are required"):
        ev.update(1, box, score, label)
    with pytest.raises(ValueError, match="image_id 7"):
        ev.update(7, box, score, label, torch.zeros(1, H, W))
    with pytest.raises(ValueError, match="boxes"):
        ev.update(1, box[:, :3], score, label, torch.zeros(1, H, W))
    with pytest.raises(ValueError, match="iou_types"):
        dm.CocoEvaluator(coco_gt, LABEL_TO_CAT, iou_types=("keypoints",))
    bbox_only = dm.CocoEvaluator(coco_gt, LABEL_TO_CAT, iou_types=("bbox",))
    bbox_only.update(1, box, score, label)
    assert set(bbox_only.summarize()) == {f"bbox_{s}" for s in dm.STAT_NAMES}


def _distributed_rank(rank, store, out_dir):
    """One of two gloo ranks: rank 0 sees image 1, rank 1 images 2 and (again) 1."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        coco_gt = _make_coco_gt()
        ev = dm.CocoEvaluator(coco_gt, LABEL_TO_CAT, iou_types=("bbox",))
        for img in ((1,), (2, 1))[rank]:
            objs = [o for o in OBJECTS if o[0] == img]
            ev.update(img, torch.tensor([o[2] for o in objs], dtype=torch.float32), torch.ones(len(objs)),
                      torch.tensor([{3: 1, 8: 2}[o[1]] for o in objs]))
        ev.gather()
        metric = dm.SegmentationMetric(3)
        metric.update(torch.tensor([[rank, 2]]), torch.tensor([[0, 2]]))
        metric.all_reduce("cpu")
        result = {"images": sorted(ev.image_ids), "n": len(ev.results), "AP": ev.summarize()["bbox_AP"],
                  "intersect": metric.intersect.tolist(), "union": metric.union.tolist()}
        (out_dir / f"{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_gather_and_all_reduce_across_two_ranks(tmp_path):
    torch.multiprocessing.start_processes(_distributed_rank, args=(tmp_path / "store", tmp_path), nprocs=2,
                                         start_method="fork")  # fork: no second import of torch
    for rank in (0, 1):
        r = json.loads((tmp_path / f"{rank}.json").read_text())
        assert r["images"] == [1, 2] and r["n"] == 3  # image 1's duplicate from rank 1 is dropped
        assert r["AP"] == pytest.approx(100)
        # label [0, 2] on both ranks; pred [0, 2] on rank 0 and [1, 2] on rank 1.
        assert r["intersect"] == [1, 0, 2] and r["union"] == [2, 1, 2]


def test_segmentation_metric_matches_hand_computation():
    # Valid (label, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the 255 pixel is skipped; class 3 absent.
    # I = [1,2,0,0], pred area = [2,3,0,0], label area = [2,2,1,0], union = [3,3,1,0].
    label = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 3, 0]])
    metric = dm.SegmentationMetric(4)
    metric.update(pred, label)
    r = metric.compute()
    assert r["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 0.0]) and math.isnan(r["IoU"][3])
    assert r["Acc"][:3] == pytest.approx([50.0, 100.0, 0.0]) and math.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx(100 / 3) and r["mAcc"] == pytest.approx(50.0) and r["aAcc"] == pytest.approx(60.0)
    metric.update(pred, label)  # accumulating the same image again changes no ratio
    assert metric.compute()["mIoU"] == pytest.approx(100 / 3)
    assert metric.intersect.tolist() == [2, 4, 0, 0] and metric.union.tolist() == [6, 6, 2, 0]
    metric.all_reduce("cpu")  # not distributed: a no-op
    assert metric.label_area.tolist() == [4, 4, 2, 0]


def test_predicted_but_absent_class_counts_as_zero_iou():
    metric = dm.SegmentationMetric(3)
    metric.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    r = metric.compute()
    assert r["IoU"][0] == pytest.approx(50.0) and math.isnan(r["IoU"][1]) and r["IoU"][2] == 0.0
    assert r["mIoU"] == pytest.approx(25.0) and r["mAcc"] == pytest.approx(50.0)


def test_segmentation_metric_rejects_bad_inputs():
    metric = dm.SegmentationMetric(3)
    with pytest.raises(ValueError, match=r"pred values must be in \[0, 3\)"):
        metric.update(torch.tensor([[5]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="both be"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


def test_draw_detections_colours_masks_and_boxes():
    image = np.zeros((80, 100, 3), np.uint8)
    masks = np.zeros((2, 80, 100), np.float32)
    masks[0, 5:45, 5:45] = 0.9
    masks[1, 50:70, 50:90] = 0.9
    boxes, labels, scores, names = [[5, 5, 45, 45], [50, 50, 90, 70]], [1, 2], [0.9, 0.3], ["bg", "one", "two"]
    picture = np.asarray(draw_dense.draw_detections(image, boxes, labels, scores, masks, names))
    assert picture.shape == (80, 100, 3)
    colour = draw_dense.palette(3)[1]
    assert np.allclose(picture[35, 30], colour * 0.45, atol=1)  # kept detection: translucent mask
    assert (picture[45, 30] == colour).all() and (picture[30, 45] == colour).all()  # its box outline
    assert (picture[60, 70] == 0).all() and (picture[50, 70] == 0).all()  # below the score threshold: not drawn
    again = np.asarray(draw_dense.draw_detections(torch.zeros(3, 80, 100), boxes, labels, scores, masks, names))
    assert np.array_equal(picture, again)  # float (3,H,W) input, deterministic palette


def test_draw_segmentation_legend_and_side_by_side():
    label = np.full((20, 30), 255)
    label[:, :10] = 0
    label[:, 20:] = 2
    plain = draw_dense.draw_segmentation(np.full((20, 30, 3), 100, np.uint8), label, 3, alpha=1.0)
    px = np.asarray(plain)
    colours = draw_dense.palette(3)
    assert (px[5, 5] == colours[0]).all() and (px[5, 25] == colours[2]).all() and (px[5, 15] == 100).all()
    legend = draw_dense.draw_segmentation(np.full((20, 30, 3), 100, np.uint8), label, 3, ["a", "b", "c"])
    assert legend.width > 30 and legend.height >= 20
    row = draw_dense.side_by_side([plain, legend], ["x", "y"])
    assert row.width == plain.width + legend.width + 4 and row.height == 16 + legend.height
    # a title wider than its image wraps onto more lines instead of running into the next picture
    wide = draw_dense.side_by_side([legend, legend], ["prediction (multi-scale + flip): pixel accuracy 97.3%", "y"])
    assert wide.height >= 16 + 14 + legend.height
    header = np.asarray(wide)[: wide.height - legend.height]
    assert (header[:, legend.width - 1:legend.width + 5] == 255).all()  # the gap (and the picture's edge) stay white
    with pytest.raises(ValueError, match="label_map"):
        draw_dense.draw_segmentation(np.zeros((20, 30, 3), np.uint8), label[:5], 3)
