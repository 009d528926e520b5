"""ERF: exact receptive fields of known modules, feature maps of every family, stats, the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import py.models as models
from py.eval import common, erf
from py.eval.tests.cli import assert_usage_error, run_tool


def apply(model, x):
    return model(x)


def test_conv_stack_erf_is_exact():
    """Two 3x3 all-ones convs: d(mean_c out[centre])/dx = 4 · (tri ⊗ tri), tri = 1 2 3 2 1, zero elsewhere."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, padding=1, bias=False))
    for conv in net:
        nn.init.ones_(conv.weight)
    raw = erf.compute_erf(net, [torch.randn(3, 1, 11, 11), torch.randn(2, 1, 11, 11)], features=apply)
    tri = np.array([1, 2, 3, 2, 1], dtype=np.float64)
    expected = np.zeros((11, 11))
    expected[3:8, 3:8] = 4 * np.outer(tri, tri)
    np.testing.assert_allclose(raw, expected, rtol=1e-6, atol=0)


def test_strided_vmamba_stem_erf_stays_inside_its_receptive_field():
    """VMamba's stem up to its second conv (conv3x3/s2/p1, LN over channels, GELU, conv3x3/s2/p1):
    output pixel (4, 4) of a 32x32 input sees input rows/cols 13..19 exactly (7x7), whatever the
    weights. (The stem's final LayerNorm is left out: the channel mean of its output is constant.)"""
    torch.manual_seed(0)
    model = models.create_model("vmamba_tiny_s1l8", img_size=32, dims=16, depths=(1, 1, 1, 1)).eval()
    stem = model.patch_embed[:6]
    assert isinstance(stem[-1], nn.Conv2d)
    raw = erf.compute_erf(stem, [torch.randn(4, 3, 32, 32)], features=apply)
    inside = np.zeros_like(raw, dtype=bool)
    inside[13:20, 13:20] = True
    assert np.all(raw[~inside] == 0)
    assert np.all(raw[inside] > 0)


