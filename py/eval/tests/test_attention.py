"""Hidden attention: the materialised matrices reproduce the ops' outputs; the CLI writes its files."""
import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import py.models as models
from py.eval import attention_maps as am
from py.eval.tests.cli import assert_usage_error, run_tool
from py.ops.cross_scan import cross_merge_reference

SS = importlib.import_module("py.ops.selective_scan")  # py.ops exports functions of the same names
SSD = importlib.import_module("py.ops.ssd")
F64 = torch.float64
TOL = 1e-11

# Small members of every family (float64, a few seconds each on two cores).
SMALL = {
    "vim": ("vim_mnist", dict(img_size=28, num_classes=10, depth=2, embed_dim=32), (1, 28, 28)),
    "dyvm": ("dyvm_vim_tiny", dict(img_size=32, patch_size=8, depth=4, embed_dim=32, keep_ratio=1.0,
                                   pruning_loc=(1, 2, 3)), (3, 32, 32)),
    "vmamba": ("vmamba_tiny_s1l8", dict(img_size=32, dims=16, depths=(1, 1, 1, 1)), (3, 32, 32)),
    "vmamba_ssd": ("vmamba_tiny_ssd", dict(img_size=32, dims=32, depths=(1, 1, 1, 1), ssm_d_state=8), (3, 32, 32)),
    "pvmamba": ("pvmamba_tiny", dict(img_size=32, embed_dim=16, depths=(1, 1, 2, 1), d_state=8), (3, 32, 32)),
}


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


# ------------------------------------------------------------------------------------------------
# The matrices against the ops


@pytest.mark.parametrize("groups", [None, 1, 3])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_selective_scan_matrix_reproduces_the_op(groups, backend):
    g = torch.Generator().manual_seed(groups or 0)
    b, dim, L, N = 2, 6, 11, 4
    u, delta = rand(g, b, dim, L), rand(g, b, dim, L)
    A = -torch.rand(dim, N, generator=g, dtype=F64) * 3
    shape = (b, N, L) if groups is None else (b, groups, N, L)
    B, C = rand(g, *shape), rand(g, *shape)
    D, z, bias = rand(g, dim), rand(g, b, dim, L), rand(g, dim)
    y = SS.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)
    rec = am.Record("selective_scan", dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias,
                                           delta_softplus=True), y)
    for i in range(b):
        assert torch.allclose(am.reconstruct(rec, i), y[i], rtol=0, atol=TOL)
    # Without D and z the matrix alone is the map u -> y, channel by channel.
    y0 = SS.selective_scan(u, delta, A, B, C, delta_bias=bias, delta_softplus=True, backend=backend)
    alpha = am.record_matrix(rec, 1)
    for d in range(dim):
        assert torch.allclose(alpha[d] @ u[1, d], y0[1, d], rtol=0, atol=TOL)


def test_selective_scan_matrix_is_causal_and_rows_are_slices():
    g = torch.Generator().manual_seed(1)
    dim, L, N = 3, 9, 2
    args = (rand(g, dim, L), -torch.rand(dim, N, generator=g, dtype=F64), rand(g, N, L), rand(g, N, L))
    full = am.selective_scan_matrix(*args, delta_softplus=True)
    assert full.shape == (dim, L, L)
    assert torch.all(full.triu(1) == 0) and torch.all(full.diagonal(dim1=1, dim2=2) != 0)
    part = am.selective_scan_matrix(*args, delta_softplus=True, rows=[7, 2], channels=[2, 0])
    assert torch.equal(part, full[[2, 0]][:, [7, 2]])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d_shape", ["h", "hp"])
def test_ssd_matrix_reproduces_the_op(causal, d_shape):
    g = torch.Generator().manual_seed(7)
    b, L, h, p, groups, n = 2, 13, 4, 3, 2, 5
    x, dt = rand(g, b, L, h, p), rand(g, b, L, h)
    A = -torch.rand(h, generator=g, dtype=F64) * 2
    B, C = rand(g, b, L, groups, n), rand(g, b, L, groups, n)
    D = rand(g, h) if d_shape == "h" else rand(g, h, p)
    z, bias = rand(g, b, L, h, p), rand(g, h)
    for backend in ("cpu", "reference"):
        y = SSD.ssd(x, dt, A, B, C, 4, D=D, z=z, dt_bias=bias, dt_softplus=True, causal=causal, backend=backend)
        rec = am.Record("ssd", dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=bias, dt_softplus=True,
                                    causal=causal), y)
        for i in range(b):
            assert torch.allclose(am.reconstruct(rec, i), y[i], rtol=0, atol=TOL)
    M = am.record_matrix(rec, 0)
    assert M.shape == (h, L, L)
    upper = M[:, torch.ones(L, L, dtype=torch.bool).triu(1)]
    assert torch.all(upper == 0) if causal else torch.all(upper != 0)


# ------------------------------------------------------------------------------------------------
# Capture inside real models


