"""`evaluate` for detection and segmentation models (called by py/eval/evaluate.py, which owns the flags).

The validation split, the model's classes and input size come from the trainer run's config (or the
flags and the model's registered defaults), exactly as the trainer evaluates every epoch
(py.training.dense), so a run's last metrics.jsonl row and this tool agree.
"""
import sys
import time

import torch

from py.eval import common
from py.training import dense, engine


def main(flags_, task, run_cfg, weights, step, source, device):
    name = run_cfg["model"] if run_cfg else flags_.model
    if run_cfg and flags_.model and flags_.model != name:
        raise common.UsageError(f"--model={flags_.model} but the checkpoint's run trained {name}")
    if flags_.tta and task != "segmentation":
        raise common.UsageError("--tta is for segmentation models (upernet_*)")
    cfg = common.dense_config(flags_, task, run_cfg, name)
    _, val, info = dense.build_datasets(cfg, train=False)
    if flags_.limit < 0:
        raise common.UsageError(f"--limit must be >= 0, got {flags_.limit}")
    if flags_.limit:
        limited = torch.utils.data.Subset(val, range(min(flags_.limit, len(val))))
    kwargs = dict(run_cfg.get("model_kwargs") or {}) if run_cfg else {}
    if flags_.model_kwargs is not None:
        kwargs = common.parse_json_dict("model_kwargs", flags_.model_kwargs)
    torch.manual_seed(0)
    model = common.build_model(name, info["num_classes"], cfg["img_size"], None, kwargs).to(device)
    if not weights:
        print(f"warning: no --checkpoint: evaluating {name} with RANDOM weights", file=sys.stderr)
        weights = {"random": None}
    elif flags_.weights != "all":
        if flags_.weights not in weights:
            raise common.UsageError(f"--weights={flags_.weights}: {source} has only {', '.join(weights)}")
        weights = {flags_.weights: weights[flags_.weights]}
    dataset = limited if flags_.limit else val
    loader = torch.utils.data.DataLoader(dataset, batch_size=1 if task == "segmentation" else flags_.batch_size,
                                         shuffle=False, num_workers=flags_.num_workers or 0,
                                         collate_fn=dense.val_collate)
    results = {}
    t0 = time.perf_counter()
    for label, state in weights.items():
        if state is not None:
            common.load_state(model, state, source)
        from tqdm import tqdm
        batches = tqdm(loader, desc=f"eval {label}", unit="batch", disable=not flags_.progress, file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)
        stats = {}
        results[label] = dense.evaluate(model, batches, device, "none", val, task, tta=flags_.tta, stats=stats,
                                        flip=info.get("flip_tta", True))
        results[label].update(num_images=stats["images"], skipped_images=stats["skipped_images"])
        if stats["skipped_images"]:
            print(f"warning: {stats['skipped_images']} unreadable image(s) skipped", file=sys.stderr)
    where = cfg["data_path"] or "the embedded MNIST-5k digit canvases"
    report = {"model": name, "task": task, "model_kwargs": kwargs, "num_classes": info["num_classes"],
              "class_names": list(info["class_names"]), "checkpoint": source, "step": step,
              "random_weights": not source, "dataset": {"root": where, "split": "val", "num_images": len(dataset),
                                                        "tta": bool(flags_.tta)},
              "device": str(device), "seconds": time.perf_counter() - t0, "results": results}
    print(f"{name} on {where} val ({len(dataset)} images{', multi-scale + flip' if flags_.tta else ''}), "
          f"{'checkpoint ' + source if source else 'random weights'}" + (f" (step {step})" if step else ""))
    print_table(task, results, info["class_names"])
    if flags_.output:
        out = common.caller_path(flags_.output)
        common.write_json(out, report)
        print(f"results written to {out}")
    return report


def print_table(task, results, class_names):
    if task == "detection":
        keys = [f"{kind}_{m}" for kind in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        keys = [k for k in keys if any(k in r for r in results.values())]
    else:
        keys = ["mIoU", "mAcc", "aAcc"]
    print(f"{'weights':<8} " + " ".join(f"{k:>9}" for k in keys))
    for label, r in results.items():
        print(f"{label:<8} " + " ".join(f"{r[k]:9.2f}" for k in keys))
    if task == "segmentation":
        for label, r in results.items():
            cells = "  ".join(f"{n}:{v:.1f}" for n, v in list(zip(class_names, r["IoU"]))[:20])
            more = f"  ... ({len(class_names) - 20} more in --output)" if len(class_names) > 20 else ""
            print(f"per-class IoU ({label}): {cells}{more}")
