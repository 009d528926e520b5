"""tools/bench_export.py on the small vim_mnist: the table's rows and numbers, a failing
implementation's row and note (exit 1), and flag errors (exit 2)."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools import bench_export  # noqa: E402

pytest.importorskip("onnxruntime")


def _run(*args):
    bench_export.FLAGS.unparse_flags()  # absl keeps the previous call's values otherwise
    return bench_export.cli.run(bench_export.main, ["bench_export", *args], bench_export.FLAGS, bench_export.__doc__)


def _row(text, model, batch):
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {model} | {batch} |")]
    return [c.strip() for c in row.strip("|").split(" | ")]


def test_table_eager_and_onnxruntime(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert _run("--models=vim_mnist", "--impls=eager,onnxruntime", "--warmup=1", "--repeat=2", "--threads=1",
                f"--onnx_dir={tmp_path}", f"--output={out}") == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    cells = _row(text, "vim_mnist", 1)
    eager, onnx_ms, ratio, diff = float(cells[2]), float(cells[5]), cells[6], float(cells[8])
    assert eager > 0 and onnx_ms > 0 and diff <= 1e-4
    assert ratio == f"{eager / onnx_ms:.2f}×"
    assert cells[3] == cells[4] == cells[7] == cells[9] == "—"  # compiled not asked for
    assert (tmp_path / "vim_mnist_b1.onnx").exists()


def test_failing_implementation_is_reported(tmp_path, capsys, monkeypatch):
    def broken(model, x, path):
        raise bench_export.export.ExportError("no export today")
    monkeypatch.setattr(bench_export, "_onnx", broken)
    assert _run("--models=vim_mnist", "--impls=eager,onnxruntime", "--warmup=1", "--repeat=1") == 1
    text = capsys.readouterr().out
    assert _row(text, "vim_mnist", 1)[5] == "error"
    assert "- vim_mnist, batch 1, onnxruntime: ExportError: no export today" in text


@pytest.mark.parametrize("flag, message", [("--impls=eager,tflite", "--impls: unknown ['tflite']"),
                                           ("--batch_sizes=0", "must be >= 1"),
                                           ("--models=nope", "unknown --model 'nope'")])
def test_bad_flags_exit_2(flag, message, capsys):
    assert _run(flag) == 2
    assert message in capsys.readouterr().err
