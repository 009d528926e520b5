"""Export a model for CPU inference: torch.export (.pt2) or ONNX.

    ./bazelw run //py/eval:export -- --model=vmamba_tiny_s1l8 [--checkpoint=weights.safetensors] \\
        --format=torch_export --output=vmamba_tiny.pt2
    python: import py.ops; torch.export.load("vmamba_tiny.pt2").module()(images)

--checkpoint may be ours or an official one (converted by py.models.interop, checked strictly).
After exporting, the program is run on a random input and compared with the eager model
(--check_tol; exit code 1 when it differs more).

Limits:
  * Batch 1 and the fixed input size of the model (--img_size, channels from the model's config);
    no dynamic shapes. Eval mode only (traced under torch.no_grad()).
  * The program keeps the native ops as custom ops (torch.ops.visionssm.selective_scan, ssd, dcnv4,
    cross_scan, cross_merge; py/ops/_library.py) and runs their CPU kernels, so it matches the eager
    model and exports in seconds. Loading a .pt2 therefore needs the ops registered: `import py.ops`
    before torch.export.load (`load_program` does it); without it torch's deserializer fails with
    "We failed to resolve torch.ops.visionssm.<op> to an operator".
  * The ops' NaN/inf checks branch on tensor values, which graph capture cannot trace; they skip
    themselves while tracing (py.ops._common.check_finite), so the parameters are checked once here.
  * Models with data-dependent control flow switch it to a traceable form in
    py.models.export_mode (DyVM: each layer's two SSM branches under torch.cond on their gate, so a
    skipped branch is not computed in the exported program either; token pruning keeps its fixed
    top-K sizes).
  * ONNX (--format=onnx): the torch.export program above, then every visionssm custom op replaced by
    its loop-free decomposition into standard ops (py.ops.decompositions: the selective scan in chunked
    form, SSD's chunked reference, DCNv4 through GridSample, cross-scan as transpose/flip) with
    ExportedProgram.run_decompositions, then torch.onnx.export of that program (the dynamo exporter,
    which needs `onnx` and `onnxscript`; the default opset). That route, not torch.onnx on the module
    itself, because the exporter cannot translate our custom ops and the ops' plain references are
    not all ONNX-friendly (the sequential selective scan would unroll into one step per token). One
    .onnx file, weights inside (checked with onnx.checker), run with onnxruntime's CPU provider for
    the --check_tol comparison; onnx, onnxscript and onnxruntime are in the pinned environment
    (elsewhere a missing one is an error naming it, exit 2).
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

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


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
    """Context in which `model` can be traced by torch.export (see the module doc, Limits): the models'
    own export switches (py.models.export_mode); the ops are custom ops torch.export keeps as they are."""
    import py.models as models
    _check_parameters_finite(model)
    with models.export_mode(model):
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
    with traceable(model), torch.no_grad():  # inference graph: the ops save nothing for a backward
        return torch.export.export(model, (example,))


def load_program(path):
    """The ExportedProgram of a .pt2 this tool wrote. Its graph calls torch.ops.visionssm.*, which exist
    once py.ops is imported (torch.export.load fails on an unregistered op)."""
    import py.ops  # noqa: F401  registers torch.ops.visionssm.*
    return torch.export.load(str(path))


def missing_onnx_packages():
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def onnx_program(model, example):
    """`export_program` with every visionssm custom op decomposed into standard aten ops
    (py.ops.decompositions), ready for torch.onnx."""
    from py.ops import decompositions
    program = export_program(model, example).run_decompositions(decompositions.decomposition_table())
    left = sorted({str(n.target) for gm in program.graph_module.modules() if isinstance(gm, torch.fx.GraphModule)
                   for n in gm.graph.nodes if str(n.target).startswith("visionssm.")})
    if left:
        raise ExportError(f"no decomposition for the custom op(s) {', '.join(left)} (py/ops/decompositions.py)")
    return program


def export_onnx(model, example, path):
    """Writes `model` at the example's shape as one ONNX file (see the module doc) and checks it."""
    missing = missing_onnx_packages()
    if missing:
        raise ExportError(f"--format=onnx needs the Python package(s) {', '.join(missing)} (torch.onnx's exporter "
                          f"uses onnx and onnxscript, the check runs onnxruntime), which this environment lacks; "
                          f"install them or use --format=torch_export")
    import onnx
    program = onnx_program(model, example)
    torch.onnx.export(program, (example,), str(path), dynamo=True, external_data=False, verbose=False)
    onnx.checker.check_model(str(path), full_check=True)


def onnx_session(path, threads=None):
    """An onnxruntime CPU session of the ONNX file (`threads`: intra-op threads, default onnxruntime's)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        got = load_program(output).module()(x)
    print(f"wrote {FLAGS.format} program of {FLAGS.model} for input {tuple(x.shape)} to {output}")
    diff = max_abs_diff(got, eager)
    print(f"max |exported - eager| on a random input: {diff:.3g}")
    if 0 <= FLAGS.check_tol < diff:
        print(f"error: exported output differs from eager by {diff:.3g} > --check_tol={FLAGS.check_tol}",
              file=sys.stderr)
        return 1
    return 0


def _run_onnx(path, x):
    """The ONNX file's output on x via onnxruntime."""
    session = onnx_session(path)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
