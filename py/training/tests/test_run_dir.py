"""The trainer's run directory as a user meets it: resume trusts nothing it reads, one trainer per
--output, settings that change on resume, leftovers of killed saves, what --max_steps leaves behind."""
import json
import os
import random

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from py.models import weights
from py.training import checkpoint
from py.training.tests.support import (TINY, assert_usage_error, main_in_process, make_folder, plant_old_format,
                                      subprocess_train)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_names(out):
    return sorted(d.name for d in (out / "checkpoints").iterdir() if d.name.startswith("step_"))


def test_train_resume_never_unpickles_a_planted_checkpoint(tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    plant_old_format(out / "checkpoints" / "step_000000010", marker)
    code, err = subprocess_train(*TINY, "--epochs=1", f"--output={out}")
    assert_usage_error(code, err, "--trust_pickle", "step_000000010")
    assert not marker.exists()
    assert step_names(out) == ["step_000000010"]  # nothing pruned, nothing started
    code, err = subprocess_train(*TINY, "--epochs=1", f"--output={tmp_path / 'other'}",
                                 f"--resume={out / 'checkpoints' / 'step_000000010'}")
    assert_usage_error(code, err, "--trust_pickle")
    assert not marker.exists()


def test_trust_pickle_resumes_an_old_format_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = main_in_process([*TINY, "--epochs=1", f"--output={out}"], capsys)
    assert code == 0, err
    # Rewrite its checkpoint in the old format: pickled state.pt (numpy/python RNG tuples, config), no manifest.
    d = out / "checkpoints" / "step_000000010"
    state = torch.load(str(d / "train_state.pt"), weights_only=True)
    state["config"] = json.loads((d / "config.json").read_text())
    state["rng"] = dict(state["rng"], numpy=np.random.get_state(), python=random.getstate())
    torch.save(state, str(d / "state.pt"))
    for name in ("train_state.pt", "manifest.json", "config.json"):
        (d / name).unlink()
    code, err = main_in_process([*TINY, "--epochs=2", "--allow_config_change", f"--output={out}"], capsys)
    assert_usage_error(code, err, "--trust_pickle")
    code, err = main_in_process([*TINY, "--epochs=2", "--allow_config_change", "--trust_pickle", f"--output={out}"],
                                capsys)
    assert code == 0, err
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


def test_a_second_trainer_on_the_same_output_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = checkpoint.RunLock(out / checkpoint.LOCK_NAME)
    lock.acquire()
    try:
        code, err = subprocess_train(*TINY, "--epochs=1", f"--output={out}")
    finally:
        lock.release()
    assert_usage_error(code, err, f"PID {os.getpid()}", "train.lock")
    assert sorted(p.name for p in out.iterdir()) == [checkpoint.LOCK_NAME]  # nothing written


def _nan_latest_with_valid_manifest(out):
    d = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    state = load_file(str(d / "model.safetensors"))
    size = (d / "model.safetensors").stat().st_size
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
              str(d / "model.safetensors"))
    assert (d / "model.safetensors").stat().st_size == size
    (d / "manifest.json").unlink()
    weights.write_manifest(d, weights.step_of(d))
    return d.name


def test_corrupted_checkpoints_fall_back_refuse_to_start_over_and_resume_never_keeps_them(tmp_path, capsys):
    out = tmp_path / "run"
    # A dead trainer's lock is taken over.
    out.mkdir()
    (out / checkpoint.LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": "gone"}))
    code, err = main_in_process([*TINY, "--epochs=2", f"--output={out}"], capsys)
    assert code == 0 and "took over" in err, err
    assert step_names(out) == ["step_000000010", "step_000000020"]

    # Latest has NaN weights (same size, checksums rewritten to match): resume falls back to step 10.
    bad = _nan_latest_with_valid_manifest(out)
    code, err = main_in_process([*TINY, "--epochs=2", f"--output={out}"], capsys)
    assert code == 0, err
    assert "resuming from step_000000010" in err and bad in err and "NaN" in err
    assert (out / "checkpoints" / "set_aside" / bad).is_dir()  # kept for inspection, not deleted
    for t in load_file(str(out / "checkpoints" / "step_000000020" / "model.safetensors")).values():
        assert torch.isfinite(t).all()
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 2]

    # Every checkpoint unreadable (one byte flipped each): exit 2, nothing started, pruned or rewritten.
    for name in step_names(out):
        f = out / "checkpoints" / name / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "train.lock"}
    code, err = main_in_process([*TINY, "--epochs=3", "--allow_config_change", f"--output={out}"], capsys)
    assert_usage_error(code, err, "none can be resumed", "sha256", "--resume=never")
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "train.lock"}
    assert before == after

    # --resume=never starts fresh and moves the earlier run aside (nothing deleted), saying so.
    code, err = main_in_process([*TINY, "--epochs=1", "--resume=never", f"--output={out}"], capsys)
    assert code == 0 and "--resume=never: moved" in err, err
    previous = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(previous) == 1 and step_names(previous[0]) == ["step_000000010", "step_000000020"]
    assert [r["epoch"] for r in metrics(previous[0])] == [1, 2, 2] and [r["epoch"] for r in metrics(out)] == [1]


