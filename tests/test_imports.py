"""The layers of DESIGN.md, read from the source with ast: imports point down only, so the rule cannot rot.

    python tests/test_imports.py     # one line per package: what it imports, its lines, and each import edge

An edge A -> B means some module of package A imports package B (test and bench files are left out).
"""

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The rule, lowest layer first: a package may import only packages of lower layers (DESIGN.md, "Layers").
LAYERS = [["store"], ["training"], ["tokenizer", "prior"], ["generation"], ["evaluation"], ["pipelines"]]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
NOT_PACKAGES = {"tests", "bench", ".venv", "build", "checkpoints"}


def packages(root=REPO):
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name not in NOT_PACKAGES)


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


def test_every_package_has_a_layer():
    assert set(packages()) == set(LAYER_OF)


def test_imports_point_down_only():
    upward = [f"{module} imports {target}" for name, edges in graph().items() for module, target in edges
              if LAYER_OF[target] >= LAYER_OF[name]]
    assert upward == []


def test_no_library_and_not_the_store_imports_the_commands():
    into_commands = [module for name, edges in graph().items() if name != "pipelines"
                     for module, target in edges if target == "pipelines"]
    assert into_commands == []
    assert graph()["store"] == set()


def test_the_checker_sees_every_form_of_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import os\nimport pipelines.cli\nfrom store import runs\n"
                      "def f():\n    from prior.model import Prior\n    from . import sibling\n")
    assert imported_packages(source, set(LAYER_OF)) == {"pipelines", "store", "prior"}


def test_the_design_map_in_the_repository_states_these_layers():
    design = (REPO / "DESIGN.md").read_text()
    drawn = re.findall(r"^(\w+)/ ", design.split("## Layers", 1)[1].split("```")[1], flags=re.M)
    drawn += re.findall(r"^\w+/\s+(\w+)/ ", design.split("## Layers", 1)[1].split("```")[1], flags=re.M)
    assert sorted(drawn) == sorted(LAYER_OF)


def test_the_documented_library_examples_import_no_command():
    blocks = [block for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
              for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]
    assert blocks, "the documentation shows the library"
    imports = [line for block in blocks for line in block.splitlines() if re.match(r"\s*(from|import) ", line)]
    assert imports and not [line for line in imports if re.search(r"\bpipelines\b", line)]


def test_every_package_is_installed_by_pyproject():
    import tomllib

    installed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert [name for name in packages() if name not in installed] == []
    assert "bench" not in installed and "tests" not in installed


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
