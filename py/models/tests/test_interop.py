"""Checkpoint interop (py.models.interop): official state dicts <-> ours.

No official checkpoint files are available offline, so the official state dicts are synthesised here
from the names and shapes in the specs (/work/shared/specs/{vmamba_kernels,dyvm,pvmamba}.md) and the
official module definitions they describe. Sequential indices and attribute names the specs do not
spell out are those of the official sources: VMamba `_make_patch_embed_v2` / `_make_downsample_v3`
(Conv, Identity|Permute, Norm, ...), DyVM `PredictorLG` (in_conv = LN, Linear, GELU; out_conv =
Linear, GELU, Linear, GELU, Linear, LogSoftmax), PVMamba `ConvLayer` (conv, norm, act), `mamba_op`,
`spatial_adaptive_operator.sampling_offsets`, `Attention.to_qkv/to_out`. These builders never look at
our models or at interop's tables.
"""
import math
import re

import pytest
import torch

import py.models as models
from py.models import interop, weights


# ----------------------------------------------------------------------------------------------
# Official key -> shape lists, from the specs
# ----------------------------------------------------------------------------------------------
def _ln(sd, name, c):
    sd[name + ".weight"], sd[name + ".bias"] = (c,), (c,)


def _linear(sd, name, out, inp, bias=True):
    sd[name + ".weight"] = (out, inp)
    if bias:
        sd[name + ".bias"] = (out,)


def _bn(sd, name, c):
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{name}.{k}"] = (c,)
    sd[name + ".num_batches_tracked"] = ()


