"""The layers of ../shared/DESIGN.md, read from the source: imports point down only, so the rule cannot rot."""

import re

from bench.import_graph import REPO, graph, imported_packages, packages

# Lowest first; a package may import only packages of lower layers.
LAYERS = [["store"], ["training"], ["tokenizer", "prior"], ["generation"], ["evaluation"], ["pipelines"]]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


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


def test_the_readme_library_examples_import_no_command():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks, "the README shows the library"
    imports = [line for block in blocks for line in block.splitlines() if re.match(r"\s*(from|import) ", line)]
    assert imports and not [line for line in imports if re.search(r"\bpipelines\b", line)]


def test_every_package_is_installed_by_pyproject():
    import fnmatch
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert [name for name in packages() if not any(fnmatch.fnmatch(name, pattern) for pattern in include)] == []
