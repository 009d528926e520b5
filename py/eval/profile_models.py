"""Side-by-side cost of models: params, FLOPs, inference/training throughput, peak memory.

    ./bazelw run //py/eval:profile -- --models=vmamba_tiny_s1l8,vim_small,pvmamba_tiny --device=cuda \\
        --batch_size=128 --output=profile_out
    ./bazelw run //py/eval:profile -- --models=vim_mnist,vim_tiny --skip_throughput   # params/FLOPs only

Params and FLOPs are counted as //py/eval:model_table does (py.models.count_flops, fvcore convention,
one image). Throughput, as in the VMamba paper: a fixed batch of random images, --warmup untimed
iterations, then the median of --repeats timed ones, in images/s. Inference runs in eval mode under
no_grad; training is forward + backward + AdamW step (the trainer's optimizer), optionally at another
resolution (--train_img_size). Peak memory is measured per phase above the level before the model was
built: CUDA max_memory_allocated, or on the CPU the peak resident set size (VmHWM, reset per phase).
Flags spelt --batch-size work too. Defaults are small enough for a 2-core CPU; on a CPU that other
jobs share, --threads=1 avoids thread oversubscription, which can slow torch down tenfold or more.

(Not named profile.py: this directory is sys.path[0] of every tool here run as a script, and a
profile.py in it would shadow the standard library's `profile`, which torch imports via cProfile.)
"""
import ctypes
import gc
import platform
import statistics
import sys
import time

import torch
from absl import flags

import py.models as models
from py.common import cli
from py.eval import common
from py.eval.model_table import params_and_flops
from py.training import engine, optim

FLAGS = flags.FLAGS

