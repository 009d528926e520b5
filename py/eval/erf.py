"""Effective receptive field (ERF) heat maps, as in RepLKNet (Ding et al. 2022) and the VMamba paper.

    ./bazelw run //py/eval:erf -- --model=vmamba_tiny_s1l8 --output=erf/vmamba [--checkpoint=runs/x]
    ./bazelw run //py/eval:erf -- --model=vim_mnist --output=erf/vim_mnist      # MNIST-5k val images

For N images: take the central pixel of the model's last feature map (the last tap of
forward_intermediates, before any final norm: feature_map below), sum its channel mean over the
batch, backpropagate to the input and accumulate |grad| summed over input channels; average over
images. Written to --output:
  erf.npy   the raw averaged map (H, W);
  erf.png   log10(1 + 10^k · map / max) / log10(1 + 10^k), k = --decades (RepLKNet's log10(x + 1) with
            the map first normalised so that its peak is 10^k: a fixed dynamic range of k decades);
  erf.json  setup and summary stats, among them RepLKNet's "high-contribution area ratio": the smallest
            centred square holding p of the mass, for the raw map and the log-scaled one, and the
            smallest fraction of pixels holding p of the raw mass.
Inputs: --data_path (ImageFolder val/), else MNIST-5k val for 1-channel 28x28 models, else N(0, 1).
"""
import itertools
import sys

import numpy as np
import torch
from absl import flags

from py.common import cli
from py.eval import common

FLAGS = flags.FLAGS
THRESHOLDS = (0.2, 0.3, 0.5, 0.9, 0.99)


# ------------------------------------------------------------------------------------------------
# The ERF itself


def feature_map(model, x):
    """The model's last tap of its intermediate-features contract (py.models.features), before any final
    norm: (B, C, h, w). One rule for every family (VMamba/PVMamba: the last stage; Vim: the patch tokens
    of the last layer on their grid; DyVM: the same with pruned tokens scattered back). Before the norm
    because a LayerNorm's output has a constant channel mean, which would make the ERF vanish."""
    return model.forward_intermediates(x, indices=1, intermediates_only=True)[0]


def input_gradients(model, x, features=feature_map):
    """|d(channel mean of the central feature pixel)/d input| summed over input channels: (B, H, W)."""
    x = x.detach().clone().requires_grad_(True)
    f = features(model, x)
    h, w = f.shape[-2:]
    (grad,) = torch.autograd.grad(f[:, :, h // 2, w // 2].mean(1).sum(), x)
    return grad.abs().sum(1)


def compute_erf(model, batches, features=feature_map):
    """The ERF map (H, W) float64 averaged over all images of `batches` (an iterable of (B, C, H, W))."""
    total, n = None, 0
    for x in batches:
        g = input_gradients(model, x, features).double().sum(0)
        total = g if total is None else total + g
        n += x.shape[0]
    if not n:
        raise ValueError("no images")
    return (total / n).numpy()


def log_scale(raw, decades=3.0):
    """RepLKNet's log10(x + 1) display scale after normalising the peak to 10^decades; in [0, 1]."""
    top = float(raw.max())
    if top <= 0:
        return np.zeros_like(raw)
    return np.log10(1 + raw / top * 10 ** decades) / np.log10(1 + 10 ** decades)


def square_ratio(m, thresh):
    """Smallest square centred on the image centre holding `thresh` of m's mass: (side, area / image);
    near the border the square is clipped to the image and `side` is its longer clipped side."""
    H, W = m.shape
    total = m.sum()
    cy, cx = H // 2, W // 2
    for r in range(max(H, W)):
        area = m[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1]
        if area.sum() >= thresh * total:
            return max(area.shape), area.size / m.size
    return max(H, W), 1.0


def pixel_fraction(m, thresh):
    """Smallest fraction of pixels (largest first) that holds `thresh` of m's mass."""
    v = np.sort(m.ravel())[::-1]
    c = np.cumsum(v)
    return float((np.searchsorted(c, thresh * c[-1]) + 1) / v.size)


def summarize(raw, decades=3.0):
    """The stats of erf.json (plain Python types)."""
    scaled = log_scale(raw, decades)
    H, W = raw.shape
    ys, xs = np.mgrid[0:H, 0:W]
    mass = raw.sum()
    peak = np.unravel_index(int(raw.argmax()), raw.shape)
    return {
        "shape": [H, W], "max": float(raw.max()), "sum": float(mass), "nonzero_fraction": float((raw > 0).mean()),
        "peak": [int(peak[0]), int(peak[1])],
        "center_of_mass": [float((ys * raw).sum() / mass), float((xs * raw).sum() / mass)] if mass > 0 else None,
        "decades": decades,
        "high_contribution_area_ratio": {
            "raw": {str(t): dict(zip(("side", "area_ratio"), square_ratio(raw, t))) for t in THRESHOLDS},
            "log_scaled": {str(t): dict(zip(("side", "area_ratio"), square_ratio(scaled, t))) for t in THRESHOLDS},
        },
        "pixel_fraction_of_mass": {str(t): pixel_fraction(raw, t) for t in THRESHOLDS},
    }


def save_heatmap(path, scaled, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 5))
    im = ax.imshow(scaled, cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="log-scaled |grad| (1 = peak)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Inputs


def image_batches(info, source, num_images, batch_size, data_path=None, seed=0):
    """(batches, description): ImageFolder val/, MNIST-5k val, or N(0, 1) images at the model's size."""
    size, chans = info["img_size"], info["in_chans"]
    if source == "auto":
        source = "folder" if data_path else ("mnist" if (chans, size) == (1, 28) else "random")
    if source == "random":
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(num_images, chans, size, size, generator=g)
        return [images[i:i + batch_size] for i in range(0, num_images, batch_size)], {"inputs": "random normal"}
    from py.training import data
    if source == "mnist":
        _, val = data.mnist5k_datasets(0.2, 0, chans, size)
        desc = {"inputs": "mnist5k val"}
    elif source == "folder":
        if not data_path:
            raise common.UsageError("--inputs=folder needs --data_path")
        root = common.caller_path(data_path)
        if not (root / "val").is_dir():
            raise common.UsageError(f"--data_path {root} has no val/ directory")
        val = data.SafeImageFolder(root / "val", data.imagefolder_eval_transform(size))
        desc = {"inputs": "imagefolder val", "root": str(root)}
    else:
        raise common.UsageError(f"unknown --inputs {source!r}")
    if len(val) < num_images:
        raise common.UsageError(f"--num_images={num_images} but the {desc['inputs']} set has {len(val)}")
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed)).tolist()
    readable = (item for item in map(val.__getitem__, order) if item is not None)  # unreadable files: None
    images = [image for image, _ in itertools.islice(readable, num_images)]
    if len(images) < num_images:
        raise common.UsageError(f"--num_images={num_images} but only {len(images)} images of the "
                                f"{desc['inputs']} set are readable")
    images = torch.stack(images)
    return [images[i:i + batch_size] for i in range(0, num_images, batch_size)], desc


