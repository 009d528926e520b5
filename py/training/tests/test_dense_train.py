"""Detection and segmentation through the one trainer, as a user runs them: a few steps on a tiny COCO-layout
canvas set given as --data_path, checkpoints + resume, evaluate and predict on the run; the dense flags'
checks; the dense recipes' schedules and no-decay rule (dense.md §8.5, §8.6)."""
import json
import subprocess
import sys

import pytest
import torch

from py.training import canvases, config, dense, optim
from py.training.tests.support import ROOT, env, main_in_process

FAST = ["--threads=1", "--progress=false", "--batch_size=4", "--warmup_steps=2", "--lr=1e-3"]


@pytest.fixture(scope="module")
def tiny_canvases(tmp_path_factory):
    """16 train / 8 val canvases in COCO layout (the loader of real COCO data reads them)."""
    return canvases.ensure_canvases(root=tmp_path_factory.mktemp("data"), train_canvases=16, val_canvases=8)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tool(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("task,model,keys", [
    ("detection", "mask_rcnn_vmamba_mnist", ("bbox_AP", "bbox_AP50", "segm_AP")),
    ("segmentation", "upernet_vmamba_mnist", ("mIoU", "mAcc", "aAcc")),
])
def test_dense_task_trains_resumes_and_evaluates(tmp_path, capsys, tiny_canvases, task, model, keys):
    out = tmp_path / "run"
    args = [f"--task={task}", f"--model={model}", f"--data_path={tiny_canvases}", *FAST, f"--output={out}"]
    code, err = main_in_process([*args, "--epochs=2"], capsys)
    assert code == 0, err[-3000:]
    first = rows(out)
    assert [r["epoch"] for r in first] == [1, 2]
    for key in keys:
        assert all(isinstance(r[key], float) for r in first), key
    assert all("val_top1" not in r for r in first)
    assert first[0]["train_images"] == 16 and first[0]["val_images"] == 8
    assert f"{model} ({task})" in err and ("box AP" if task == "detection" else "mIoU") in err
    saved = json.loads((out / "config.json").read_text())
    assert saved["task"] == task and saved["dataset"] == "coco"

    # resume: the run continues from its checkpoint with its own settings
    code, err = main_in_process([f"--output={out}", "--epochs=3", "--allow_config_change", "--threads=1",
                                 "--progress=false"], capsys)
    assert code == 0, err[-3000:]
    after = rows(out)
    assert [r["epoch"] for r in after] == [1, 2, 3] and after[2]["step"] == 3 * 4
    assert after[2]["train_loss"] < after[0]["train_loss"]

    # evaluate on the run equals the trainer's own last validation
    res = tool("py.eval.evaluate", f"--checkpoint={out}", "--weights=model", f"--output={tmp_path / 'e.json'}",
               "--progress=false", "--threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["task"] == task and report["results"]["model"]["num_images"] == 8
    assert report["results"]["model"][keys[0]] == pytest.approx(after[-1][keys[0]], abs=1e-6)

    # predictions drawn next to the ground truth
    res = tool("py.eval.predict", f"--checkpoint={out}", "--indices=0,3", f"--output={tmp_path / 'pred'}",
               "--threads=1", "--score_threshold=0.05")
    assert res.returncode == 0, res.stderr[-3000:]
    from PIL import Image
    for index in (0, 3):
        picture = Image.open(tmp_path / "pred" / f"{index}.png")
        assert picture.width > 2 * 128 and picture.height >= 128
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())["records"]
    assert [r["index"] for r in records] == [0, 3]


def _resolve(args):
    config.FLAGS.unparse_flags()
    try:
        config.FLAGS(["train", *args])
        return config.resolve()
    finally:
        config.FLAGS.unparse_flags()


def test_task_defaults_and_checks(tmp_path, tiny_canvases):
    cfg = _resolve(["--task=segmentation", f"--output={tmp_path / 'o'}"])
    assert cfg["model"] == "upernet_vmamba_mnist" and cfg["dataset"] == "mnist_canvas"
    assert cfg["config"].endswith("configs/upernet_vmamba_mnist.yaml")
    cfg = _resolve(["--model=mask_rcnn_vmamba_mnist", f"--output={tmp_path / 'o'}"])
    assert cfg["task"] == "detection" and cfg["in_chans"] == 3 and cfg["img_size"] is None
    assert _resolve([f"--output={tmp_path / 'o'}"])["task"] == "classification"
    bad = [
        (["--task=detection", "--model=vim_mnist"], "is a classification model"),
        (["--model=upernet_vmamba_mnist", "--mixup=0.8"], "applies to classification only"),
        # the classification default given explicitly is refused too, not silently dropped
        (["--model=upernet_vmamba_mnist", "--label_smoothing=0.1"], "label_smoothing applies to classification"),
        (["--model=upernet_vmamba_mnist", "--multiscale"], "detection 3x"),
        (["--task=segmentation", "--batch_size=1"], "batch_size must be >= 2 for segmentation"),
        (["--model=mask_rcnn_vmamba_mnist", f"--data_path={tmp_path}"], "does not hold a detection dataset"),
        (["--schedule=step"], "needs --lr_steps"),
        (["--schedule=step", "--lr_steps=8,3"], "increasing epochs"),
        (["--lr_steps=2"], "is for --schedule=step"),
        (["--schedule=poly", "--poly_power=0"], "--poly_power"),
    ]
    for args, message in bad:
        with pytest.raises(config.ConfigError, match=message):
            _resolve([*args, f"--output={tmp_path / 'o'}"])
    cfg = _resolve(["--model=upernet_vmamba_mnist", f"--data_path={tiny_canvases}", f"--output={tmp_path / 'o'}"])
    assert cfg["dataset"] == "coco"


def test_segmentation_transforms_for_canvases_and_datasets(tmp_path):
    """mmseg's pipeline scales with the crop; the canvases keep their 128² size, never flip (a mirrored
    digit is not a digit) and rescale by 0.75-1.25 only."""
    canvas = dict(data_path=None, img_size=64, model="upernet_vmamba_mnist")
    train_tf, eval_tf = dense.segmentation_transforms(canvas)
    assert train_tf.crop_size == (64, 64) and train_tf.scale == eval_tf.scale == (512, 128)
    assert (train_tf.flip_p, train_tf.ratio_range, train_tf.cat_max_ratio) == (0.0, (0.75, 1.25), 0.99)
    image = torch.zeros(3, 128, 128)
    label = torch.zeros(128, 128, dtype=torch.long)
    label[10:20, 30:40] = 3
    x, y = train_tf(image, label)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert eval_tf(image, label)[0].shape == (3, 128, 128)  # whole canvases at their own size
    train_tf, eval_tf = dense.segmentation_transforms(dict(canvas, data_path=tmp_path, img_size=None))
    assert train_tf.crop_size == (128, 128) and train_tf.scale == eval_tf.scale == (512, 128)
    assert (train_tf.flip_p, train_tf.ratio_range, train_tf.cat_max_ratio) == (0.5, (0.5, 2.0), 0.75)


def test_dense_schedules_match_the_spec():
    """dense.md §8.6: Mask R-CNN 1x and UperNet 160k learning rates at the named iterations."""
    opt = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    per_epoch = 7330  # COCO train2017 / 16
    det = optim.WarmupStep(opt, 1e-4, 12 * per_epoch, [8 * per_epoch, 11 * per_epoch], 0.1, 1000, 1e-7)
    assert det.lr_at(0) == pytest.approx(1e-7) and det.lr_at(1000) == pytest.approx(1e-4)
    assert det.lr_at(8 * per_epoch - 1) == pytest.approx(1e-4)
    assert det.lr_at(8 * per_epoch) == pytest.approx(1e-5) and det.lr_at(11 * per_epoch) == pytest.approx(1e-6)
    seg = optim.WarmupPoly(opt, 6e-5, 160_000, 1.0, 1500, 6e-11)
    assert seg.lr_at(0) == pytest.approx(6e-11) and seg.lr_at(1500) == pytest.approx(6e-5)
    assert seg.lr_at(80_750) == pytest.approx(3e-5) and seg.lr_at(160_000) == 0.0
    assert seg.set_step(80_750) == pytest.approx(3e-5) and opt.param_groups[0]["lr"] == pytest.approx(3e-5)


def test_norm_names_no_decay_rule():
    """dense.md §8.5: no decay exactly for names containing `norm` (block norms and outnorms); the stem and
    downsample LayerNorms (index-named), A_logs, Ds and biases are decayed."""
    import py.models as models
    model = models.create_model("upernet_vmamba_mnist")
    groups = optim.param_groups(model, 0.05, rule="norm_names")
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {n for n in names.values() if "norm" in n}
    assert any(n.startswith("backbone.model.outnorm") for n in no_decay)
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert any(n.endswith("A_logs") for n in decayed) and any(n.endswith(".bias") for n in decayed)
    assert any(n.startswith("backbone.model.patch_embed.") and n.endswith(".weight") and
               dict(model.named_parameters())[n].ndim == 1 for n in decayed)  # the stem's LayerNorm
    with pytest.raises(ValueError, match="no-decay rule"):
        optim.build_optimizer(model, 1e-3, 0.05, rule="bogus")


class _LeftHalfIsOne(torch.nn.Module):
    """Fake segmenter, logits at stride 2: class 1 on the left half of its input, 0 on the right: not
    mirror-symmetric, so a flipped view disagrees with the plain one."""

    def forward(self, x):
        h, w = (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
        left = (torch.arange(w) < w / 2).float().expand(x.shape[0], h, w)
        return torch.stack([1 - left, left], 1) * 10


def test_segment_single_scale_and_tta_with_and_without_flips():
    image = torch.zeros(3, 16, 24)
    plain = dense.segment(_LeftHalfIsOne(), image, (16, 24))
    assert plain.shape == (2, 16, 24) and (plain.argmax(0)[:, :12] == 1).all() and (plain.argmax(0)[:, 12:] == 0).all()
    no_flip = dense.segment(_LeftHalfIsOne(), image, (16, 24), tta=True, flip=False)
    torch.testing.assert_close(no_flip.sum(0), torch.ones(16, 24))  # a mean of softmaxes
    assert (no_flip.argmax(0) == plain.argmax(0)).float().mean() > 0.9  # every scale agrees, up to borders
    flipped = dense.segment(_LeftHalfIsOne(), image, (16, 24), tta=True)
    away_from_centre = torch.cat([flipped[..., :8], flipped[..., 16:]], -1)  # the mirror views cancel it out
    torch.testing.assert_close(away_from_centre, torch.full((2, 16, 16), 0.5), atol=0.1, rtol=0)
    assert not dense.build_datasets(dict(task="segmentation", data_path=None, img_size=64, val_fraction=0.2,
                                         model="upernet_vmamba_mnist"), train=False)[2]["flip_tta"]
