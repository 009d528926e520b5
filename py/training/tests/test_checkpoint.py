"""Checkpoint format, verification, fallback, temp cleanup and the run lock (in-process, seconds)."""
import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from py.models import weights
from py.training import checkpoint
from py.training.tests.support import Payload, plant_old_format


def train_state(step):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    return {"epoch": step, "step_in_epoch": 0, "global_step": step, "running": {"loss_sum": 1.5, "count": 3},
            "optimizer": opt.state_dict(), "scaler": {}, "rng": checkpoint.pack_rng()}


def save(root, step, w, keep=3, ema=None):
    return checkpoint.save(root, step, {"w": w}, ema, train_state(step), {"model": "m", "lr": 0.1}, keep=keep)


def test_planted_payload_is_real_but_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    plant_old_format(tmp_path / "ckpt" / "step_000000010", marker)
    # The payload is live: an unsafe load (in another process) would run it.
    probe = tmp_path / "probe"
    plant_old_format(tmp_path / "probe_ckpt" / "step_000000001", probe)
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
                    str(tmp_path / "probe_ckpt" / "step_000000001" / "state.pt")], check=False,
                   capture_output=True, cwd=pathlib.Path(__file__).resolve().parents[3])
    assert probe.exists()

    with pytest.raises(checkpoint.PickledCheckpoint, match="--trust_pickle"):
        checkpoint.read_step_dir(tmp_path / "ckpt" / "step_000000010")
    found, problems = checkpoint.find_good(tmp_path / "ckpt")
    assert found is None and "--trust_pickle" in problems[0][1]
    assert not marker.exists()


def test_payload_in_a_new_format_train_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = save(tmp_path, 5, torch.ones(2))
    torch.save({"epoch": 0, "step_in_epoch": 0, "global_step": 5, "optimizer": {}, "rng": {}, "x": Payload(marker)},
               str(d / checkpoint.TRAIN_STATE))
    (d / weights.MANIFEST).unlink()
    weights.write_manifest(d, 5)  # checksums that match: only the safe loader stands in the way
    with pytest.raises(weights.WeightsError, match="weights_only=True"):
        checkpoint.read_step_dir(d)
    assert not marker.exists()


def test_saved_state_loads_with_weights_only_and_restores_every_rng(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    d = save(tmp_path, 7, torch.arange(4.0), ema={"w": torch.zeros(4)})
    expect = (random.random(), np.random.standard_normal(), torch.rand(2))
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "ema.safetensors", "manifest.json",
                                                    "model.safetensors", "train_state.pt"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "ema.safetensors", "model.safetensors", "train_state.pt"}
    state = torch.load(str(d / "train_state.pt"), weights_only=True)  # nothing needs unpickling
    assert state["global_step"] == 7 and "config" not in state
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = checkpoint.read_step_dir(d)
    checkpoint.unpack_rng(loaded.train_state["rng"])
    got = (random.random(), np.random.standard_normal(), torch.rand(2))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])
    assert loaded.config == {"model": "m", "lr": 0.1} and torch.equal(loaded.ema_state["w"], torch.zeros(4))
    assert weights.run_config(d) == {"model": "m", "lr": 0.1}  # what the eval tools read


def test_checksum_mismatch_and_nan_weights_fall_back_to_the_newest_good_one(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, torch.full((4,), float(step)))
    # step 3: one byte flipped, same size -> sha256 mismatch
    f = tmp_path / "step_000000003" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    # step 2: NaN weights with a manifest that matches them -> the finiteness check
    save_file({"w": torch.full((4,), float("nan"))}, str(tmp_path / "step_000000002" / "model.safetensors"))
    (tmp_path / "step_000000002" / "manifest.json").unlink()
    weights.write_manifest(tmp_path / "step_000000002", 2)
    found, problems = checkpoint.find_good(tmp_path)
    assert found.path.name == "step_000000001" and torch.equal(found.model_state["w"], torch.full((4,), 1.0))
    assert [d.name for d, _ in problems] == ["step_000000003", "step_000000002"]
    assert "sha256" in problems[0][1] and "NaN" in problems[1][1]


def test_non_finite_optimizer_state_is_refused(tmp_path):
    d = tmp_path / "step_000000004"
    save(tmp_path, 4, torch.ones(4))
    state = torch.load(str(d / "train_state.pt"), weights_only=True)
    state["optimizer"]["state"][0]["exp_avg"][0] = float("inf")
    torch.save(state, str(d / "train_state.pt"))
    (d / "manifest.json").unlink()
    weights.write_manifest(d, 4)
    with pytest.raises(weights.WeightsError, match="optimizer state"):
        checkpoint.read_step_dir(d)


def test_killed_save_leftovers_are_removed_and_pruning_keeps_newer_dirs(tmp_path):
    (tmp_path / ".step_000000009.abc123").mkdir()
    (tmp_path / ".step_000000009.abc123" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".latest.xyz").write_text("step_")
    assert checkpoint.remove_temp(tmp_path) == [".latest.xyz", ".step_000000009.abc123"]
    (tmp_path / ".step_000000009.def456").mkdir()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, torch.ones(2), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000000003", "step_000000004"]
    # A newer dir (e.g. from before a resume from an older one) is not pruned by an older save.
    save(tmp_path, 9, torch.ones(2), keep=2)
    save(tmp_path, 5, torch.ones(2), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step")) == [
        "step_000000004", "step_000000005", "step_000000009"]
    assert (tmp_path / "latest").read_text().strip() == "step_000000005"


def test_lock_is_exclusive_names_the_holder_and_is_taken_over_from_a_dead_process(tmp_path):
    path = tmp_path / checkpoint.LOCK_NAME
    first = checkpoint.RunLock(path)
    assert first.acquire() is None
    with pytest.raises(checkpoint.LockHeld, match=f"PID {os.getpid()}"):
        checkpoint.RunLock(path).acquire()
    first.release()
    assert path.read_text() == ""  # a clean exit leaves no holder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))
    second = checkpoint.RunLock(path)
    assert second.acquire()["pid"] == dead.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    second.release()
