"""Hidden-attention maps of SSM layers (Ali et al. 2024) for one image and one query token.

    ./bazelw run //py/eval:attention -- --model=vim_mnist --output=attn/vim --index=3 --token=3,3
    ./bazelw run //py/eval:attention -- --model=vmamba_tiny_s1l8 --checkpoint=w.safetensors \
        --image=cat.jpg --output=attn/vmamba --layers=0,4,9,13

The matrices come from the parameters each mixer hands to py.ops.selective_scan / py.ops.ssd (see
py/eval/attention_maps.py): Vim sums its two directions (the backward one flipped), VMamba its four
cross-scan orders mapped back to the image grid, vmamba_tiny_ssd the same with SSD's scalar-A heads,
PVMamba shows the quadratic form Cm Bm^T of its non-causal state product (over the DSA-aggregated V';
its last, softmax-attention stage is not an SSM and is skipped). Default reduction: mean over channels
of |α|; --channel=K shows one channel's |α|. Written to --output:
  attention.png          the image with the query token's attention row over it, one panel per layer;
  attention_matrix.png   the full T x T matrix of one layer (token order) and of its first scan
                         direction in scan order (causal: lower triangular);
  attention_matrix.npy, attention_rows.npz, attention.json (setup, per-layer stats and a check that the
                         matrix row reproduces the op's output at the query token).
--token=ROW,COL is in the token grid of the first SSM layer (the finest) and is mapped to coarser grids.
"""
import sys

import numpy as np
import torch
from absl import flags

from py.eval import attention_maps as am
from py.common import cli
from py.eval import common

FLAGS = flags.FLAGS
MAX_MATRIX_TOKENS = 400  # default matrix layer: the selected layer with the most tokens up to this


# ------------------------------------------------------------------------------------------------
# Inputs and options


def load_input(info, image=None, index=None, seed=0):
    """(1, C, H, W) float tensor and a description: --image file, MNIST-5k val --index, or N(0, 1)."""
    size, chans = info["img_size"], info["in_chans"]
    if image is not None and index is not None:
        raise common.UsageError("pass at most one of --image and --index")
    if image is None and index is None and (chans, size) == (1, 28):
        index = 0
    if image is not None:
        from PIL import Image
        path = common.caller_path(image)
        if not path.is_file():
            raise common.UsageError(f"--image {path} does not exist")
        try:
            pil = Image.open(path).convert("L" if chans == 1 else "RGB").resize((size, size), Image.BILINEAR)
        except OSError as exc:
            raise common.UsageError(f"--image {path} is not a readable image: {exc}")
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        cfg = common.registered_cfg(info["model"])
        mean, std = (torch.tensor(cfg[k], dtype=torch.float32) for k in ("mean", "std"))
        if mean.numel() != x.shape[0]:
            mean, std = mean.mean().expand(x.shape[0]), std.mean().expand(x.shape[0])
        return ((x - mean[:, None, None]) / std[:, None, None])[None], {"image": str(path)}
    if index is not None:
        from py.training import data
        _, val = data.mnist5k_datasets(0.2, 0, chans, size)
        if not 0 <= index < len(val):
            raise common.UsageError(f"--index must be in [0, {len(val)}) (MNIST-5k val), got {index}")
        x, label = val[index]
        return x[None], {"mnist5k_val_index": index, "label": int(label)}
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, chans, size, size, generator=g), {"image": f"random normal (seed {seed})"}


def parse_token(text):
    """'row,col' -> (row, col); None -> None."""
    if text is None:
        return None
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise common.UsageError(f"--token must be ROW,COL (two integers), got {text!r}")
    return row, col


def select_layers(n, spec):
    """Indices into the n captured SSM layers: --layers (comma list, negatives from the end) or 4 spread."""
    if not spec:
        return sorted(set(np.linspace(0, n - 1, min(4, n)).round().astype(int).tolist()))
    try:
        picks = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise common.UsageError(f"--layers must be comma-separated integers, got {spec!r}")
    bad = [i for i in picks if not -n <= i < n]
    if bad or not picks:
        raise common.UsageError(f"--layers {spec!r}: the model has {n} SSM layers (valid indices {-n}..{n - 1})")
    return [i % n for i in picks]


def query_token(first, token):
    """The query in the first layer's grid: --token, checked, or the grid's centre."""
    H, W = first.grid
    if token is None:
        return H // 2, W // 2
    if not (0 <= token[0] < H and 0 <= token[1] < W):
        raise common.UsageError(f"--token {token[0]},{token[1]} is outside the first SSM layer's {H}x{W} grid")
    return token


def scaled_token(layer, first, token):
    """The query token of `layer`: `token` (in `first`'s grid) moved to the layer's grid by its centre."""
    (H0, W0), (H, W) = first.grid, layer.grid
    row, col = token
    return min(H - 1, int((row + 0.5) * H / H0)), min(W - 1, int((col + 0.5) * W / W0))


