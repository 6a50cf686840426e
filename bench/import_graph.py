"""The import graph between the project's packages, read from the source with ast, and the lines of each package.

    python -m bench.import_graph          # one line per package: what it imports, then the line counts

An edge A -> B means some module of package A imports package B (test and bench files are left out).
"""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP = {"tests", "bench", ".venv", "build", "checkpoints"}


def packages(root=REPO):
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name not in SKIP)


def imported_packages(path, known):
    """The project packages a Python file imports (absolute imports only: the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in known)
    return found


def graph(root=REPO):
    """{package: {(module path, imported package), ...}} for every import across packages."""
    known = set(packages(root))
    edges = {name: set() for name in known}
    for name in known:
        for path in sorted((root / name).rglob("*.py")):
            for target in imported_packages(path, known) - {name}:
                edges[name].add((str(path.relative_to(root)), target))
    return edges


def main():
    edges = graph()
    for name in packages():
        targets = sorted({target for _, target in edges[name]})
        lines = sum(len(p.read_text().splitlines()) for p in (REPO / name).rglob("*.py"))
        print(f"{name:<12} {lines:>5} lines  -> {', '.join(targets) or '(nothing)'}")
        for module, target in sorted(edges[name]):
            print(f"{'':<12} {'':>5}         {module} -> {target}")


if __name__ == "__main__":
    sys.exit(main())