def run_captured(family, seed=0):
    name, kwargs, shape = SMALL[family]
    torch.manual_seed(seed)
    model = models.create_model(name, **kwargs).eval().double()
    x = torch.randn(1, *shape, dtype=F64)
    ops_before = {k: v for k, v in vars(SS).items()}, {k: v for k, v in vars(SSD).items()}
    attrs_before = [dict(vars(m)) for m in model.modules()]
    with torch.no_grad(), am.capture(model) as layers:
        # Nothing is patched while capturing: the op modules and every model module are untouched.
        assert ({k: v for k, v in vars(SS).items()}, {k: v for k, v in vars(SSD).items()}) == ops_before
        assert [set(vars(m)) for m in model.modules()] == [set(a) for a in attrs_before]
        model(x)
    return model, layers


@pytest.mark.parametrize("family", sorted(SMALL))
def test_capture_records_every_ssm_layer_and_reconstructs_it(family):
    model, layers = run_captured(family)
    expected = {"vim": 2, "dyvm": 4, "vmamba": 4, "vmamba_ssd": 4, "pvmamba": 4}[family]
    assert len(layers) == expected
    for layer in layers:
        for rec in layer.records:
            assert torch.allclose(am.reconstruct(rec), am.record_output(rec), rtol=0, atol=1e-10)
        full = am.layer_matrix(layer)
        assert full.shape == (layer.num_tokens, layer.num_tokens) and torch.isfinite(full).all()
        row = am.layer_matrix(layer, rows=[layer.num_tokens // 2])
        assert torch.allclose(row[0], full[layer.num_tokens // 2], rtol=1e-12, atol=0)
    # The hooks are gone afterwards.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_vim_directions_sum_to_the_mixer_output():
    """Σ over paths of the token-order reconstruction = the (y_f + flip(y_b)) / 2 fed to out_proj."""
    name, kwargs, shape = SMALL["vim"]
    model = models.create_model(name, **kwargs).eval().double()
    seen = []
    hook = model.layers[1].mixer.out_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]))
    with torch.no_grad(), am.capture(model) as layers:
        model(torch.randn(1, *shape, dtype=F64))
    hook.remove()
    layer = layers[1]
    paths = am.layer_paths(layer)
    assert [p.record.direction for p in paths] == ["forward", "backward"]
    combined = sum(p.weight * am.reconstruct(p.record, 0, p.inv) for p in paths)  # (di, T) in token order
    assert torch.allclose(combined.t(), seen[0], rtol=0, atol=1e-10)
    assert layer.cls_pos == model.cls_pos and layer.grid == model.grid_size


@pytest.mark.parametrize("family", ["vmamba", "vmamba_ssd"])
def test_vmamba_cross_scan_directions_map_back_to_the_image(family):
    """Per output channel, the summed image-space matrix applied to the pre-scan map (+ Σ D) gives the
    cross-merged scan output, i.e. the four orders are undone correctly."""
    _, layers = run_captured(family, seed=3)
    layer = layers[0]
    rec = layer.records[0]
    H, W = layer.grid
    m = layer.module
    d_inner = m.d_inner
    if family == "vmamba":
        merged = cross_merge_reference(rec.y[0].view(1, 4, d_inner, H, W))[0]
        x_img = rec.args["u"][0][:d_inner]                       # direction 0 is row-major
        D = rec.args["D"].view(4, d_inner).sum(0)
        head_of = torch.arange(d_inner)
    else:
        heads, P = m.dt_rank, m.headdim
        ys = rec.y[0].reshape(H * W, 4, d_inner).permute(1, 2, 0).reshape(1, 4, d_inner, H, W)
        merged = cross_merge_reference(ys)[0]
        x_img = rec.args["x"][0].reshape(H * W, 4, d_inner)[:, 0].t()
        D = rec.args["D"].view(4, d_inner).sum(0)
        head_of = torch.arange(d_inner) // P
    for d in range(0, d_inner, 3):
        M = am.layer_matrix(layer, channel=int(head_of[d]))
        assert torch.allclose(M @ x_img[d] + D[d] * x_img[d], merged[d], rtol=0, atol=1e-10)
    # The default reduction is the mean over output channels of |α|.
    n_out = d_inner if family == "vmamba" else m.dt_rank
    mean_abs = sum(am.layer_matrix(layer, channel=c).abs() for c in range(n_out)) / n_out
    assert torch.allclose(am.layer_matrix(layer), mean_abs, rtol=1e-12, atol=0)


def test_cross_scan_inverse_matches_the_op_orders():
    H, W = 3, 5
    inv = am.cross_scan_inverse(H, W)
    p = torch.arange(H * W)
    h, w = p // W, p % W
    assert torch.equal(inv[0], p) and torch.equal(inv[1], w * H + h)
    assert torch.equal(inv[2], H * W - 1 - p) and torch.equal(inv[3], H * W - 1 - (w * H + h))


def test_token_helpers_skip_the_class_token():
    _, layers = run_captured("vim")
    layer = layers[0]
    T = layer.num_tokens
    values = torch.arange(T, dtype=F64)
    grid, cls = am.token_grid(layer, values)
    assert cls == layer.cls_pos and grid.shape == layer.grid
    for r, c in [(0, 0), (3, 3), (5, 5)]:  # vim_mnist: a 6x6 grid
        assert grid[r, c] == am.token_index(layer, r, c)
    with pytest.raises(ValueError, match="outside"):
        am.token_index(layer, 6, 0)


# ------------------------------------------------------------------------------------------------
# The CLI


def cli(tmp_path, *args):
    return run_tool("py.eval.attention", tmp_path, *args)


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.width > 100 and im.height > 100


@pytest.mark.parametrize("family", ["vim", "pvmamba"])
def test_cli_writes_pngs_and_json(tmp_path, family):
    name, kwargs, shape = SMALL[family]
    kw = {k: v for k, v in kwargs.items() if k not in ("img_size", "num_classes")}
    extra = ["--index=5"] if family == "vim" else ["--layers=0,-1", "--token=1,2"]
    res = cli(tmp_path, f"--model={name}", f"--model_kwargs={json.dumps(kw)}", f"--img_size={shape[-1]}",
              "--output=out", *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    for png in ("attention.png", "attention_matrix.png"):
        assert_png(out / png)
    report = json.loads((out / "attention.json").read_text())
    assert report["model"] == name and report["layers"]
    for layer in report["layers"]:
        assert layer["row_check_relative_error"] < 1e-12
    if family == "vim":
        assert report["mnist5k_val_index"] == 5 and report["layers"][0]["class_token_value"] is not None
        assert len(report["layers"]) == 2  # depth 2: both layers
    else:
        assert [l["index"] for l in report["layers"]] == [0, report["num_ssm_layers"] - 1]
        assert report["layers"][0]["query"] == [1, 2]
    matrix = np.load(out / "attention_matrix.npy")
    assert matrix.shape == (report["matrix_layer"]["tokens"],) * 2


def test_cli_ssd_model_on_an_image_file_one_channel(tmp_path):
    Image.fromarray((np.arange(64 * 48 * 3) % 251).astype("uint8").reshape(64, 48, 3)).save(tmp_path / "in.png")
    name, kwargs, _ = SMALL["vmamba_ssd"]
    kw = {k: v for k, v in kwargs.items() if k != "img_size"}
    res = cli(tmp_path, f"--model={name}", f"--model_kwargs={json.dumps(kw)}", "--img_size=32",
              "--image=in.png", "--output=o", "--channel=1", "--layers=1", "--token=7,0", "--matrix_layer=0")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "attention.json").read_text())
    assert report["channel"] == 1 and report["image"].endswith("in.png")
    assert report["layers"][0]["query"] == [3, 0]  # (7, 0) of the 8x8 grid on layer 1's 4x4 grid
    assert report["matrix_layer"] == {"index": 0, "name": "layers.0.blocks.0.op", "tokens": 64}
    assert_png(tmp_path / "o" / "attention.png")
    assert_png(tmp_path / "o" / "attention_matrix.png")


