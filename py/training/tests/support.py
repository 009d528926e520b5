"""Test support: running the trainer as a user does, in-process through train.main (fast: no
interpreter start) or as a real subprocess (both return (exit code, stderr)); building ImageFolder
trees and planted old-format checkpoints."""
import contextlib
import os
import pathlib
import signal
import subprocess
import sys

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[3]
# A tiny vim_mnist keeps each run to seconds on two cores.
TINY = ["--model=vim_mnist", '--model_kwargs={"embed_dim": 32, "depth": 2}', "--batch_size=32",
        "--limit_train=320", "--threads=1", "--progress=false", "--warmup_epochs=0.5", "--lr=3e-3"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.pop("VISIONSSM_CALLER_DIR", None)
    return e


def subprocess_train(*args, timeout=600):
    res = subprocess.run([sys.executable, "-m", "py.training.train", *args], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stderr


@contextlib.contextmanager
def process_state_restored():
    """Undoes what a trainer run changes in its process (threads, determinism, signal handlers)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        for s, h in handlers.items():
            signal.signal(s, h)


def main_in_process(args, capsys):
    """train.main as `python -m py.training.train ARGS` would run it; returns (exit code, stderr)."""
    from py.training import config, train
    config.FLAGS.unparse_flags()
    code = 0
    with process_state_restored():
        try:
            config.parse_flags_or_exit(["train", *args])
            train.main(["train"])
        except SystemExit as exc:
            code = exc.code
    config.FLAGS.unparse_flags()
    return code, capsys.readouterr().err


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_usage_error(code, stderr, *needles):
    """Exactly one `error:` line containing every needle, exit code 2, and no traceback."""
    errors = error_lines(stderr)
    assert code == 2 and len(errors) == 1, (code, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


class Payload:
    """Unpickling this creates `marker` (a stand-in for arbitrary code run by a planted pickle)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_old_format(step_dir, marker):
    """A format-1 checkpoint (model.safetensors + pickled state.pt, no manifest) whose state.pt runs code."""
    step_dir.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(step_dir / "model.safetensors"))
    torch.save({"epoch": 1, "step_in_epoch": 0, "global_step": 10, "optimizer": {}, "rng": {},
                "payload": Payload(marker)}, str(step_dir / "state.pt"))
    (step_dir.parent / "latest").write_text(step_dir.name + "\n")


def make_folder(root, images, broken=(), classes=("a", "b")):
    """root/<split>/<class>/ with `images[split]` readable PNGs per class (distinct colours) and the
    (split, class, name) files in `broken` holding garbage."""
    from PIL import Image
    for split, n in images.items():
        for c, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (10 * i, 100 * c, 30)).save(d / f"ok{i}.png")
    for split, cls, name in broken:
        (root / split / cls / name).write_bytes(b"not an image")
    return root
