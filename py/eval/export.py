"""Export a model for CPU inference: torch.export (.pt2) or ONNX.

    ./bazelw run //py/eval:export -- --model=vmamba_tiny_s1l8 [--checkpoint=weights.safetensors] \\
        --format=torch_export --output=vmamba_tiny.pt2
    python: torch.export.load("vmamba_tiny.pt2").module()(images)

--checkpoint may be ours or an official one (converted by py.models.interop, checked strictly).
After exporting, the program is run on a random input and compared with the eager model
(--check_tol; exit code 1 when it differs more).

Limits:
  * Batch 1 and the fixed input size of the model (--img_size, channels from the model's config);
    no dynamic shapes. Eval mode only.
  * The ops run with backend "reference" (plain PyTorch): the native CPU kernels are called through
    raw data pointers, which graph capture cannot trace. The reference selective scan (VMamba v05,
    Vim, DyVM) is a loop over the tokens, so the graph holds one small step per token and grows with
    the sequence: at 224², vim_tiny and vmamba_tiny_s1l8 each took 6-7 minutes and ~4 GB of RAM to
    export on a 2-core CPU (pvmamba_tiny: 16 s), and the program runs slower than the eager model
    with its native kernel. The reference SSD (VMamba m0) and PVMamba are plain tensor ops.
  * The ops' NaN/inf checks branch on tensor values, which graph capture cannot trace; they skip
    themselves while tracing (py.ops._common.check_finite), so the parameters are checked once here.
  * Models with data-dependent control flow switch it to a traceable form in
    py.models.export_mode (DyVM: each layer's two SSM branches under torch.cond on their gate, so a
    skipped branch is not computed in the exported program either; token pruning keeps its fixed
    top-K sizes; batch 1 only).
  * ONNX needs the `onnx` and `onnxscript` packages (torch.onnx's exporter is built on them); without
    them --format=onnx stops with an error naming the missing package. The ONNX path is otherwise the
    same traced program; it could not be run here (neither package is installed in this environment).
"""
import contextlib
import importlib.util
import sys

import torch
from absl import flags

from py.common import cli
from py.eval import common

FLAGS = flags.FlagValues()
cli.define_model_flags(FLAGS, checkpoint_help="weights to load (ours or official; anything py.models.weights "
                       "reads); default: the model's random init")
flags.DEFINE_enum("format", "torch_export", ["torch_export", "onnx"], "output format", flag_values=FLAGS)
flags.DEFINE_string("output", None, "output file (.pt2 for torch_export, .onnx for onnx)", flag_values=FLAGS)
flags.DEFINE_integer("img_size", None, "fixed input resolution of the exported program (default: the "
                     "model's own, 224 for the ImageNet models)", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "classifier size, must match the checkpoint (default: the "
                     "model's own)", flag_values=FLAGS)
flags.DEFINE_float("check_tol", 1e-4, "max |exported - eager| allowed on a random input (< 0: no check)",
                   flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of the random init (no --checkpoint) and of the check input",
                     flag_values=FLAGS)

ONNX_PACKAGES = ("onnx", "onnxscript")


class ExportError(Exception):
    """Export is not possible as asked (e.g. a missing package): exit code 2."""


# ----------------------------------------------------------------------------------------------
# Making the models traceable
# ----------------------------------------------------------------------------------------------
def _check_parameters_finite(model):
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ExportError(f"parameters with NaN/inf cannot be exported: {bad[:10]}")


@contextlib.contextmanager
def traceable(model):
    """Context in which `model` can be traced by torch.export (see the module doc, Limits): the ops'
    plain-PyTorch references (py.ops.force_backend) and the models' own export switches
    (py.models.export_mode)."""
    import py.models as models
    from py.ops import force_backend
    _check_parameters_finite(model)
    with force_backend("reference"), models.export_mode(model):
        yield


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def example_input(model, seed=0):
    """A random batch-1 input of the model's configured size."""
    size = tuple(model.default_cfg["input_size"]) if hasattr(model, "default_cfg") else (3, 224, 224)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((1,) + size, generator=gen)


def export_program(model, example):
    """torch.export.ExportedProgram of model.eval() at the example's (fixed) shape."""
    model.eval()
    if example.shape[0] != 1:
        raise ExportError(f"export is for batch 1, got an example of shape {tuple(example.shape)}")
    with torch.no_grad():
        model(example)  # one eager run: the ops validate their arguments (tracing skips the data checks)
    with traceable(model):
        return torch.export.export(model, (example,))


def missing_onnx_packages():
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def export_onnx(model, example, path):
    """Writes an ONNX file through torch.onnx's torch.export-based exporter."""
    missing = missing_onnx_packages()
    if missing:
        raise ExportError(f"--format=onnx needs the Python package(s) {', '.join(missing)} (torch.onnx's exporter "
                          f"uses onnx and onnxscript), which this environment lacks; install them or use "
                          f"--format=torch_export")
    model.eval()
    with torch.no_grad():
        model(example)  # as in export_program: argument checks run eagerly once
    with traceable(model):
        program = torch.onnx.export(model, (example,), str(path), dynamo=True)
    return program


def max_abs_diff(a, b):
    return float((a.detach().float() - b.detach().float()).abs().max())


def main(argv):
    return cli.run(_export, argv, FLAGS, __doc__, errors=(ExportError, ValueError))


def _export():
    for name in ("model", "output"):
        if not FLAGS[name].value:
            raise cli.UsageError(f"--{name} is required (see --help)")
    torch.manual_seed(FLAGS.seed)
    model = common.build_model(FLAGS.model, FLAGS.num_classes, FLAGS.img_size, None, FLAGS.model_kwargs).eval()
    if FLAGS.checkpoint:
        from py.models import weights
        weights.load_into(model, common.caller_path(FLAGS.checkpoint), FLAGS.weights, trust_pickle=FLAGS.trust_pickle)
    x = example_input(model, FLAGS.seed)
    output = common.caller_path(FLAGS.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        eager = model(x)
    if FLAGS.format == "onnx":
        export_onnx(model, x, output)
        got = _run_onnx(output, x)
    else:
        program = export_program(model, x)
        torch.export.save(program, str(output))
        got = torch.export.load(str(output)).module()(x)
    print(f"wrote {FLAGS.format} program of {FLAGS.model} for input {tuple(x.shape)} to {output}")
    if got is None:
        print("check skipped: onnxruntime is not installed")
        return 0
    diff = max_abs_diff(got, eager)
    print(f"max |exported - eager| on a random input: {diff:.3g}")
    if 0 <= FLAGS.check_tol < diff:
        print(f"error: exported output differs from eager by {diff:.3g} > --check_tol={FLAGS.check_tol}",
              file=sys.stderr)
        return 1
    return 0


def _run_onnx(path, x):
    """The ONNX file's output on x via onnxruntime, or None if it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