# ------------------------------------------------------------------------------------------------
# Per-layer numbers


def row_check(layer, q):
    """Max |reconstruct - op output| over the layer's records at the query token, relative to max |y|."""
    err, ref = 0.0, 0.0
    for p in am.layer_paths(layer):
        pos = p.inv[q:q + 1]
        err = max(err, float((am.reconstruct(p.record, 0, pos) - am.record_output(p.record, 0, pos)).abs().max()))
        ref = max(ref, float(p.record.y.abs().max()))
    return err / max(ref, 1e-300)


def row_stats(grid_row, token):
    """Where the attention mass of one query row sits on the grid."""
    m = grid_row.abs()
    total = float(m.sum()) or 1.0
    H, W = m.shape
    r, c = token
    ys, xs = torch.meshgrid(torch.arange(H, dtype=m.dtype), torch.arange(W, dtype=m.dtype), indexing="ij")
    peak = divmod(int(m.argmax()), W)
    return {"peak": list(peak), "self_fraction": float(m[r, c]) / total,
            "same_row_fraction": float(m[r].sum()) / total, "same_col_fraction": float(m[:, c].sum()) / total,
            "mean_distance": float((m * ((ys - r) ** 2 + (xs - c) ** 2).sqrt()).sum()) / total}


# ------------------------------------------------------------------------------------------------
# Figures


def _display_image(x):
    img = x[0].double()
    img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _log_display(v, decades):
    """|v| on a log scale of `decades` below its maximum, in [0, 1] (0: at or below max·10^-decades)."""
    v = np.abs(np.asarray(v, dtype=np.float64))
    top = v.max()
    if top <= 0:
        return np.zeros_like(v)
    return np.clip(1 + np.log10(np.maximum(v / top, 1e-300)) / decades, 0, 1)