flags.DEFINE_list("models", None, "comma-separated registered model names (py.models.list_models())")
cli.define_runtime_flags(FLAGS)
flags.DEFINE_string("output", None, "directory for profile.json (written atomically)")
flags.DEFINE_integer("img_size", None, "inference (and FLOPs) resolution (default: each model's registered one)")
flags.DEFINE_integer("train_img_size", None, "training-throughput resolution (default: --img_size)")
flags.DEFINE_integer("num_classes", None, "classifier outputs (default: each model's registered number)")
flags.DEFINE_integer("batch_size", None, "inference batch (default: 2 on the CPU, 128 on CUDA)")
flags.DEFINE_integer("train_batch_size", None, "training batch (default: --batch_size)")
flags.DEFINE_integer("warmup", 1, "untimed iterations before timing")
flags.DEFINE_integer("repeats", 3, "timed iterations; the median is reported")
flags.DEFINE_enum("amp", "none", ["none", "bf16", "fp16"], "autocast dtype for throughput (fp16: CUDA only)")
flags.DEFINE_bool("skip_throughput", False, "parameters and FLOPs only")


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------
def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _reset_cpu_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a phase above the baseline taken before the model was built, in bytes."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            self.method = "CUDA torch.cuda.max_memory_allocated above the level before the model was built"
        elif _reset_cpu_peak():
            self.method = "CPU peak RSS (VmHWM, reset per phase) above the RSS before the model was built"
        else:  # no psutil in the pinned environment; getrusage's high-water mark cannot be reset
            import resource
            self._resource = resource
            self.method = ("CPU ru_maxrss growth (process high-water mark, not resettable: a lower bound "
                           "after the first model)")
        self.base = 0

    def _current(self):
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        if "VmHWM" in self.method:
            return _proc_status_kib("VmRSS") * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return self._resource.getrusage(self._resource.RUSAGE_SELF).ru_maxrss * scale

    def set_baseline(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            _malloc_trim()  # hand freed blocks of the previous model back, so RSS drops to its real level
        self.base = self._current()

    def start_phase(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif "VmHWM" in self.method:
            _reset_cpu_peak()

    def peak(self):
        if self.device.type == "cuda":
            top = torch.cuda.max_memory_allocated(self.device)
        elif "VmHWM" in self.method:
            top = _proc_status_kib("VmHWM") * 1024
        else:
            top = self._current()
        return max(0, top - self.base)


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ----------------------------------------------------------------------------------------------
# Throughput
# ----------------------------------------------------------------------------------------------
def median_seconds(step, warmup, repeats, device):
    """Median wall time of `step()` over `repeats` runs after `warmup` untimed ones."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def inference_step(model, batch, img_size, device):
    model.eval()
    x = torch.randn(batch, model.default_cfg["input_size"][0], img_size, img_size, device=device)

    @torch.no_grad()
    def step():
        with engine.autocast(device.type, FLAGS.amp):
            model(x)
    return step


def training_step(model, batch, img_size, device, num_classes):
    """forward + backward + AdamW step on random images and labels, with the model's own training
    objective (py.models.build_task)."""
    model.train()
    x = torch.randn(batch, model.default_cfg["input_size"][0], img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = optim.build_optimizer(model, lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=FLAGS.amp == "fp16")
    task = models.build_task(model)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with engine.autocast(device.type, FLAGS.amp):
            loss, _ = task.loss(model, x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def phase(memory, step, batch, device):
    memory.start_phase()
    seconds, times = median_seconds(step, FLAGS.warmup, FLAGS.repeats, device)
    return {"batch_size": batch, "median_s": seconds, "times_s": times, "img_per_s": batch / seconds,
            "peak_memory_bytes": memory.peak()}


# ----------------------------------------------------------------------------------------------
# One model, all models
# ----------------------------------------------------------------------------------------------
def profile_model(name, device, memory):
    reg = common.registered_cfg(name)
    img = FLAGS.img_size or reg["input_size"][-1]
    train_img = FLAGS.train_img_size or img
    num_classes = FLAGS.num_classes or reg["num_classes"]
    memory.set_baseline()
    torch.manual_seed(0)
    model = common.build_model(name, num_classes, img).to(device)
    params, flops = params_and_flops(model)
    row = {"model": name, "input_size": list(model.default_cfg["input_size"]), "num_classes": num_classes,
           "params": params, "flops": flops}
    if FLAGS.skip_throughput:
        return row
    batch = FLAGS.batch_size or (128 if device.type == "cuda" else 2)
    train_batch = FLAGS.train_batch_size or batch
    row["inference"] = dict(phase(memory, inference_step(model, batch, img, device), batch, device), img_size=img)
    if train_img != img:  # models with position embeddings are built for one resolution
        del model
        gc.collect()
        torch.manual_seed(0)
        model = common.build_model(name, num_classes, train_img).to(device)
    step = training_step(model, train_batch, train_img, device, num_classes)
    row["training"] = dict(phase(memory, step, train_batch, device), img_size=train_img)
    return row


def _mib(n):
    return f"{n / 2**20:,.0f}"


def print_table(rows, memory_method):
    headers = ["model", "input", "params", "FLOPs"]
    if "inference" in rows[0]:
        headers += ["infer img/s", "train img/s", "infer peak MiB", "train peak MiB"]
    lines = []
    for r in rows:
        cells = [r["model"], "×".join(map(str, r["input_size"])), f"{r['params']:,}", f"{r['flops'] / 1e9:.2f} G"]
        if "inference" in r:
            inf, tr = r["inference"], r["training"]
            cells += [f"{inf['img_per_s']:.1f} (b{inf['batch_size']})",
                      f"{tr['img_per_s']:.1f} (b{tr['batch_size']}, {tr['img_size']}px)",
                      _mib(inf["peak_memory_bytes"]), _mib(tr["peak_memory_bytes"])]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for cells in lines:
        print(fmt(cells))
    if "inference" in rows[0]:
        print(f"throughput: median of {FLAGS.repeats} timed runs after {FLAGS.warmup} warm-up, amp={FLAGS.amp}, "
              f"{torch.get_num_threads()} CPU thread(s); peak memory: {memory_method}")


def main():
    if not FLAGS.models:
        raise common.UsageError("--models is required, e.g. --models=vmamba_tiny_s1l8,vim_small,pvmamba_tiny")
    for name in FLAGS.models:
        common.registered_cfg(name)  # unknown names fail before any work
    for flag in ("img_size", "train_img_size", "num_classes", "batch_size", "train_batch_size", "repeats"):
        value = FLAGS[flag].value
        if value is not None and value <= 0:
            raise common.UsageError(f"--{flag} must be > 0, got {value}")
    for flag in ("warmup", "threads"):
        if FLAGS[flag].value < 0:
            raise common.UsageError(f"--{flag} must be >= 0, got {FLAGS[flag].value}")
    device = common.pick_device(FLAGS.device)
    if FLAGS.amp == "fp16" and device.type != "cuda":
        raise common.UsageError("--amp=fp16 needs CUDA (use --amp=bf16 on the CPU)")
    cli.set_threads(FLAGS.threads)
    out = common.caller_path(FLAGS.output) if FLAGS.output else None
    if out is not None and out.exists() and not out.is_dir():
        raise common.UsageError(f"--output {out} exists and is not a directory")
    memory = PeakMemory(device)
    rows = []
    for name in FLAGS.models:
        print(f"[profile] {name} ...", file=sys.stderr, flush=True)
        rows.append(profile_model(name, device, memory))
    print_table(rows, memory.method)
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "amp": FLAGS.amp, "warmup": FLAGS.warmup,
              "repeats": FLAGS.repeats, "memory_method": None if FLAGS.skip_throughput else memory.method,
              "models": rows}
    if out is not None:
        common.write_json(out / "profile.json", report)
        print(f"results written to {out / 'profile.json'}")
    return report


def run():
    sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))


if __name__ == "__main__":
    run()
