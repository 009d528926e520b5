"""The trainer end to end, as a user runs it: real data, crash + resume, DDP, bad input."""
import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from py.training.tests.support import ROOT, TINY
from py.training.tests.support import env as _env


def train(*args, check=True, timeout=600):
    cmd = [sys.executable, "-m", "py.training.train", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n{res.stderr[-4000:]}")
    return res


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out):
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(out / "checkpoints" / latest / "model.safetensors"))


def test_short_real_run_learns(tmp_path):
    out = tmp_path / "run"
    res = train(*TINY, "--epochs=3", "--lr=1e-2", f"--output={out}")  # 30 steps of the tiny model
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "val_top1", "val_top5", "lr", "img_per_s", "seconds"):
        assert all(key in r for r in rows), key
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_top1"] > 30.0  # 10 classes: chance is 10%
    assert "val top-1" in res.stderr  # the final summary
    assert json.loads((out / "config.json").read_text())["model"] == "vim_mnist"
    assert any((out / "tensorboard").iterdir())


def test_kill9_then_resume_equals_uninterrupted_run(tmp_path):
    common = [*TINY, "--epochs=2", "--deterministic", "--ckpt_every_steps=3", "--ema_decay=0.9"]
    ref = tmp_path / "ref"
    train(*common, f"--output={ref}")

    out = tmp_path / "crash"
    cmd = [sys.executable, "-m", "py.training.train", *common, f"--output={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Every checkpoint directory left behind is complete and loadable.
    from py.training import checkpoint
    saved = checkpoint.checkpoint_dirs(out / "checkpoints")
    assert saved
    for d in saved:
        checkpoint.read_step_dir(d)
    killed_at = int(latest.read_text().strip().split("_")[1])

    res = train(*common, f"--output={out}", "--resume=auto")
    assert "resumed from" in res.stderr
    assert int((out / "checkpoints" / "latest").read_text().strip().split("_")[1]) > killed_at
    want, got = final_weights(ref), final_weights(out)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    base = [a for a in TINY if not a.startswith("--batch_size")] + ["--epochs=1", "--deterministic"]
    one = tmp_path / "one"
    train(*base, "--batch_size=32", f"--output={one}")
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "py.training.train", *base, "--batch_size=16", f"--output={two}"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = final_weights(one), final_weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert metrics(one)[0]["val_top1"] == pytest.approx(metrics(two)[0]["val_top1"], abs=1.0)


@pytest.mark.parametrize("args, message", [
    (["--epochs=0"], "--epochs must be in 1..1000000, got 0"),
    (["--model=no_such_model"], "unknown model"),
    (["--data_path=/no/such/dir"], "train/ and val/"),
    (["--config=/no/such.yaml"], "does not exist"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--amp=fp8"], "amp"),
    (["--model_kwargs=[1"], "--model_kwargs is not valid JSON"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, args, message):
    res = train(*args, f"--output={tmp_path / 'x'}", check=False, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr[-2000:]


def test_config_file_sets_flags_and_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlr: 0.002\nmodel_kwargs: {embed_dim: 32, depth: 2}\n")
    out = tmp_path / "run"
    train(*[a for a in TINY if not a.startswith("--model_kwargs")], f"--config={cfg}", "--lr=0.001",
          f"--output={out}")
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["epochs"] == 1 and resolved["lr"] == 0.001 and resolved["model_kwargs"]["depth"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    res = train(f"--config={bad}", check=False)
    assert res.returncode == 2 and "unknown flag 'epochz'" in res.stderr


def test_non_finite_loss_stops_without_poisoning_latest(tmp_path):
    out = tmp_path / "run"
    res = train(*TINY, "--epochs=2", "--lr=1e30", "--warmup_epochs=0", "--clip_grad=0", f"--output={out}",
                check=False)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "non-finite loss" in res.stderr
    latest = out / "checkpoints" / "latest"
    if latest.exists():
        for tensor in final_weights(out).values():
            assert torch.isfinite(tensor).all()


def test_dyvm_finetune_with_teacher_reports_keep_ratios_and_flops(tmp_path):
    """The DyVM recipe in small: a vim_mnist run, then DyVM fine-tuned from it with it as the teacher."""
    from py.models import count_flops, create_model

    vim_kwargs = {"embed_dim": 32, "depth": 4}
    base = ["--batch_size=32", "--limit_train=320", "--threads=1", "--progress=false", "--warmup_epochs=0.5"]
    teacher_out = tmp_path / "vim"
    train("--model=vim_mnist", f"--model_kwargs={json.dumps(vim_kwargs)}", *base, "--epochs=3", "--lr=3e-3",
          f"--output={teacher_out}")
    weights = teacher_out / "checkpoints" / (teacher_out / "checkpoints" / "latest").read_text().strip() / "model.safetensors"

    dyvm_kwargs = dict(vim_kwargs, pruning_loc=[1, 3], keep_ratio=0.7)
    out = tmp_path / "dyvm"
    res = train("--config=py/training/configs/dyvm_vim_mnist.yaml", f"--model_kwargs={json.dumps(dyvm_kwargs)}",
                f"--teacher_model_kwargs={json.dumps(vim_kwargs)}", f"--finetune={weights}",
                f"--teacher_checkpoint={weights}", *base, "--epochs=2", f"--output={out}")
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "dyvm_vim_mnist" and cfg["teacher_model"] == "vim_mnist"
    teacher_gflops = count_flops(create_model("vim_mnist", **vim_kwargs), (1, 28, 28))["total"] / 1e9
    for r in rows:
        assert abs(r["token_keep_ratio"] - int(0.49 * 36) / 36) < 1e-9  # ρ² of 36 patches at the last stage
        assert 0.0 <= r["block_keep_ratio"] <= 1.0
        assert 0 < r["gflops_per_image"] < teacher_gflops  # pruned tokens cost nothing downstream
    assert rows[-1]["val_top1"] > 20.0  # starts from the teacher's weights, so well above chance
    assert "tokens kept" in res.stderr and "GFLOPs/image" in res.stderr


def test_teacher_without_checkpoint_is_a_clear_error(tmp_path):
    res = train("--model=dyvm_vim_mnist", "--teacher_model=vim_mnist", f"--output={tmp_path / 'x'}", check=False)
    assert res.returncode == 2 and "--teacher_checkpoint" in res.stderr
