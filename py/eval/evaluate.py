"""Top-1 / top-5 / per-class accuracy, COCO box/mask AP or mIoU of a model:
`./bazelw run //py/eval:evaluate -- [--flags]`.

    # a trainer run (its latest good checkpoint; raw and EMA weights when both were saved)
    ./bazelw run //py/eval:evaluate -- --checkpoint=runs/vim_mnist-20250101-120000 --output=eval.json
    # a weights file
    ./bazelw run //py/eval:evaluate -- --checkpoint=vim_small.safetensors --model=vim_small --data_path=/data/in1k

Data: by default the embedded MNIST-5k validation split exactly as the trainer makes it (the run's
seed and val_fraction), or the val/ folder of an ImageFolder root (--data_path, or the run's own).
The model's name, classes, resolution and overrides come from the run's config; for a single file
they come from --model and its registered defaults. Flags spelt --batch-size work too.

Detection models (mask_rcnn_*): COCO box and mask AP/AP50/AP75/APs/APm/APl (pycocotools) on val2017 of
a COCO root (--data_path, or the run's), by default the embedded digit canvases' held-out split.
Segmentation models (upernet_*): mIoU/mAcc/aAcc on ADE20K validation/ (or COCO instances, or the
canvases), single scale, or multi-scale + flip with --tta (dense.md §2.5; the canvases are not flipped).
"""
import sys
import time

import torch
from absl import flags

from py.common import cli
from py.eval import common
from py.training import data, engine

FLAGS = flags.FLAGS

cli.define_model_flags(FLAGS, weights=("all", "model", "ema"), weights_default="all")
cli.define_runtime_flags(FLAGS)
flags.DEFINE_string("data_path", None, "ImageFolder root whose val/ split is evaluated (default: the run's "
                    "dataset, else the embedded MNIST-5k)")
flags.DEFINE_integer("img_size", None, "input resolution (default: the run's, else the model's registered one)")
flags.DEFINE_integer("in_chans", None, "input channels (default: the run's, else the model's registered one)")
flags.DEFINE_float("val_fraction", None, "MNIST-5k validation fraction (default: the run's, else 0.2)")
flags.DEFINE_integer("seed", None, "MNIST-5k split seed, also the seed of random weights (default: the run's, else 0)")
flags.DEFINE_integer("limit", 0, "evaluate only the first N validation images (0: all)")
flags.DEFINE_bool("tta", False, "segmentation: multi-scale (0.5-1.75) + flip test, softmax-averaged (no flips on the "
                  "digit canvases: a mirrored digit is not a digit)")
flags.DEFINE_integer("batch_size", 128, "images per forward pass")
flags.DEFINE_integer("num_workers", None, "data loader workers (default: 0 for MNIST-5k, CPUs-1 otherwise)")
flags.DEFINE_string("output", None, "write the results as JSON to this file")
flags.DEFINE_bool("progress", True, "show a progress bar on stderr")


def _setting(name, run_cfg, fallback):
    """A flag given on the command line wins, then the run's config, then `fallback`."""
    if FLAGS[name].present or FLAGS[name].value is not None:
        return FLAGS[name].value
    if run_cfg and run_cfg.get(name) is not None:
        return run_cfg[name]
    return fallback


def resolve_model(run_cfg):
    """(model name, model_kwargs, img_size, in_chans) from flags, the run's config, registered defaults."""
    name = FLAGS.model
    if run_cfg:
        if name and name != run_cfg["model"]:
            raise common.UsageError(f"--model={name} but the checkpoint's run trained {run_cfg['model']}")
        name = run_cfg["model"]
    if not name and FLAGS.checkpoint:
        raise common.UsageError(f"--checkpoint {FLAGS.checkpoint} has no trainer run config next to it: also "
                                "pass --model=NAME (and --model_kwargs, --img_size, --in_chans if not the defaults)")
    if not name:
        raise common.UsageError("pass --checkpoint (a trainer run directory or weights file) and/or --model=NAME")
    reg = common.registered_cfg(name)
    kwargs = run_cfg.get("model_kwargs", {}) if run_cfg else {}
    if FLAGS.model_kwargs is not None:
        kwargs = common.parse_json_dict("model_kwargs", FLAGS.model_kwargs)
    img_size = _setting("img_size", run_cfg, reg["input_size"][-1])
    in_chans = _setting("in_chans", run_cfg, reg["input_size"][0])
    for flag, value in (("img_size", img_size), ("in_chans", in_chans)):
        if value <= 0:
            raise common.UsageError(f"--{flag} must be > 0, got {value}")
    return name, kwargs, img_size, in_chans


