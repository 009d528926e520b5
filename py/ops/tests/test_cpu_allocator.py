"""keep_freed_memory: applied once, opt-out by environment, and large freed tensors are reused."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PROBE = textwrap.dedent("""
    import resource, sys, torch
    from py.ops import cpu_allocator
    applied = cpu_allocator.keep_freed_memory()
    assert cpu_allocator.keep_freed_memory() == applied  # idempotent
    def minor_faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # the heap grows over the first few rounds (aligned allocations), then settles
        torch.empty(40 * 2**20 // 4).fill_(1)  # 40 MiB: above glibc's largest default mmap threshold
    before = minor_faults()
    for _ in range(5):
        torch.empty(40 * 2**20 // 4).fill_(1)
    print(int(applied), minor_faults() - before)
""")


def probe(env_value):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if env_value is None:
        env.pop("VISIONSSM_MALLOC_TUNING", None)
    else:
        env["VISIONSSM_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return bool(int(applied)), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuning_reuses_freed_pages_and_can_be_disabled():
    applied, faults = probe(None)
    off_applied, off_faults = probe("0")
    assert not off_applied
    # glibc default: each 40 MiB tensor is a fresh mmap, ~10k page faults apiece.
    assert off_faults > 5 * 5000, off_faults
    if applied:  # musl or a glibc that refuses the threshold reports False and changes nothing
        assert faults < off_faults / 10, (faults, off_faults)