SMALL = {
    "vim_mnist": (dict(img_size=28, num_classes=10, depth=2, embed_dim=32), (1, 28, 28), (32, 6, 6)),
    "dyvm_vim_tiny": (dict(img_size=32, patch_size=8, depth=4, embed_dim=32, pruning_loc=(1, 2, 3)),
                      (3, 32, 32), (32, 4, 4)),
    "vmamba_tiny_s1l8": (dict(img_size=64, dims=16, depths=(1, 1, 1, 1)), (3, 64, 64), (128, 2, 2)),
    "vmamba_tiny_ssd": (dict(img_size=64, dims=32, depths=(1, 1, 1, 1), ssm_d_state=8), (3, 64, 64), (256, 2, 2)),
    "pvmamba_tiny": (dict(img_size=64, embed_dim=16, depths=(1, 1, 2, 1), d_state=8), (3, 64, 64), (128, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_family_gives_a_2d_map_and_a_global_erf(name):
    kwargs, shape, fshape = SMALL[name]
    torch.manual_seed(0)
    model = models.create_model(name, **kwargs).eval()
    x = torch.randn(2, *shape)
    f = erf.feature_map(model, x)
    assert tuple(f.shape) == (2, *fshape)
    # The last tap of the contract, before any final norm; Vim/DyVM: patch tokens in row-major grid order.
    tokens = model.forward_intermediates(x, indices=1, output_fmt="NLC" if name.startswith(("vim", "dyvm"))
                                         else "NCHW", intermediates_only=True)[0]
    if tokens.dim() == 3:
        c = model.cls_pos
        assert torch.allclose(f[:, :, 0, 0], tokens[:, 0]) and torch.allclose(f[:, :, -1, -1], tokens[:, -1])
        row, col = divmod(c, model.grid_size[1])
        assert torch.allclose(f[:, :, row, col], tokens[:, c])
    else:
        assert torch.equal(f, tokens)
    raw = erf.compute_erf(model, [x])
    assert raw.shape == shape[1:] and np.isfinite(raw).all() and raw.min() >= 0
    assert (raw > 0).mean() > 0.9  # every family mixes globally (random weights)


def test_stats_of_known_maps():
    point = np.zeros((9, 9))
    point[4, 4] = 2.0
    s = erf.summarize(point)
    assert s["peak"] == [4, 4] and s["center_of_mass"] == [4.0, 4.0]
    for t, r in s["high_contribution_area_ratio"]["raw"].items():
        assert r == {"side": 1, "area_ratio": 1 / 81}
    assert s["pixel_fraction_of_mass"]["0.99"] == 1 / 81
    flat = np.ones((10, 10))
    assert erf.pixel_fraction(flat, 0.5) == 0.5
    assert erf.square_ratio(flat, 0.2) == (5, 0.25)   # rows/cols 3..7 hold 25 of 100
    assert erf.square_ratio(flat, 0.99) == (10, 1.0)  # clipped at the border
    scaled = erf.log_scale(np.array([[0.0, 1e-3, 1.0]]), decades=3)
    assert scaled[0, 0] == 0 and scaled[0, 2] == 1 and 0.05 < scaled[0, 1] < 0.15


# ------------------------------------------------------------------------------------------------
# The CLI


def cli(tmp_path, *args):
    return run_tool("py.eval.erf", tmp_path, *args)


def check_outputs(out, size):
    png = out / "erf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.load()
        assert im.width > 100 and im.height > 100
    raw = np.load(out / "erf.npy")
    assert raw.shape == (size, size) and raw.max() > 0
    report = json.loads((out / "erf.json").read_text())
    assert report["shape"] == [size, size] and abs(report["max"] - raw.max()) < 1e-12
    return report


def test_cli_vim_mnist_on_mnist_images(tmp_path):
    res = cli(tmp_path, "--model=vim_mnist", '--model_kwargs={"depth": 2, "embed_dim": 32}', "--num-images=4",
              "--batch_size=2", "--output=out")
    assert res.returncode == 0, res.stderr[-3000:]
    report = check_outputs(tmp_path / "out", 28)
    assert report["inputs"] == "mnist5k val" and report["num_images"] == 4 and report["random_weights"]
    ratios = report["high_contribution_area_ratio"]["raw"]
    assert 0 < ratios["0.2"]["area_ratio"] <= ratios["0.5"]["area_ratio"] <= ratios["0.9"]["area_ratio"] <= 1


def test_cli_vmamba_on_random_images(tmp_path):
    kw = {k: v for k, v in SMALL["vmamba_tiny_s1l8"][0].items() if k != "img_size"}
    res = cli(tmp_path, "--model=vmamba_tiny_s1l8", f"--model_kwargs={json.dumps(kw)}", "--img_size=64",
              "--num_images=3", "--output=out")
    assert res.returncode == 0, res.stderr[-3000:]
    assert check_outputs(tmp_path / "out", 64)["inputs"] == "random normal"


@pytest.mark.parametrize("args, message", [
    (["--model=vim_mnist", "--output=o", "--num_images=0"], "--num_images must be > 0"),
    (["--model=vim_mnist", "--output=o", "--inputs=webcam"], "inputs"),
])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, args, message):
    assert_usage_error(cli(tmp_path, *args), message, tmp_path / "o")


def test_bad_settings_are_usage_errors():
    """What the CLI reports with exit code 2 (via py.common.cli.run), checked in-process."""
    from py.eval.common import UsageError
    with pytest.raises(UsageError, match="JSON object"):
        common.load_model("vim_mnist", model_kwargs="[1]")
    with pytest.raises(UsageError, match="unknown --model"):
        common.load_model("nope")
    with pytest.raises(UsageError, match="pass --model"):
        common.load_model(None)
    with pytest.raises(UsageError, match="cannot build"):
        common.load_model("vim_mnist", model_kwargs='{"no_such_option": 1}')
    info = dict(img_size=28, in_chans=1)
    with pytest.raises(UsageError, match="--data_path"):
        erf.image_batches(info, "folder", 4, 2)
    with pytest.raises(UsageError, match="has 1000"):
        erf.image_batches(info, "mnist", 5000, 2)
