"""CPU inference latency of each family: eager, torch.compile and the ONNX export under onnxruntime.

    ./bazelw run //tools:bench_export -- --threads=2 [--models=vim_tiny,pvmamba_tiny] [--batch_sizes=1,8] \\
        [--warmup=3] [--repeat=10] [--output=bench_export.md]

Per model and batch size, on one random input in eval mode under no_grad:
  * eager: the model with its default backends (the native CPU kernels);
  * compiled: torch.compile(model) (inductor; the custom ops stay native kernels inside the graph);
  * onnxruntime: the file py.eval.export writes for --format=onnx (every custom op decomposed into
    standard ops: the chunked selective scan, SSD's chunked form, GridSample, transposes), run by
    onnxruntime's CPU provider with --threads intra-op threads.
Each is run --warmup times untimed (compilation happens there), then --repeat times; the table shows
the median in ms, the ratios eager / compiled and eager / onnxruntime (> 1: faster than eager), the
largest |output - eager| of each, and the one-time cost (compile or export + session load, s).
A model whose export or compilation fails gets "error" in its cells and the message below the table
(exit code 1); so does onnxruntime at a batch size above 1 while py.eval.export exports batch 1 only.
Prints the markdown table; --output also writes it to a file.
"""
import pathlib
import statistics
import sys
import tempfile
import time

import torch
from absl import flags

if __package__ in (None, ""):  # `python3 tools/bench_export.py`: the repository root is the import root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from py.common import cli, files  # noqa: E402
from py.eval import common, export  # noqa: E402

FAMILIES = ["vmamba_tiny_s1l8", "vmamba_tiny_ssd", "vim_tiny", "pvmamba_tiny", "dyvm_vim_tiny"]
IMPLS = ["eager", "compiled", "onnxruntime"]

FLAGS = flags.FlagValues()
flags.DEFINE_list("models", FAMILIES, "registered model names", flag_values=FLAGS)
flags.DEFINE_list("batch_sizes", ["1"], "batch sizes to time (each a fixed input shape)", flag_values=FLAGS)
flags.DEFINE_list("impls", IMPLS, f"which of {', '.join(IMPLS)} to time (eager is always run: the others "
                  "are compared with it)", flag_values=FLAGS)
flags.DEFINE_integer("img_size", None, "input resolution (default: each model's own)", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "untimed runs before timing (>= 1: compiles/loads)", flag_values=FLAGS)
flags.DEFINE_integer("repeat", 10, "timed runs; the median is reported", flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "CPU threads for torch and onnxruntime (0: their defaults)", flag_values=FLAGS)
flags.DEFINE_string("onnx_dir", None, "keep the .onnx files here (default: a temporary directory)",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "also write the markdown table to this file", flag_values=FLAGS)


def median_ms(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_model(name, batch, onnx_dir):
    """{impl: (ms, max |out - eager|, one-time s)} and {impl: error message} for one model and batch."""
    torch.manual_seed(0)
    model = common.build_model(name, None, FLAGS.img_size).eval()
    x = torch.randn((batch,) + tuple(model.default_cfg["input_size"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(x)
        results = {"eager": (median_ms(lambda: model(x), FLAGS.warmup, FLAGS.repeat), 0.0, None)}
    errors = {}
    runners = {"compiled": lambda: _compiled(model, x),
               "onnxruntime": lambda: _onnx(model, x, onnx_dir / f"{name}_b{batch}.onnx")}
    for impl in FLAGS.impls:
        if impl == "eager":
            continue
        try:
            t0 = time.perf_counter()
            run = runners[impl]()
            out = run()  # the first call: compilation / session start
            setup = time.perf_counter() - t0
            results[impl] = (median_ms(run, FLAGS.warmup - 1, FLAGS.repeat), export.max_abs_diff(out, eager), setup)
        except Exception as exc:  # noqa: BLE001  (reported in the table, the others still run)
            errors[impl] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return results, errors


def _compiled(model, x):
    compiled = torch.compile(model)

    def run():
        with torch.no_grad():
            return compiled(x)
    return run


def _onnx(model, x, path):
    export.export_onnx(model, x, path)
    session = export.onnx_session(path, FLAGS.threads or None)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _cell(results, impl, i, fmt):
    return fmt.format(results[impl][i]) if impl in results and results[impl][i] is not None else "—"


def table(rows):
    head = ("| model | batch | eager ms | compiled ms | eager / compiled | onnxruntime ms | eager / onnxruntime "
            "| max \\|compiled − eager\\| | max \\|onnx − eager\\| | compile s | export + load s |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for name, batch, res, errors in rows:
        eager = res["eager"][0]
        ratio = lambda impl: f"{eager / res[impl][0]:.2f}×" if impl in res else "—"
        err = lambda impl, i, fmt: "error" if impl in errors else _cell(res, impl, i, fmt)
        lines.append(f"| {name} | {batch} | {eager:.1f} | {err('compiled', 0, '{:.1f}')} | {ratio('compiled')} "
                     f"| {err('onnxruntime', 0, '{:.1f}')} | {ratio('onnxruntime')} | {err('compiled', 1, '{:.1e}')} "
                     f"| {err('onnxruntime', 1, '{:.1e}')} | {err('compiled', 2, '{:.0f}')} "
                     f"| {err('onnxruntime', 2, '{:.0f}')} |")
        notes += [f"- {name}, batch {batch}, {impl}: {msg}" for impl, msg in errors.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main():
    bad = [i for i in FLAGS.impls if i not in IMPLS]
    if bad:
        raise cli.UsageError(f"--impls: unknown {bad}; choose from {IMPLS}")
    try:
        batches = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        raise cli.UsageError(f"--batch_sizes must be integers, got {FLAGS.batch_sizes}")
    if min(batches) < 1 or FLAGS.warmup < 1 or FLAGS.repeat < 1:
        raise cli.UsageError("--batch_sizes, --warmup and --repeat must be >= 1")
    for name in FLAGS.models:
        common.registered_cfg(name)  # unknown names fail before any measurement
    cli.set_threads(FLAGS.threads)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = common.caller_path(FLAGS.onnx_dir) if FLAGS.onnx_dir else pathlib.Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in FLAGS.models:
            for batch in batches:
                res, errors = bench_model(name, batch, onnx_dir)
                rows.append((name, batch, res, errors))
                print(f"{name} batch {batch}: " + ", ".join(f"{k} {v[0]:.1f} ms" for k, v in res.items()),
                      file=sys.stderr, flush=True)
    text = (f"torch {torch.__version__}, onnxruntime {_ort_version()}, {torch.get_num_threads()} torch threads, "
            f"median of {FLAGS.repeat} after {FLAGS.warmup} warm-up runs\n\n" + table(rows))
    print(text, end="")
    if FLAGS.output:
        files.atomic_write_text(common.caller_path(FLAGS.output), text)
    return 1 if any(errors for *_, errors in rows) else 0


def _ort_version():
    import onnxruntime
    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))