def test_changed_flags_on_resume_are_refused_unless_allowed_and_unchanged_ones_are_inherited(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = main_in_process([*TINY, "--epochs=1", f"--output={out}"], capsys)
    assert code == 0, err
    config_before = (out / "config.json").read_text()
    code, err = main_in_process([*TINY, "--epochs=2", "--lr=0.001", f"--output={out}"], capsys)
    line = assert_usage_error(code, err, "epochs: run 1, now 2", "lr: run 0.003, now 0.001", "--allow_config_change")
    assert "batch_size" not in line
    assert (out / "config.json").read_text() == config_before
    # Flags not given are the run's (model_kwargs, batch_size, limit_train...); the given change is allowed.
    code, err = main_in_process(["--epochs=2", "--allow_config_change", "--threads=1", "--progress=false",
                                 f"--output={out}"], capsys)
    assert code == 0 and "epochs: 1 -> 2" in err, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["model_kwargs"] == {"embed_dim": 32, "depth": 2} and cfg["limit_train"] == 320
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


def test_leftovers_of_a_killed_save_are_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    orphan = out / "checkpoints" / ".step_000000007.k1ll3d"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"torn")
    code, err = main_in_process([*TINY, "--epochs=1", f"--output={out}"], capsys)
    assert code == 0 and "leftover" in err, err
    assert not orphan.exists() and not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_max_steps_writes_a_partial_metrics_row_and_validation_is_the_whole_split(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = main_in_process([*TINY, "--epochs=2", "--max_steps=3", f"--output={out}"], capsys)
    assert code == 0, err
    rows = metrics(out)
    assert len(rows) == 1 and rows[0]["partial"] is True and rows[0]["step"] == 3 and rows[0]["epoch"] == 1
    code, err = main_in_process([*TINY, "--epochs=2", "--max_steps=3", f"--output={out}"], capsys)
    assert code == 0 and "nothing to do" in err and len(metrics(out)) == 1, err
    assert step_names(out) == ["step_000000003"]
    code, err = main_in_process([*TINY, "--epochs=2", f"--output={out}"], capsys)
    assert code == 0, err
    rows = metrics(out)
    assert [(r["epoch"], r.get("partial", False)) for r in rows] == [(1, True), (1, False), (2, False)]
    # --limit_train shrinks training only: validation is the split py/eval evaluates, with the same result.
    assert rows[-1]["val_images"] == 1000
    from py.models import create_model
    from py.training import data, engine
    ckpt = weights.read(out)
    model = create_model("vim_mnist", num_classes=10, img_size=28, in_chans=1, embed_dim=32, depth=2)
    weights.load_state(model, ckpt.states["model"])
    _, val = data.mnist5k_datasets(0.2, 0, 1, 28)
    loader = torch.utils.data.DataLoader(val, batch_size=32)
    top1, _, _, _ = engine.evaluate(model, loader, torch.device("cpu"), "none", 10)
    assert top1 == rows[-1]["val_top1"]


def test_imagefolder_run_counts_unreadable_images_per_split_and_bad_data_fails_before_training(tmp_path, capsys):
    val_broken = [("val", "a", f"bad{i}.png") for i in range(3)] + [("val", "b", f"bad{i}.png") for i in range(2)]
    root = make_folder(tmp_path / "data", {"train": 8, "val": 6},
                       broken=[("train", "a", "bad.png"), ("train", "b", "bad.png")] + val_broken)
    args = ["--model=vim_mnist", '--model_kwargs={"embed_dim": 16, "depth": 1}', "--img_size=16", "--batch_size=6",
            "--threads=1", "--progress=false", "--epochs=1", "--num_workers=0"]
    out = tmp_path / "run"
    code, err = main_in_process([*args, f"--data_path={root}", f"--output={out}"], capsys)
    assert code == 0, err
    row = metrics(out)[0]
    # 17 val files, 5 unreadable: 12 evaluated, none twice; 18 train files, 2 unreadable, all sampled once.
    assert (row["val_images"], row["val_skipped_images"]) == (12, 5)
    assert (row["train_images"], row["train_skipped_images"]) == (16, 2)
    assert "unreadable images skipped: 2 train, 5 val" in err

    all_bad = make_folder(tmp_path / "bad", {"train": 2, "val": 0}, broken=val_broken)
    code, err = main_in_process([*args, f"--data_path={all_bad}", f"--output={tmp_path / 'r2'}"], capsys)
    assert_usage_error(code, err, "val split", "no readable image")
    assert not (tmp_path / "r2").exists()
    other = make_folder(tmp_path / "other", {"train": 1})
    make_folder(tmp_path / "other", {"val": 1}, classes=("a", "c"))
    code, err = main_in_process([*args, f"--data_path={other}", f"--output={tmp_path / 'r3'}"], capsys)
    assert_usage_error(code, err, "same class folders", "only in val/: ['c']")
