"""The MNIST canvases: deterministic bytes, consistent COCO annotations, held-out digits, safe reuse."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from py.training import canvases, data

SMALL = dict(canvas_size=96, train_canvases=12, val_canvases=6)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    return canvases.ensure_canvases(tmp_path_factory.mktemp("canvas_a"), **SMALL)


def test_same_bytes_in_two_directories(built, tmp_path):
    again = canvases.ensure_canvases(tmp_path, **SMALL)
    assert again.name == built.name
    assert (again / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()
    other = canvases.ensure_canvases(tmp_path, seed=1, **SMALL)
    assert other.name != built.name
    assert (other / "manifest.json").read_bytes() != (built / "manifest.json").read_bytes()


def test_layout_and_annotations_are_consistent(built):
    from pycocotools import mask as mask_utils
    files = json.loads((built / "manifest.json").read_text())["files"]
    assert sorted(files) == sorted(p.relative_to(built).as_posix() for p in built.rglob("*")
                                   if p.is_file() and p.name != "manifest.json")
    for split, count in (("train", 12), ("val", 6)):
        coco = json.loads((built / "annotations" / f"instances_{split}2017.json").read_text())
        assert [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
        assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
        assert len(coco["images"]) == count
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        by_image = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for img in coco["images"]:
            rgb = np.asarray(Image.open(built / f"{split}2017" / img["file_name"]))
            assert rgb.shape == (96, 96, 3) and (rgb == rgb[:, :, :1]).all()
            anns = by_image[img["id"]]
            assert 3 <= len(anns) <= 6
            union = np.zeros((96, 96), np.int64)
            for a in anns:
                assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0
                rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
                m = mask_utils.decode(rle)
                assert m.sum() == a["area"] >= canvases.MIN_VISIBLE
                assert mask_utils.toBbox(rle).tolist() == a["bbox"]  # tight box of the visible mask
                assert (rgb[:, :, 0][m > 0] >= canvases.MASK_THRESHOLD).all()  # masks lie on strokes
                union += m
            assert union.max() == 1  # later digits cut their pixels out of earlier masks


def test_val_canvases_use_only_held_out_digits(tmp_path, monkeypatch):
    pools = {}
    original = canvases._build_split

    def spy(out, split, digits, labels, *args):
        pools[split] = digits
        return original(out, split, digits, labels, *args)

    monkeypatch.setattr(canvases, "_build_split", spy)
    canvases.ensure_canvases(tmp_path, val_fraction=0.3, seed=2, **SMALL)
    images, labels = data.load_mnist5k()
    train_idx, val_idx = data.stratified_split(labels, 0.3, 2)
    assert np.array_equal(pools["val"], images[val_idx].numpy())
    assert np.array_equal(pools["train"], images[train_idx].numpy())


def test_reused_when_intact_rebuilt_aside_when_broken(built, monkeypatch):
    root = built.parent
    manifest_time = os.stat(built / "manifest.json").st_mtime_ns
    assert canvases.ensure_canvases(root, **SMALL) == built
    assert os.stat(built / "manifest.json").st_mtime_ns == manifest_time  # reused, not rewritten

    png = built / "val2017" / "000000000002.png"
    good = png.read_bytes()
    png.write_bytes(good[:-10])  # truncated image: size check
    assert "000000000002.png" in canvases.verify(built)
    assert canvases.ensure_canvases(root, **SMALL) == built
    aside = [p for p in root.iterdir() if p.name.startswith(built.name + ".broken-")]
    assert len(aside) == 1 and (aside[0] / "val2017" / "000000000002.png").stat().st_size == len(good) - 10
    assert canvases.verify(built) is None and png.read_bytes() == good

    ann = built / "annotations" / "instances_val2017.json"
    text = ann.read_text()
    ann.write_text(text.replace('"iscrowd":0', '"iscrowd":1', 1))  # same size, other content: sha256 check
    assert "sha256" in canvases.verify(built)
    assert canvases.ensure_canvases(root, **SMALL) == built
    assert ann.read_text() == text
    assert len([p for p in root.iterdir() if p.name.startswith(built.name + ".broken-")]) == 2


def test_rejects_canvases_too_small(tmp_path):
    with pytest.raises(ValueError, match="canvas_size"):
        canvases.ensure_canvases(tmp_path, canvas_size=40)
