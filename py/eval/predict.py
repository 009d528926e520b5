"""Draws a detection or segmentation model's predictions next to the ground truth, as PNG files:
`./bazelw run //py/eval:predict -- --checkpoint=runs/<name> --output=pred`.

    ./bazelw run //py/eval:predict -- --checkpoint=runs/det --indices=0,1,2,3 --output=pred   # canvases
    ./bazelw run //py/eval:predict -- --model=mask_rcnn_vmamba_tiny_s1l8 --checkpoint=w.safetensors \
        --data_path=/data/coco --indices=0,5 --output=pred

For each validation image index it writes <output>/<index>.png: the ground truth (boxes and instance
masks, or the label map) on the left, the model's prediction on the right (detections scoring at least
--score_threshold; the segmentation at single scale, or with --tta multi-scale + flip, no flip on the
digit canvases), and
<output>/predictions.json with the drawn detections or per-image pixel accuracy.
"""
import sys

import torch
from absl import flags

from py.common import cli
from py.eval import common
from py.training import dense

FLAGS = flags.FLAGS

cli.define_model_flags(FLAGS)
cli.define_runtime_flags(FLAGS)
flags.DEFINE_string("data_path", None, "COCO / ADE20K root (default: the run's dataset, else the embedded canvases)")
flags.DEFINE_integer("img_size", None, "segmentation input size (default: the run's, else the model's)")
flags.DEFINE_float("val_fraction", None, "canvases: the digit split's validation fraction (default: the run's, else 0.2)")
flags.DEFINE_string("indices", "0,1,2,3", "comma-separated validation image indices to draw")
flags.DEFINE_float("score_threshold", 0.5, "detection: draw detections scoring at least this, in [0, 1]")
flags.DEFINE_bool("tta", False, "segmentation: multi-scale + flip prediction (no flip on the digit canvases)")
flags.DEFINE_string("output", "predictions", "output directory for the PNG files")


def _indices(n):
    try:
        indices = [int(t) for t in FLAGS.indices.split(",") if t.strip()]
    except ValueError:
        raise common.UsageError(f"--indices must be comma-separated integers, got {FLAGS.indices!r}")
    bad = [i for i in indices if not 0 <= i < n]
    if not indices or bad:
        raise common.UsageError(f"--indices must name images 0..{n - 1} of the validation split, got {FLAGS.indices!r}")
    return indices


def main():
    if not 0.0 <= FLAGS.score_threshold <= 1.0:
        raise common.UsageError(f"--score_threshold must be in [0, 1], got {FLAGS.score_threshold}")
    device = common.pick_device(FLAGS.device)
    cli.set_threads(FLAGS.threads)
    run_cfg, states, source = None, {}, None
    if FLAGS.checkpoint:
        run_cfg, states, _, source = common.load_weights(FLAGS.checkpoint, FLAGS.trust_pickle)
    name = run_cfg["model"] if run_cfg else FLAGS.model
    if not name:
        raise common.UsageError("pass --checkpoint (a trainer run or weights file) and/or --model=NAME")
    task = common.registered_cfg(name).get("task", "classification")
    if task == "classification":
        raise common.UsageError(f"--model={name} is a classifier: predict draws detection (mask_rcnn_*) and "
                                "segmentation (upernet_*) models")
    cfg = common.dense_config(FLAGS, task, run_cfg, name)
    _, val, info = dense.build_datasets(cfg, train=False)
    kwargs = dict(run_cfg.get("model_kwargs") or {}) if run_cfg else {}
    if FLAGS.model_kwargs is not None:
        kwargs = common.parse_json_dict("model_kwargs", FLAGS.model_kwargs)
    torch.manual_seed(0)
    model = common.build_model(name, info["num_classes"], cfg["img_size"], None, kwargs).to(device).eval()
    if states:
        if FLAGS.weights not in states:
            raise common.UsageError(f"--weights={FLAGS.weights}: {source} has only {', '.join(states)}")
        common.load_state(model, states[FLAGS.weights], source)
    else:
        print(f"warning: no --checkpoint: drawing {name} with RANDOM weights", file=sys.stderr)
    out = common.caller_path(FLAGS.output)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index in _indices(len(val)):
        item = val[index]
        if item is None:
            print(f"warning: validation image {index} is unreadable: skipped", file=sys.stderr)
            continue
        picture, record = (_draw_detection if task == "detection" else _draw_segmentation)(model, item, info, device)
        record["index"] = index
        records.append(record)
        path = out / f"{index}.png"
        picture.save(path)
        print(f"wrote {path}")
    common.write_json(out / "predictions.json", {"model": name, "checkpoint": source, "task": task,
                                                  "records": records})
    return records


@torch.no_grad()
def _draw_detection(model, item, info, device):
    from py.eval import draw_dense
    image, target = item
    pred = model([image.to(device)])[0]
    keep = pred["scores"] >= FLAGS.score_threshold
    pred = {k: v[keep].cpu() for k, v in pred.items()}
    names = info["class_names"]
    truth = draw_dense.draw_detections(image, target["boxes"], target["labels"], torch.ones(len(target["labels"])),
                                       target["masks"], names, score_threshold=0.0)
    masks = pred.get("masks")
    drawn = draw_dense.draw_detections(image, pred["boxes"], pred["labels"], pred["scores"],
                                       None if masks is None else masks[:, 0] >= 0.5, names, score_threshold=0.0)
    record = {"image_id": int(target["image_id"]), "detections": [
        {"label": names[int(label)], "score": round(float(score), 4), "box_xyxy": [round(float(v), 1) for v in box]}
        for box, label, score in zip(pred["boxes"], pred["labels"], pred["scores"])]}
    return draw_dense.side_by_side([truth, drawn], ["ground truth", f"prediction (score >= {FLAGS.score_threshold})"]), record


@torch.no_grad()
def _draw_segmentation(model, item, info, device):
    from py.eval import draw_dense
    image, label, meta = item
    flip = info["flip_tta"]
    scores = dense.segment(model, image.to(device), tuple(label.shape[-2:]), tta=FLAGS.tta, flip=flip)
    pred = scores.argmax(0).cpu()
    shown = torch.nn.functional.interpolate(image[None], size=tuple(label.shape[-2:]), mode="bilinear",
                                            align_corners=False)[0]
    shown = _denormalise(shown)
    n, names = info["num_classes"], info["class_names"]
    valid = label != 255
    accuracy = float((pred[valid] == label[valid]).float().mean()) * 100 if valid.any() else float("nan")
    pictures = [draw_dense.draw_segmentation(shown, label, n, names), draw_dense.draw_segmentation(shown, pred, n, names)]
    tta = (" (multi-scale + flip)" if flip else " (multi-scale)") if FLAGS.tta else ""
    title = f"prediction{tta}: pixel accuracy {accuracy:.1f}%"
    return draw_dense.side_by_side(pictures, ["ground truth", title]), {"file": str(meta.get("file", "")),
                                                                          "pixel_accuracy": accuracy}


def _denormalise(image):
    """The dataset's normalised (3, H, W) image back to [0, 1] for drawing."""
    from py.models.registry import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean).clamp(0, 1)


def run():
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))


if __name__ == "__main__":
    run()
