"""Parameter and FLOP table of the registered models, next to the published numbers.

    ./bazelw run //py/eval:model_table -- [--models=vmamba_tiny_s1l8,vim_small] [--img_size=224]
    ./bazelw run //py/eval:model_table -- --models=mask_rcnn_vmamba_tiny_s1l8,upernet_vmamba_tiny_s1l8

FLOPs follow py.models.count_flops (fvcore convention, 1 multiply-add = 1 FLOP, plus each op's own
formula). Building and running the base models on a CPU takes tens of seconds each. Detection and
segmentation models are counted as VMamba's analyze/flops.py does (dense.md §3.1), through their
flop_count_module(): Mask R-CNN at 1280×800 (backbone, FPN, RPN head, box head on 1000 RoIs, mask head
on 100), UperNet at 512×2048 (backbone and decode head; the auxiliary head counts in the params only).
"""
import argparse
import sys

import torch

import py.models as models

# Published (spec) numbers: exact parameter counts and GFLOPs at 224.
SPEC = {
    "vmamba_tiny_s1l8": (30_249_064, 4.906), "vmamba_small_s2l15": (50_147_752, 8.716),
    "vmamba_base_s2l15": (88_557_800, 15.359), "vim_tiny": (7_148_008, None), "vim_small": (25_796_584, None),
    "vim_base": (97_598_440, None), "dyvm_vim_tiny": (7_367_086, None), "dyvm_vim_small": (26_594_110, None),
    "dyvm_vim_base": (100_631_134, None), "pvmamba_tiny": (24_288_328, 4.503), "pvmamba_small": (40_116_348, 7.439),
    "pvmamba_base": (88_849_900, 16.236),
    # dense.md §3.2/§3.3 (mmdet-exact heads; GFLOPs at 1280×800 and 512×2048).
    "mask_rcnn_vmamba_tiny_s1l8": (49_755_312, 271.163), "mask_rcnn_vmamba_small_s2l15": (69_654_000, 348.922),
    "mask_rcnn_vmamba_base_s2l15": (107_931_376, 485.492), "upernet_vmamba_tiny_s1l8": (61_902_572, 948.780),
    "upernet_vmamba_small_s2l15": (81_801_260, 1028.405), "upernet_vmamba_base_s2l15": (122_069_292, 1170.341),
    "mask_rcnn_pvmamba_tiny": (None, None), "upernet_pvmamba_tiny": (None, None),
    "mask_rcnn_vim_small": (None, None), "upernet_vim_small": (None, None),
}
# The input (C, H, W) each task's published FLOPs are counted at (dense.md §3.1).
DENSE_FLOP_INPUT = {"detection": (3, 1280, 800), "segmentation": (3, 512, 2048)}


def params_and_flops(model, flops=True):
    """(exact parameter count, forward FLOPs of one image at model.default_cfg's input size or None).

    Also used by //py/eval:profile, so both tools count the same way.
    """
    params = sum(p.numel() for p in model.parameters())
    if not flops:
        return params, None
    task = model.default_cfg.get("task", "classification")
    if task != "classification":
        return params, models.count_flops(model.flop_count_module(), DENSE_FLOP_INPUT[task])["total"]
    return params, models.count_flops(model, tuple(model.default_cfg["input_size"]))["total"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SPEC), help="comma-separated model names")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--no_flops", action="store_true", help="parameters only (fast)")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in models.list_models()]
    if unknown:
        sys.exit(f"error: unknown models {unknown}; known: {models.list_models()}")
    print("| model | params | spec params | GFLOPs | spec GFLOPs |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        torch.manual_seed(0)
        dense = models.registry.registered_cfg(name).get("task", "classification") != "classification"
        model = models.create_model(name, **({} if dense else {"img_size": args.img_size})).eval()
        params, flops = params_and_flops(model, flops=not args.no_flops)
        gflops = None if flops is None else flops / 1e9
        spec_p, spec_f = SPEC.get(name, (None, None))
        fmt = lambda v, f: "—" if v is None else f.format(v)
        print(f"| {name} | {params:,} | {fmt(spec_p, '{:,}')} | {fmt(gflops, '{:.3f}')} | {fmt(spec_f, '{:.3f}')} |",
              flush=True)


if __name__ == "__main__":
    main()
