"""The code's layers (docs/architecture.md), checked from the source: no module imports one of a higher
layer, and no import circle exists anywhere. Imports under ``if TYPE_CHECKING:`` are type hints only and do
not count; a package's ``__init__`` may import its own modules."""
import ast
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: low to high; a module may import its own layer or lower ones. First matching pattern wins.
LAYERS = [
    ["benchmarks", "benchmarks.files", "benchmarks.device", "benchmarks.argparsing"],
    ["benchmarks.topology", "benchmarks.models", "benchmarks.data"],
    ["benchmarks.compressed", "benchmarks.accounting", "benchmarks.accounting.bitstream", "benchmarks.accounting.entropy_coding",
     "benchmarks.accounting.packed_header", "benchmarks.accounting.size", "benchmarks.accounting.packing",
     "benchmarks.accounting.layer_stream"],
    ["methods", "methods.*"],
    ["benchmarks.checkpoints", "benchmarks.train", "benchmarks.float_cache", "benchmarks.timing",
     "benchmarks.timing.steps"],
    ["benchmarks.harness", "benchmarks.harness.*"],
    ["benchmarks.report", "benchmarks.report.*", "benchmarks.timing.*", "benchmarks.accounting.inspect",
     "benchmarks.accounting.repack", "benchmarks.export"],
    ["run_all", "benchmarks.run", "benchmarks.cli", "experiments.*"],
]


def modules() -> dict[str, Path]:
    found = {}
    for p in [*ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("methods/**/*.py"), *ROOT.glob("experiments/*.py"),
              ROOT / "run_all.py"]:
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = p
    return found


def layer(name: str) -> int:
    return next(i for i, patterns in enumerate(LAYERS) if any(fnmatch(name, p) for p in patterns))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports at run time (``from a import b`` is module ``a.b`` when that
    is a module, else ``a``)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module) if (sub in known or node.module in known) else None
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for t in imports(p, set(mods)) if t != name and not t.startswith(name + ".")}
            for name, p in mods.items()}


def test_every_module_has_a_layer():
    assert all(isinstance(layer(name), int) for name in modules())


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_no_import_circles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            strong(v)
    assert cycles == []


def test_the_check_notices_an_upward_import(tmp_path):
    """The rule above is not vacuous: a training module importing the harness is caught."""
    fake = tmp_path / "train.py"
    fake.write_text("from benchmarks.harness.runner import execute\n")
    targets = imports(fake, set(modules()))
    assert targets == {"benchmarks.harness.runner"} and layer("benchmarks.harness.runner") > layer("benchmarks.train")
