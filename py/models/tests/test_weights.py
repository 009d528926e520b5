"""The one weights path (py.models.weights): reading, never unpickling, verifying, adapting, loading."""
import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

import py.models as models
from py.models import weights
from py.models.vim import resample_pos_embed

TINY_VIM = dict(embed_dim=32, depth=2)


class Payload:
    """A pickle that creates `marker` when unpickled: what an attacker would plant."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _vim(seed=0, **kwargs):
    torch.manual_seed(seed)
    return models.create_model("vim_mnist", **{**TINY_VIM, **kwargs})


def _tensors(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _step_dir(root, step, model, ema=None, config=None):
    d = root / "checkpoints" / f"step_{step:09d}"
    d.mkdir(parents=True)
    save_file(_tensors(model), str(d / "model.safetensors"))
    if ema is not None:
        save_file(_tensors(ema), str(d / "ema.safetensors"))
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    weights.write_manifest(d, step)
    (root / "checkpoints" / "latest").write_text(d.name + "\n")
    return d


def _same(model, state):
    ours = model.state_dict()
    return set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)


# ----------------------------------------------------------------------------------------------
# Nothing is ever unpickled
# ----------------------------------------------------------------------------------------------
def test_planted_pickle_is_refused_everywhere_in_python(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(marker), "epoch": 3}, evil)
    for call in (lambda: weights.read(evil),
                 lambda: models.create_model("vim_mnist", pretrained=str(evil), **TINY_VIM),
                 lambda: models.load_checkpoint(_vim(), evil),
                 lambda: models.create_model("dyvm_vim_mnist", **TINY_VIM,
                                             pruning_loc=(1,)).load_pretrained_vim(evil)):
        with pytest.raises(weights.WeightsError, match="--trust_pickle"):
            call()
    assert not marker.exists()
    # The explicit per-file opt-in does unpickle (and then finds no state dict in it).
    with pytest.raises(weights.WeightsError):
        weights.read(evil, trust_pickle=True)
    assert marker.exists()


def test_run_dir_with_old_pickled_state_is_read_without_unpickling(tmp_path):
    """A format-1 run (state.pt pickled next to the weights): weights and config.json only."""
    marker = tmp_path / "PWNED"
    model = _vim()
    step = tmp_path / "run" / "checkpoints" / "step_000000010"
    step.mkdir(parents=True)
    save_file(_tensors(model), str(step / "model.safetensors"))
    torch.save({"config": Payload(marker)}, step / "state.pt")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "vim_mnist"}))
    for source in (tmp_path / "run", step, step / "model.safetensors"):
        ckpt = weights.read(source)
        assert ckpt.config == {"model": "vim_mnist"} and ckpt.step == 10
        assert _same(model, ckpt.select()[1])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Reading: formats, wrappers, prefixes, bad files
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_torch_files_unwrap_and_strip_prefixes(tmp_path, wrap, prefix):
    model = _vim()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({wrap: state, "epoch": 1} if wrap else state, tmp_path / "w.pth")
    back = models.create_model("vim_mnist", pretrained=str(tmp_path / "w.pth"), **TINY_VIM)
    assert _same(back, model.state_dict())


def test_model_is_the_default_and_ema_is_a_choice(tmp_path):
    raw, ema = _vim(0), _vim(1)
    torch.save({"model": raw.state_dict(), "model_ema": ema.state_dict()}, tmp_path / "w.pth")
    assert _same(models.load_checkpoint(_vim(2), tmp_path / "w.pth"), raw.state_dict())
    assert _same(models.load_checkpoint(_vim(2), tmp_path / "w.pth", weights="ema"), ema.state_dict())
    save_file(_tensors(raw), str(tmp_path / "w.safetensors"))
    with pytest.raises(weights.WeightsError, match="has no 'ema' weights"):
        models.load_checkpoint(_vim(2), tmp_path / "w.safetensors", weights="ema")


@pytest.mark.parametrize("content", [b"", b"hello world\n", os.urandom(4096), b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".txt"])
def test_garbage_files_give_one_clear_error(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(weights.WeightsError) as err:
        models.create_model("vim_mnist", pretrained=str(path), **TINY_VIM)
    assert str(path) in str(err.value) and "Traceback" not in str(err.value)


def test_non_tensor_entries_and_missing_paths(tmp_path):
    torch.save({"a": 1, "b": "x"}, tmp_path / "d.pth")
    with pytest.raises(weights.WeightsError, match="not named tensors"):
        weights.read(tmp_path / "d.pth")
    with pytest.raises(weights.WeightsError, match="weights not found"):
        weights.read(tmp_path / "nope.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(weights.WeightsError, match="neither a weights file nor a trainer run"):
        weights.read(tmp_path / "empty_dir")


def test_pretrained_true_says_how_to_pass_a_file():
    import timm
    with pytest.raises(weights.WeightsError, match="local file"):
        models.create_model("vim_mnist", pretrained=True)
    with pytest.raises(weights.WeightsError, match="local file"):
        timm.create_model("vim_mnist", pretrained=True)


def test_timm_pretrained_cfg_overlay_names_a_local_file(tmp_path):
    import timm
    src = _vim()
    save_file(_tensors(src), str(tmp_path / "w.safetensors"))
    overlay = dict(file=str(tmp_path / "w.safetensors"))
    model = timm.create_model("vim_mnist", pretrained=True, pretrained_cfg_overlay=overlay, **TINY_VIM)
    assert _same(model, src.state_dict())


# ----------------------------------------------------------------------------------------------
# Validation: finite, shapes, checksums, fallback
# ----------------------------------------------------------------------------------------------
def test_non_finite_weights_are_refused(tmp_path):
    state = _tensors(_vim())
    state["norm_f.weight"][3] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(weights.WeightsError, match="NaN or inf.*norm_f.weight"):
        models.load_checkpoint(_vim(), tmp_path / "nan.safetensors")


def test_wrong_model_lists_keys_and_shapes(tmp_path):
    save_file(_tensors(_vim(embed_dim=48)), str(tmp_path / "w.safetensors"))
    listing = r"40 with another shape(.|\n)*shape mismatch: cls_token: expected \(1, 1, 32\), got \(1, 1, 48\)"
    with pytest.raises(weights.WeightsError, match=listing):
        models.load_checkpoint(_vim(), tmp_path / "w.safetensors")
    save_file(_tensors(models.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16)),
              str(tmp_path / "vmamba.safetensors"))
    with pytest.raises(weights.WeightsError, match="missing"):
        models.load_checkpoint(_vim(), tmp_path / "vmamba.safetensors", adapt=True)


def test_step_dir_checksums_catch_corruption_and_run_dir_falls_back(tmp_path, capsys):
    run = tmp_path / "run"
    old, new = _vim(0), _vim(1)
    _step_dir(run, 5, old, config={"model": "vim_mnist", "seed": 5})
    newest = _step_dir(run, 9, new, ema=_vim(2), config={"model": "vim_mnist", "seed": 9})
    ckpt = weights.read(run)
    assert ckpt.step == 9 and ckpt.config["seed"] == 9 and set(ckpt.states) == {"model", "ema"}
    # Flip one byte of the newest weights, same size: the manifest catches it, the older one is used.
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.verify_step_dir(newest)
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.read(newest / "model.safetensors")
    ckpt = weights.read(run)
    assert ckpt.step == 5 and _same(old, ckpt.select()[1])
    assert "1 newer checkpoint(s) failed verification" in capsys.readouterr().out
    # Every checkpoint bad: an error naming why, never an empty result.
    (run / "checkpoints" / "step_000000005" / "model.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(weights.WeightsError, match="no usable checkpoint.*bytes"):
        weights.read(run / "checkpoints")


def test_run_dir_skips_a_checkpoint_with_nan_weights(tmp_path):
    run = tmp_path / "run"
    good = _vim(0)
    _step_dir(run, 1, good)
    bad = _vim(1)
    with torch.no_grad():
        bad.head.weight.fill_(float("inf"))
    _step_dir(run, 2, bad)  # checksums fine: written that way
    assert weights.read(run).step == 1


def test_temp_dirs_are_never_candidates(tmp_path):
    run = tmp_path / "run"
    _step_dir(run, 1, _vim())
    tmp = run / "checkpoints" / ".step_000000002.abc"
    tmp.mkdir()
    save_file(_tensors(_vim(3)), str(tmp / "model.safetensors"))
    assert [d.name for d in weights.step_dirs(run / "checkpoints")] == ["step_000000001"]


# ----------------------------------------------------------------------------------------------
# Fine-tuning adaptation
# ----------------------------------------------------------------------------------------------
def test_finetune_to_other_classes_and_size(tmp_path, capsys):
    """README: create_model(name, pretrained=..., num_classes=100) at another img_size."""
    src = _vim()
    save_file(_tensors(src), str(tmp_path / "w.safetensors"))
    torch.manual_seed(7)
    model = models.create_model("vim_mnist", pretrained=str(tmp_path / "w.safetensors"), num_classes=100,
                                img_size=36, **TINY_VIM)
    out = capsys.readouterr().out
    assert "classifier head re-initialised: the checkpoint has 10 classes, the model 100" in out
    assert "pos_embed resampled from a 6x6 to a 8x8 patch grid" in out
    assert model.head.weight.shape == (100, 32) and model.pos_embed.shape == (1, 65, 32)
    assert torch.equal(model.layers[1].mixer.A_log, src.layers[1].mixer.A_log)
    assert torch.equal(model.pos_embed[:, 32], src.pos_embed[:, 18])  # class entry moved to the new middle
    with torch.no_grad():
        assert model(torch.randn(2, 1, 36, 36)).shape == (2, 100)
    # Without adapt (evaluation), the same file is a mismatch naming both causes.
    with pytest.raises(weights.WeightsError, match="hint: the classifier size differs"):
        models.load_checkpoint(models.create_model("vim_mnist", num_classes=100, **TINY_VIM),
                               tmp_path / "w.safetensors")


def test_resample_pos_embed_is_exact_on_same_grid_and_smooth_fields():
    pe = torch.randn(1, 50, 8)
    assert torch.allclose(resample_pos_embed(pe, (7, 7)), pe, atol=1e-6)
    const = torch.ones(1, 50, 8) * 3.0
    const[:, 24] = -1.0  # the class entry
    out = resample_pos_embed(const, (10, 12))
    assert out.shape == (1, 121, 8) and out[0, 60].eq(-1.0).all()
    assert torch.allclose(torch.cat([out[:, :60], out[:, 61:]], 1), torch.full((1, 120, 8), 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="not a square grid"):
        resample_pos_embed(torch.randn(1, 51, 8), (7, 7))


def test_dyvm_from_vim_and_from_official_dyvm(tmp_path, capsys):
    vim = _vim()
    torch.save({"model": {"module." + k: v for k, v in vim.state_dict().items()}}, tmp_path / "vim.pth")
    dyvm = models.create_model("dyvm_vim_mnist", pretrained=str(tmp_path / "vim.pth"), **TINY_VIM, pruning_loc=(1,))
    assert "predictor/block-head tensors are not in the checkpoint" in capsys.readouterr().out
    assert torch.equal(dyvm.layers[1].mixer.A_b_log, vim.layers[1].mixer.A_b_log)
    assert torch.equal(dyvm.layers[0].mixer.block_head.bias, torch.full((2,), 5.0))
    # An official DyVM checkpoint (score_predictors.*) loads into evaluation strictly (no adapt).
    from py.models import interop
    torch.save({"model": interop.to_official(dyvm)}, tmp_path / "dyvm_official.pth")
    back = models.load_checkpoint(models.create_model("dyvm_vim_mnist", **TINY_VIM, pruning_loc=(1,)),
                                  tmp_path / "dyvm_official.pth")
    assert _same(back, dyvm.state_dict())