def plot_overlays(path, x, panels, decades, title):
    """panels: (layer index, layer, query token, attention row on the grid (H, W), class-token value or
    None) per selected layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = _display_image(x)
    Hi, Wi = img.shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.9), squeeze=False)
    for ax, (idx, layer, token, grid_row, cls) in zip(axes[0], panels):
        H, W = layer.grid
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(0, Wi, Hi, 0))
        heat = _log_display(grid_row, decades)
        # Opacity grows with the value, so the image stays visible where the attention is weak.
        im = ax.imshow(heat, cmap="jet", alpha=0.15 + 0.6 * heat, vmin=0, vmax=1, extent=(0, Wi, Hi, 0),
                       interpolation="nearest")
        r, c = token
        ax.add_patch(plt.Rectangle((c * Wi / W, r * Hi / H), Wi / W, Hi / H, fill=False, ec="white", lw=1.5))
        sub = f"#{idx} {layer.name}\n{layer.family} {H}x{W}, query ({r},{c})"
        if cls is not None:
            sub += f", cls {float(cls) / float(np.abs(grid_row).max()):.2g}·max"
        ax.set_title(sub, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label=f"|α| (log, {decades:g} decades)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_matrix(path, layer, idx, matrix, scan_matrix, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    mats = [(matrix, "token order (all directions)")]
    if scan_matrix is not None:
        mats.append((scan_matrix, "first direction, scan order"))
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4.4), squeeze=False)
    for ax, (m, label) in zip(axes[0], mats):
        m = np.abs(m)
        top = m.max() if m.max() > 0 else 1.0
        im = ax.imshow(np.where(m > 0, m, np.nan), cmap="viridis", norm=LogNorm(vmin=top * 1e-4, vmax=top),
                       interpolation="nearest")
        ax.set_title(f"{label}", fontsize=8)
        ax.set_xlabel("key token s", fontsize=7)
        ax.set_ylabel("query token t", fontsize=7)
        if layer.cls_pos is not None and label.startswith("token"):
            ax.axhline(layer.cls_pos, color="red", lw=0.5)
            ax.axvline(layer.cls_pos, color="red", lw=0.5)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{title}\n#{idx} {layer.name} ({layer.family}, {layer.grid[0]}x{layer.grid[1]} tokens"
                 + (", class token: red lines)" if layer.cls_pos is not None else ")"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# CLI


def define_flags():
    cli.define_model_flags(FLAGS)
    cli.define_runtime_flags(FLAGS)
    flags.DEFINE_string("output", None, "output directory")
    flags.DEFINE_integer("img_size", None, "input resolution (default: the run's, else the model's registered)")
    flags.DEFINE_integer("in_chans", None, "input channels (default: the run's, else the model's registered)")
    flags.DEFINE_string("image", None, "image file to analyse")
    flags.DEFINE_integer("index", None, "MNIST-5k validation image index (default for 1x28x28 models: 0)")
    flags.DEFINE_string("token", None, "query token ROW,COL in the first SSM layer's grid (default: centre)")
    flags.DEFINE_string("layers", None, "comma-separated SSM layer indices (default: 4 spread through depth)")
    flags.DEFINE_integer("matrix_layer", None, "layer index of the full-matrix figure (default: the selected "
                         f"layer with the most tokens up to {MAX_MATRIX_TOKENS})")
    flags.DEFINE_integer("channel", None, "show one output channel (SSD: head) instead of the mean over channels")
    flags.DEFINE_float("decades", 3.0, "dynamic range of the log-scaled overlays")
    flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "precision of the forward pass")
    flags.DEFINE_integer("seed", 0, "seed of the random weights and the random image")


def main():
    if not FLAGS.output:
        raise common.UsageError("--output=DIR is required")
    if FLAGS.decades <= 0:
        raise common.UsageError(f"--decades must be > 0, got {FLAGS.decades}")
    token = parse_token(FLAGS.token)
    cli.set_threads(FLAGS.threads)
    torch.manual_seed(FLAGS.seed)
    model, info = common.load_model(FLAGS.model, FLAGS.checkpoint, FLAGS.model_kwargs, FLAGS.img_size, FLAGS.in_chans,
                                    FLAGS.weights, FLAGS.trust_pickle)
    x, source = load_input(info, FLAGS.image, FLAGS.index, FLAGS.seed)
    dtype = getattr(torch, FLAGS.dtype)
    model, x = model.to(dtype), x.to(dtype)
    with torch.no_grad(), am.capture(model) as layers:
        model(x)
    layers = [l for l in layers if l.records]
    if not layers:
        raise common.UsageError(f"{info['model']} has no SSM layer whose attention can be materialised")
    picks = select_layers(len(layers), FLAGS.layers)
    first = layers[0]
    token = query_token(first, token)
    if FLAGS.matrix_layer is not None:
        mpick = select_layers(len(layers), str(FLAGS.matrix_layer))[0]
    else:
        fits = [i for i in picks if layers[i].num_tokens <= MAX_MATRIX_TOKENS]
        mpick = max(fits, key=lambda i: (layers[i].num_tokens, i)) if fits else min(
            picks, key=lambda i: layers[i].num_tokens)

    panels, report_layers, rows = [], [], {}
    try:
        for i in picks:
            layer = layers[i]
            t = scaled_token(layer, first, token)
            q = am.token_index(layer, *t)
            row = am.layer_matrix(layer, rows=[q], channel=FLAGS.channel)[0]
            grid_row, cls = am.token_grid(layer, row)
            panels.append((i, layer, t, grid_row.numpy(), None if cls is None else float(cls)))
            rows[f"layer{i}"] = row.numpy()
            report_layers.append(dict(index=i, name=layer.name, family=layer.family, grid=list(layer.grid),
                                      query=list(t), query_sequence_index=int(q),
                                      class_token_value=None if cls is None else float(cls),
                                      row_check_relative_error=row_check(layer, q), **row_stats(grid_row, t)))
        mlayer = layers[mpick]
        matrix = am.layer_matrix(mlayer, channel=FLAGS.channel).numpy()
        p0 = am.layer_paths(mlayer)[0]
        scan = None
        if mlayer.family != "pvmamba":  # one direction in its own (scan) order
            c = p0.channels if FLAGS.channel is None else p0.channels[FLAGS.channel:FLAGS.channel + 1]
            scan = am.record_matrix(p0.record, 0, None, c).abs().mean(0).numpy()
    except ValueError as exc:  # e.g. --channel out of range
        raise common.UsageError(str(exc))

    out = common.caller_path(FLAGS.output)
    out.mkdir(parents=True, exist_ok=True)
    what = "mean |α| over channels" if FLAGS.channel is None else f"|α| of channel {FLAGS.channel}"
    title = (f"hidden attention of {info['model']} ({what})" + (", random weights" if info["random_weights"] else "")
             + f"; {source.get('image', 'MNIST-5k val #%s' % source.get('mnist5k_val_index'))}")
    plot_overlays(out / "attention.png", x, panels, FLAGS.decades, title)
    plot_matrix(out / "attention_matrix.png", mlayer, mpick, matrix, scan, title)
    np.save(out / "attention_matrix.npy", matrix)
    np.savez(out / "attention_rows.npz", **rows)
    report = dict(info, **source, dtype=FLAGS.dtype, channel=FLAGS.channel, token=list(token),
                  num_ssm_layers=len(layers), all_layers=[l.name for l in layers], layers=report_layers,
                  matrix_layer=dict(index=mpick, name=mlayer.name, tokens=mlayer.num_tokens))
    common.write_json(out / "attention.json", report)
    worst = max(l["row_check_relative_error"] for l in report_layers)
    print(f"attention maps of {info['model']} ({len(picks)} of {len(layers)} SSM layers) written to {out}; "
          f"matrix rows reproduce the scan outputs to {worst:.1e} (relative)")
    return report


def run():
    define_flags()
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))


if __name__ == "__main__":
    run()
