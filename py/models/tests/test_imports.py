"""py/models' modules import each other without a cycle (lazy, function-level imports included), and
no module outside py/models reaches into a model family's internals."""
import ast
import io
import pathlib
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODELS = ROOT / "py" / "models"


def _imports(path):
    """Names of py.models modules imported anywhere in `path` (`from py.models import x` counts as x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("py.models.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "py.models":
                found |= {f"py.models.{a.name}" for a in node.names}
            elif node.module.startswith("py.models."):
                found.add(node.module)
    return {m for m in found if (MODELS / (m.split(".")[2] + ".py")).is_file()}


def test_no_import_cycle_in_py_models():
    graph = {f"py.models.{p.stem}": _imports(p) for p in MODELS.glob("*.py") if p.stem != "__init__"}
    assert "py.models.interop" in graph and not graph["py.models.interop"], graph["py.models.interop"]
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(path + [node])
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


# Names that only py/models may use: DyVM's classes and the attributes tools used to probe for.
FAMILY_INTERNALS = {"DyVM", "DynamicBiMamba", "DyVMLoss", "dyvm", "build_loss", "keep_ratio_report",
                    "load_pretrained_vim", "_run_subset", "static_gates"}


def _code_names(path):
    """Identifiers in code (comments and strings skipped)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def test_no_module_outside_py_models_names_dyvm_internals():
    offenders = {}
    for folder in ("py/eval", "py/training", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            if "tests" in path.parts:
                continue
            used = _code_names(path) & FAMILY_INTERNALS
            if used:
                offenders[str(path.relative_to(ROOT))] = sorted(used)
    assert not offenders, offenders