# ------------------------------------------------------------------------------------------------
# CLI


def define_flags():
    cli.define_model_flags(FLAGS)
    cli.define_runtime_flags(FLAGS)
    flags.DEFINE_string("output", None, "output directory (erf.png, erf.npy, erf.json)")
    flags.DEFINE_integer("num_images", 50, "images averaged (RepLKNet: 50)")
    flags.DEFINE_integer("batch_size", 8, "images per forward/backward pass")
    flags.DEFINE_integer("img_size", None, "input resolution (default: the run's, else the model's registered)")
    flags.DEFINE_integer("in_chans", None, "input channels (default: the run's, else the model's registered)")
    flags.DEFINE_string("data_path", None, "ImageFolder root whose val/ images are used")
    flags.DEFINE_enum("inputs", "auto", ["auto", "random", "mnist", "folder"],
                      "auto: --data_path if given, MNIST-5k val for 1x28x28 models, else N(0, 1) noise")
    flags.DEFINE_float("decades", 3.0, "dynamic range of the log-scaled heat map")
    flags.DEFINE_integer("seed", 0, "seed of the random weights/images and of the image choice")


def main():
    for name in ("num_images", "batch_size"):
        if FLAGS[name].value <= 0:
            raise common.UsageError(f"--{name} must be > 0, got {FLAGS[name].value}")
    if FLAGS.decades <= 0:
        raise common.UsageError(f"--decades must be > 0, got {FLAGS.decades}")
    if not FLAGS.output:
        raise common.UsageError("--output=DIR is required")
    cli.set_threads(FLAGS.threads)
    torch.manual_seed(FLAGS.seed)
    model, info = common.load_model(FLAGS.model, FLAGS.checkpoint, FLAGS.model_kwargs, FLAGS.img_size, FLAGS.in_chans,
                                    FLAGS.weights, FLAGS.trust_pickle)
    batches, desc = image_batches(info, FLAGS.inputs, FLAGS.num_images, FLAGS.batch_size, FLAGS.data_path,
                                  FLAGS.seed)
    raw = compute_erf(model, batches)
    out = common.caller_path(FLAGS.output)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "erf.npy", raw)
    stats = summarize(raw, FLAGS.decades)
    save_heatmap(out / "erf.png", log_scale(raw, FLAGS.decades),
                 f"ERF {info['model']} ({FLAGS.num_images} {desc['inputs']}, {raw.shape[0]}x{raw.shape[1]})"
                 + (", random weights" if info["random_weights"] else ""))
    common.write_json(out / "erf.json", dict(info, num_images=FLAGS.num_images, **desc, **stats))
    r = stats["high_contribution_area_ratio"]
    print(f"ERF of {info['model']} written to {out}; area ratio holding 20/50/90% of the mass: "
          + " / ".join(f"{r['raw'][str(t)]['area_ratio']:.3f}" for t in (0.2, 0.5, 0.9)))
    return stats


def run():
    define_flags()
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))


if __name__ == "__main__":
    run()