def official_vmamba(C, depths, ssm_ratio=1.0, d_state=1, mlp_ratio=4, num_classes=10, m0=False):
    """VSSM v2 (vmamba_kernels.md §1.1-1.3, §1.8): ln2d, v3 downsample, v2 stem, forward v05_noz / m0_noz."""
    sd, dims, K = {}, [C * 2 ** i for i in range(len(depths))], 4
    sd["patch_embed.0.weight"], sd["patch_embed.0.bias"] = (C // 2, 3, 3, 3), (C // 2,)
    _ln(sd, "patch_embed.2", C // 2)
    sd["patch_embed.5.weight"], sd["patch_embed.5.bias"] = (C, C // 2, 3, 3), (C,)
    _ln(sd, "patch_embed.7", C)
    for i, depth in enumerate(depths):
        d = dims[i]
        di, R = int(ssm_ratio * d), math.ceil(d / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            _ln(sd, p + "norm", d)
            sd[p + "op.in_proj.weight"] = (di, d)                 # _noz: in_proj C -> Di, no bias
            sd[p + "op.conv2d.weight"] = (di, 1, 3, 3)            # depthwise, ssm_conv_bias=False
            sd[p + "op.x_proj_weight"] = (K, R + 2 * d_state, di)
            if m0:   # R = heads per direction, P = Di / R
                sd[p + "op.dt_projs_bias"], sd[p + "op.A_logs"] = (K, R), (K, R)
                sd[p + "op.Ds"] = (K, R, di // R)
            else:
                sd[p + "op.dt_projs_weight"], sd[p + "op.dt_projs_bias"] = (K, di, R), (K, di)
                sd[p + "op.A_logs"], sd[p + "op.Ds"] = (K * di, d_state), (K * di,)
            _ln(sd, p + "op.out_norm", di)
            sd[p + "op.out_proj.weight"] = (d, di)
            _ln(sd, p + "norm2", d)
            _linear(sd, p + "mlp.fc1", int(d * mlp_ratio), d)
            _linear(sd, p + "mlp.fc2", d, int(d * mlp_ratio))
        if i < len(depths) - 1:
            sd[f"layers.{i}.downsample.1.weight"] = (dims[i + 1], d, 3, 3)
            sd[f"layers.{i}.downsample.1.bias"] = (dims[i + 1],)
            _ln(sd, f"layers.{i}.downsample.3", dims[i + 1])
    _ln(sd, "classifier.norm", dims[-1])
    _linear(sd, "classifier.head", num_classes, dims[-1])
    return sd


def official_vim(d, depth, num_patches, patch=16, in_chans=3, d_state=16, expand=2, d_conv=4, num_classes=10):
    """VisionMamba midclstok (dyvm.md §1.1-1.4, §2.1): bimamba v2 mixer per layer."""
    sd, di, R = {}, expand * d, math.ceil(d / 16)
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = (d, in_chans, patch, patch), (d,)
    sd["cls_token"], sd["pos_embed"] = (1, 1, d), (1, num_patches + 1, d)
    for i in range(depth):
        p = f"layers.{i}."
        sd[p + "norm.weight"] = (d,)                               # RMSNorm: weight only
        sd[p + "mixer.in_proj.weight"] = (2 * di, d)
        for sfx, a_log, dd in (("", "A_log", "D"), ("_b", "A_b_log", "D_b")):
            sd[p + f"mixer.conv1d{sfx}.weight"], sd[p + f"mixer.conv1d{sfx}.bias"] = (di, 1, d_conv), (di,)
            sd[p + f"mixer.x_proj{sfx}.weight"] = (R + 2 * d_state, di)
            _linear(sd, p + f"mixer.dt_proj{sfx}", di, R)
            sd[p + "mixer." + a_log], sd[p + "mixer." + dd] = (di, d_state), (di,)
        sd[p + "mixer.out_proj.weight"] = (d, di)
    sd["norm_f.weight"] = (d,)
    _linear(sd, "head", num_classes, d)
    return sd


def official_dyvm(d, depth, num_patches, num_stages, **kw):
    """DyVM (dyvm.md §3.2, §4.1): Vim + block_head per layer + one PredictorLG per pruning stage."""
    sd = official_vim(d, depth, num_patches, **kw)
    for i in range(depth):
        _linear(sd, f"layers.{i}.mixer.block_head", 2, 2 * 2 * d)  # Linear(2·di, 2), di = 2d
    for s in range(num_stages):
        p = f"score_predictors.{s}."
        _ln(sd, p + "in_conv.0", d)
        _linear(sd, p + "in_conv.1", d, d)
        _linear(sd, p + "out_conv.0", d // 2, d)
        _linear(sd, p + "out_conv.2", d // 4, d // 2)
        _linear(sd, p + "out_conv.4", 2, d // 4)
    return sd


def official_pvmamba(E, depths, heads, flags, d_state=64, num_classes=10, legacy_a_log=False):
    """PVMAMBA (pvmamba.md §1.3-1.7, §3): stem, LoDSA/LoDSA/SaDSA/attention stages, PatchMerging."""
    sd, h2 = {}, E // 2
    stem = [("conv1", h2, 3, 3), ("conv2.0", h2, h2, 3), ("conv2.1", h2, h2, 3), ("conv3.0", 4 * E, h2, 3),
            ("conv3.1", E, 4 * E, 1)]
    for name, out, inp, k in stem:
        sd[f"patch_embed.{name}.conv.weight"] = (out, inp, k, k)   # no bias, BN after each
        _bn(sd, f"patch_embed.{name}.norm", out)
    mixers = ("LoDSA", "LoDSA", "SaDSA", "attention")
    for i, depth in enumerate(depths):
        d, h = E * 2 ** i, heads[i]
        di = 2 * d
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            for cpe in ("cpe1", "cpe2"):
                sd[p + cpe + ".weight"], sd[p + cpe + ".bias"] = (d, 1, 3, 3), (d,)
            _ln(sd, p + "norm1", d)
            _ln(sd, p + "norm2", d)
            _linear(sd, p + "mlp.fc1", 4 * d, d)
            _linear(sd, p + "mlp.fc2", d, 4 * d)
            t = p + "token_mixer."
            if mixers[i] == "attention":
                sd[t + "to_qkv.weight"] = (3 * d, d)
                _linear(sd, t + "to_out", d, d)
                continue
            sd[t + "in_proj.weight"] = (2 * di + 2 * d_state + h, d)      # z | xBC | dt, no bias
            sd[t + "conv2d.weight"], sd[t + "conv2d.bias"] = (di + 2 * d_state, 1, 3, 3), (di + 2 * d_state,)
            sd[t + "dt_bias"], sd[t + "D"] = (h,), (h,)
            sd[t + "A_log"] = (h,) if legacy_a_log else (di,)
            _ln(sd, t + "norm", di)
            sd[t + "out_proj.weight"] = (d, di)
            if mixers[i] == "SaDSA" and flags[j] != 2:
                _linear(sd, t + "sa_op.sampling_offsets", 8, di)      # 4 points x (x, y)
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample.conv."
            sd[p + "0.conv.weight"], sd[p + "0.conv.bias"] = (8 * d, d, 1, 1), (8 * d,)
            sd[p + "1.conv.weight"], sd[p + "1.conv.bias"] = (8 * d, 1, 3, 3), (8 * d,)
            sd[p + "2.conv.weight"], sd[p + "2.conv.bias"] = (2 * d, 8 * d, 1, 1), (2 * d,)
            _bn(sd, p + "2.norm", 2 * d)
    _ln(sd, "norm", 8 * E)
    _linear(sd, "head", num_classes, 8 * E)
    return sd


# Small configs: (our model name, create_model kwargs, official key/shape list, official -> our key).
def _dyvm_key(k):
    return re.sub(r"^score_predictors\.", "score_predictor.", k)


def _cases():
    return {
        "vmamba": ("vmamba_tiny_s1l8", dict(img_size=32, dims=16, depths=(1, 1, 2, 1)),
                   official_vmamba(16, (1, 1, 2, 1)), str),
        "vmamba_m0": ("vmamba_tiny_ssd", dict(img_size=32, dims=32, depths=(1, 1, 1, 1), ssm_d_state=4),
                      official_vmamba(32, (1, 1, 1, 1), d_state=4, m0=True), str),
        "vim": ("vim_tiny", dict(img_size=32, embed_dim=32, depth=3, patch_size=8),
                official_vim(32, 3, 16, patch=8), str),
        "dyvm": ("dyvm_vim_tiny", dict(img_size=32, embed_dim=32, depth=4, patch_size=8, pruning_loc=(1, 3)),
                 official_dyvm(32, 4, 16, 2, patch=8), _dyvm_key),
        "pvmamba": ("pvmamba_tiny", dict(img_size=64, embed_dim=16, depths=(1, 2, 4, 1), num_heads=(2, 2, 4, 4),
                                         d_state=8),
                    official_pvmamba(16, (1, 2, 4, 1), (2, 2, 4, 4), (0, 2, 2, 1), d_state=8), str),
    }


CASES = sorted(_cases())


def _fill(shapes, seed=0):
    """Distinct values everywhere: tensor t holds t_index * 1e4 + arange (and a random sign)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(100 + i)
            continue
        n = math.prod(shape)
        sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
        out[k] = ((torch.arange(n, dtype=torch.float64) + i * 1e4) * sign).float().reshape(shape)
    return out


def _model(case, seed=1):
    name, kwargs, _, _ = _cases()[case]
    kwargs = dict(kwargs)
    img = kwargs.pop("img_size")
    torch.manual_seed(seed)
    return models.create_model(name, num_classes=10, img_size=img, **kwargs)


# ----------------------------------------------------------------------------------------------
# (a) every official tensor lands in the right place
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_official_tensors_land_in_place(case):
    _, _, shapes, key_map = _cases()[case]
    official = _fill(shapes)
    model = _model(case)
    interop.load_official(model, official)              # strict: every model key is filled
    ours = model.state_dict()
    assert len(ours) == len(official)
    for k, v in official.items():
        assert torch.equal(ours[key_map(k)], v), k


def test_dyvm_official_names_differ_only_in_score_predictors():
    _, _, shapes, _ = _cases()["dyvm"]
    ours = _model("dyvm").state_dict()
    assert {k for k in shapes if k not in ours} == {k for k in shapes if k.startswith("score_predictors.")}


def test_vmamba_conv_shaped_linear_weights_are_flattened():
    _, _, shapes, _ = _cases()["vmamba"]
    official = _fill(shapes)
    key = "layers.2.blocks.1.op.in_proj.weight"
    official[key] = official[key][:, :, None, None]     # Linear2d accepts (out, in, 1, 1)
    model = interop.load_official(_model("vmamba"), official)
    assert torch.equal(model.state_dict()[key], official[key].flatten(1))


def test_pvmamba_legacy_per_head_a_log_is_repeated_per_channel():
    heads, E = (2, 2, 4, 4), 16
    official = _fill(official_pvmamba(E, (1, 2, 4, 1), heads, (0, 2, 2, 1), d_state=8, legacy_a_log=True))
    model = interop.load_official(_model("pvmamba"), official)
    ours = model.state_dict()
    for key, v in official.items():
        if key.endswith("token_mixer.A_log"):
            stage = int(key.split(".")[1])
            P = 2 * E * 2 ** stage // heads[stage]
            assert ours[key].shape == (heads[stage] * P,)
            for h in range(heads[stage]):
                assert torch.equal(ours[key][h * P:(h + 1) * P], v[h].expand(P)), key


# ----------------------------------------------------------------------------------------------
# (b) round trips
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_round_trip_ours_official_ours(case):
    src, dst = _model(case, seed=1), _model(case, seed=2)
    official = interop.to_official(src)
    _, _, shapes, _ = _cases()[case]
    assert {k: tuple(v.shape) for k, v in official.items()} == shapes   # official names and shapes
    interop.load_official(dst, official)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


@pytest.mark.parametrize("case", CASES)
def test_round_trip_official_ours_official(case):
    _, _, shapes, _ = _cases()[case]
    official = _fill(shapes)
    back = interop.to_official(interop.to_ours(_model(case), official), interop.family_of(_model(case)))
    assert list(back) == list(official)
    assert all(torch.equal(back[k], official[k]) for k in official)


# ----------------------------------------------------------------------------------------------
# (c) clear errors
# ----------------------------------------------------------------------------------------------
def test_wrong_key_is_named():
    _, _, shapes, _ = _cases()["vim"]
    official = _fill(shapes)
    official["layers.1.mixer.A_blog"] = official.pop("layers.1.mixer.A_b_log")
    with pytest.raises(interop.CheckpointMismatch) as err:
        interop.load_official(_model("vim"), official)
    msg = str(err.value)
    assert "missing (in the model, not in the checkpoint): layers.1.mixer.A_b_log" in msg
    assert "unexpected (in the checkpoint, not in the model): layers.1.mixer.A_blog" in msg
    assert err.value.missing == ["layers.1.mixer.A_b_log"] and err.value.unexpected == ["layers.1.mixer.A_blog"]


def test_wrong_shape_is_named_with_both_shapes():
    _, _, shapes, _ = _cases()["vmamba"]
    official = _fill(shapes)
    official["layers.0.blocks.0.op.A_logs"] = torch.zeros(64, 2)
    with pytest.raises(interop.CheckpointMismatch) as err:
        interop.load_official(_model("vmamba"), official)
    assert "shape mismatch: layers.0.blocks.0.op.A_logs: expected (64, 1), got (64, 2)" in str(err.value)


def test_pvmamba_head_count_mismatch_gives_a_hint():
    official = _fill(official_pvmamba(16, (1, 2, 4, 1), (2, 4, 4, 4), (0, 2, 2, 1), d_state=8))
    with pytest.raises(interop.CheckpointMismatch) as err:
        interop.load_official(_model("pvmamba"), official)
    msg = str(err.value)
    assert "layers.1.blocks.0.token_mixer.D: expected (2,), got (4,)" in msg
    assert "num_heads" in msg


def test_plain_vim_checkpoint_into_dyvm_points_to_load_pretrained_vim():
    official = _fill(official_vim(32, 4, 16, patch=8))
    with pytest.raises(interop.CheckpointMismatch) as err:
        interop.load_official(_model("dyvm"), official)
    assert "score_predictor.0.in_conv.0.weight" in str(err.value)
    assert "load_pretrained_vim" in str(err.value)


# ----------------------------------------------------------------------------------------------
# Files: wrappers, DDP prefixes, safetensors, the registry's loader
# ----------------------------------------------------------------------------------------------
def test_weights_read_unwraps_model_and_ema_and_strips_module_prefix(tmp_path):
    _, _, shapes, _ = _cases()["dyvm"]
    raw, ema = _fill(shapes, seed=0), _fill(shapes, seed=1)
    path = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in raw.items()},
                "model_ema": {"module." + k: v for k, v in ema.items()}, "epoch": 29}, path)
    ckpt = weights.read(path)
    for label, want in (("model", raw), ("ema", ema)):
        got_label, state = ckpt.select(label)
        assert got_label == label
        assert list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)
    with pytest.raises(weights.WeightsError, match="weights must be one of"):
        ckpt.select("state_dict")


def test_registry_load_checkpoint_converts_official_files(tmp_path):
    _, _, shapes, key_map = _cases()["dyvm"]
    official = _fill(shapes)
    path = tmp_path / "dyvm_official.pth"
    torch.save({"model": {"module." + k: v for k, v in official.items()}}, path)
    name, kwargs, _, _ = _cases()["dyvm"]
    model = models.create_model(name, pretrained=str(path), num_classes=10, **kwargs)
    ours = model.state_dict()
    assert all(torch.equal(ours[key_map(k)], v) for k, v in official.items())


def test_safetensors_and_torch_files_round_trip(tmp_path):
    model = _model("pvmamba")
    ours = model.state_dict()
    for name, wrap in (("w.safetensors", None), ("w.pth", "model")):
        path = interop.save_state_dict(interop.to_official(model), tmp_path / name, wrap_key=wrap)
        back = _model("pvmamba", seed=5)
        interop.load_official(back, weights.read(path).select("model")[1])
        assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.items())


# ----------------------------------------------------------------------------------------------
# Exact sizes (state dict level only: no forward pass)
# ----------------------------------------------------------------------------------------------
FULL = {
    "vmamba_tiny_s1l8": lambda: official_vmamba(96, (2, 2, 8, 2), num_classes=1000),
    "vmamba_small_s2l15": lambda: official_vmamba(96, (2, 2, 15, 2), ssm_ratio=2.0, num_classes=1000),
    "vmamba_tiny_ssd": lambda: official_vmamba(96, (2, 2, 4, 2), d_state=64, m0=True, num_classes=1000),
    "vim_small": lambda: official_vim(384, 24, 196, num_classes=1000),
    "dyvm_vim_tiny": lambda: official_dyvm(192, 24, 196, 3, num_classes=1000),
    "pvmamba_tiny": lambda: official_pvmamba(64, (2, 4, 8, 4), (2, 4, 8, 16), (0, 2, 2, 1, 2, 2, 1, 2),
                                             num_classes=1000),
    "pvmamba_small": lambda: official_pvmamba(64, (3, 4, 21, 5), (2, 4, 8, 16),
                                              (0, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2),
                                              num_classes=1000),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_released_configs_match_official_names_and_shapes(name):
    """Only the key renames of the tables separate the official and our full-size state dicts."""
    shapes = FULL[name]()
    model = models.create_model(name)
    key_map = _dyvm_key if name.startswith("dyvm") else str
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {key_map(k): s for k, s in shapes.items()} == ours
    assert {k: tuple(v.shape) for k, v in interop.to_official(model).items()} == shapes
