#!/usr/bin/env python3
"""Reads nvcc `-Xptxas=-v` reports: registers, shared memory, stack frame and spills per kernel.

Both front doors keep the reports: Bazel as `cc/kernels/_objs/<ext>_cuda/<stem>.ptxas.txt` (next to
the objects, see third_party/cuda/cuda.bzl), tools/build_kernels.py as `cc/kernels/_ptxas/*.ptxas.txt`.

    python3 tools/ptxas_report.py cc/kernels/_ptxas/*.ptxas.txt     # table; exit 1 on a hot-kernel spill

Hot kernels (the per-element loops of the ops) must have no spill and no stack frame: local memory
in those loops costs more than the whole kernel's useful traffic.
"""
import re
import subprocess
import sys

HOT_KERNELS = ("selective_scan_fwd_kernel", "selective_scan_bwd_kernel", "cross_scan_kernel", "cross_merge_kernel",
               "dcnv4_fwd_kernel", "dcnv4_bwd_kernel", "dcnv4_gather_kernel",
               "ssd_chunk_state_kernel", "ssd_chunk_scan_kernel", "ssd_bwd_dx_kernel", "ssd_bwd_dbc_kernel")

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes cumulative stack size)?"
                   r"(?:, (\d+) bytes smem)?")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return list(names)


def parse(text):
    """[{kernel (mangled), arch, registers, smem, stack, spill_stores, spill_loads}] of one report."""
    kernels, current = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"kernel": m.group(1), "arch": m.group(2), "registers": None, "smem": 0, "stack": 0,
                       "spill_stores": 0, "spill_loads": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(3) or 0)
    return kernels


def is_hot(kernel):
    return any(h in kernel for h in HOT_KERNELS)


def problems(kernels):
    """Messages for hot kernels with a stack frame or spills (empty: all clean)."""
    out = []
    for k in kernels:
        if is_hot(k["kernel"]) and (k["stack"] or k["spill_stores"] or k["spill_loads"]):
            out.append(f"{k['kernel']} ({k['arch']}): {k['stack']} B stack frame, {k['spill_stores']} B spill "
                       f"stores, {k['spill_loads']} B spill loads")
    return out


def table(kernels):
    names = demangle([k["kernel"] for k in kernels])
    rows = ["| kernel | arch | registers | smem (B) | stack (B) | spills st/ld (B) |", "| --- | --- | --- | --- | --- | --- |"]
    for k, name in sorted(zip(kernels, names), key=lambda kn: (kn[1], kn[0]["arch"])):
        name = name.replace("visionssm::", "").replace("selective_scan::", "")
        rows.append(f"| `{name}` | {k['arch']} | {k['registers']} | {k['smem']} | {k['stack']} | "
                    f"{k['spill_stores']}/{k['spill_loads']} |")
    return "\n".join(rows)


def main(paths):
    kernels = [k for p in paths for k in parse(open(p).read())]
    if not kernels:
        sys.exit(f"no kernels found in {paths} (were they compiled with -Xptxas=-v?)")
    print(table(kernels))
    bad = problems(kernels)
    for msg in bad:
        print("SPILL/STACK in a hot kernel:", msg, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
