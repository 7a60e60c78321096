"""The package's modules import one another without a cycle, counting the imports inside functions: each
module can be read, and changed, knowing only what it imports."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asl_sweep"


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # `if TYPE_CHECKING:` imports are for type hints, never run
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "asl_sweep":
                found |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asl_sweep."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("asl_sweep.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_no_import_cycle_even_through_lazy_imports():
    graph, done, path = imports(), set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_leaves_import_nothing_of_the_package():
    graph = imports()
    for leaf in ("preprocessing", "masks", "errors", "state"):
        assert graph[leaf] == set(), leaf


def test_training_reads_its_types_from_the_leaves_not_the_ledger():
    graph = imports()
    assert graph["records"] == {"state"}
    assert "ledger" not in graph["train"] | graph["ranking"] | graph["console"]