@pytest.mark.parametrize("args, message", [
    (["--model=vim_mnist", "--output=o", "--decades=0"], "--decades must be > 0"),
    (["--model=vim_mnist", "--output=o", "--bogus=1"], "bogus"),
])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, args, message):
    assert_usage_error(cli(tmp_path, *args), message, tmp_path / "o")


def test_bad_settings_are_usage_errors(tmp_path):
    """What the CLI reports with exit code 2 (via py.common.cli.run), checked in-process."""
    from py.eval import attention
    from py.eval.common import UsageError
    info = dict(model="vim_mnist", img_size=28, in_chans=1)
    with pytest.raises(UsageError, match="does not exist"):
        attention.load_input(info, image=str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="not a readable image"):
        attention.load_input(info, image=str(tmp_path / "bad.png"))
    with pytest.raises(UsageError, match="at most one"):
        attention.load_input(info, image="x.png", index=1)
    with pytest.raises(UsageError, match="--index must be in"):
        attention.load_input(info, index=100000)
    with pytest.raises(UsageError, match="--token"):
        attention.parse_token("1,2,3")
    assert attention.select_layers(24, None) == [0, 8, 15, 23]
    assert attention.select_layers(3, "-1,0") == [2, 0]
    with pytest.raises(UsageError, match="--layers"):
        attention.select_layers(3, "a")
    _, layers = run_captured("vim")
    assert attention.query_token(layers[0], None) == (3, 3)
    with pytest.raises(UsageError, match="outside the first SSM layer's 6x6 grid"):
        attention.query_token(layers[0], (9, 0))
    with pytest.raises(ValueError, match="channel 999 out of range"):
        am.layer_matrix(layers[0], rows=[0], channel=999)