def build_val_set(run_cfg, img_size, in_chans):
    """(dataset, class names, description) of the validation split to evaluate."""
    data_path = FLAGS.data_path
    if data_path is None and run_cfg and run_cfg.get("dataset") == "imagefolder":
        data_path = run_cfg.get("data_path")
    if data_path:
        root = common.caller_path(data_path)
        if not (root / "val").is_dir():
            raise common.UsageError(f"--data_path {root} has no val/ directory (expected "
                                    f"{root}/val/<class_name>/<image files>)")
        val = data.SafeImageFolder(root / "val", data.imagefolder_eval_transform(img_size))
        info = {"name": "imagefolder", "root": str(root), "split": "val"}
        classes = list(val.classes)
    else:
        val_fraction = _setting("val_fraction", run_cfg, 0.2)
        seed = _setting("seed", run_cfg, 0)
        if not 0.0 < val_fraction < 1.0:
            raise common.UsageError(f"--val_fraction must be in (0, 1), got {val_fraction}")
        _, val = data.mnist5k_datasets(val_fraction, seed, in_chans, img_size)
        info = {"name": "mnist5k", "split": "val", "val_fraction": val_fraction, "seed": seed}
        classes = [str(c) for c in range(data.MNIST_CLASSES)]
    if FLAGS.limit < 0:
        raise common.UsageError(f"--limit must be >= 0, got {FLAGS.limit}")
    if FLAGS.limit:
        val = torch.utils.data.Subset(val, range(min(FLAGS.limit, len(val))))
    if len(val) == 0:
        raise common.UsageError(f"the validation set {info} is empty")
    info["num_images"] = len(val)
    return val, classes, info


def evaluate_weights(model, loader, device, classes, label):
    """Accuracy of `model` over `loader` (py.training.engine.evaluate, as during training)."""
    from tqdm import tqdm
    batches = tqdm(loader, desc=f"eval {label}", unit="batch", disable=not FLAGS.progress, file=sys.stderr,
                   dynamic_ncols=True, mininterval=1.0)
    stats = {}
    top1, top5, loss, per_class = engine.evaluate(model, batches, device, "none", len(classes), stats)
    if stats["skipped_images"]:
        print(f"warning: {stats['skipped_images']} unreadable image(s) skipped", file=sys.stderr)
    return {"top1": top1, "top5": top5, "loss": loss, "num_images": stats["images"],
            "skipped_images": stats["skipped_images"], "per_class": dict(zip(classes, per_class))}


def print_table(results, classes):
    print(f"{'weights':<8} {'top-1 %':>8} {'top-5 %':>8} {'loss':>8} {'images':>7}")
    for label, r in results.items():
        print(f"{label:<8} {r['top1']:8.2f} {r['top5']:8.2f} {r['loss']:8.4f} {r['num_images']:7d}")
    for label, r in results.items():
        cells = "  ".join(f"{c}:{r['per_class'][c]:.1f}" for c in classes[:20])
        more = f"  ... ({len(classes) - 20} more in --output)" if len(classes) > 20 else ""
        print(f"per-class top-1 % ({label}): {cells}{more}")


def main():
    if FLAGS.batch_size <= 0:
        raise common.UsageError(f"--batch_size must be > 0, got {FLAGS.batch_size}")
    device = common.pick_device(FLAGS.device)
    cli.set_threads(FLAGS.threads)
    run_cfg, weights, step, source = (None, {}, None, None)
    if FLAGS.checkpoint:
        run_cfg, weights, step, source = common.load_weights(FLAGS.checkpoint, FLAGS.trust_pickle)
    name_hint = run_cfg["model"] if run_cfg else FLAGS.model
    task = common.registered_cfg(name_hint).get("task", "classification") if name_hint else "classification"
    if task != "classification":
        from py.eval import evaluate_dense
        return evaluate_dense.main(FLAGS, task, run_cfg, weights, step, source, device)
    if FLAGS.tta:
        raise common.UsageError("--tta is for segmentation models (upernet_*)")
    name, kwargs, img_size, in_chans = resolve_model(run_cfg)
    val, classes, info = build_val_set(run_cfg, img_size, in_chans)
    torch.manual_seed(_setting("seed", run_cfg, 0))
    model = common.build_model(name, len(classes), img_size, in_chans, kwargs).to(device)
    if not weights:
        print(f"warning: no --checkpoint: evaluating {name} with RANDOM weights (expect chance accuracy)",
              file=sys.stderr)
        weights = {"random": None}
    elif FLAGS.weights != "all":
        if FLAGS.weights not in weights:
            raise common.UsageError(f"--weights={FLAGS.weights}: {source} has only {', '.join(weights)}")
        weights = {FLAGS.weights: weights[FLAGS.weights]}
    workers = FLAGS.num_workers if FLAGS.num_workers is not None else (
        0 if info["name"] == "mnist5k" else data.num_workers_default())
    loader = torch.utils.data.DataLoader(val, batch_size=FLAGS.batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=data.skip_collate,  # unreadable images: dropped, counted
                                         pin_memory=device.type == "cuda")
    results = {}
    t0 = time.perf_counter()
    for label, state in weights.items():
        if state is not None:
            common.load_state(model, state, source)
        results[label] = evaluate_weights(model, loader, device, classes, label)
    report = {"model": name, "model_kwargs": kwargs, "img_size": img_size, "in_chans": in_chans,
              "num_classes": len(classes), "checkpoint": source, "step": step, "random_weights": not source,
              "dataset": info, "device": str(device), "seconds": time.perf_counter() - t0, "results": results}
    print(f"{name} on {info['name']} {info['split']} ({info['num_images']} images), "
          f"{'checkpoint ' + source if source else 'random weights'}" + (f" (step {step})" if step else ""))
    print_table(results, classes)
    if FLAGS.output:
        out = common.caller_path(FLAGS.output)
        common.write_json(out, report)
        print(f"results written to {out}")
    return report


def run():
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))


if __name__ == "__main__":
    run()
