"""The layers of README.md's "Layout": the model layer (``anchor_free``, ``pseudo_iou``,
``autoassign``) never imports the application layer (``anchor_free_app``) or the scripts, and
the model packages import each other only downwards (the detectors use ``anchor_free``)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# package -> our packages it may import
ALLOWED = {
    "anchor_free": set(),
    "pseudo_iou": {"anchor_free"},
    "autoassign": {"anchor_free"},
    "anchor_free_app": {"anchor_free", "pseudo_iou", "autoassign"},
}


def _imported_packages(path: pathlib.Path):
    """Top-level names of the absolute imports of ``path`` (module level and inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package):
    ours = set(ALLOWED) | {"train_net", "demo", "tools", "benchmarks", "tests"}
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line in _imported_packages(path)
        if name in ours and name != package and name not in ALLOWED[package]
    ]
    assert not bad, "imports from a higher layer or a sibling:\n" + "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from anchor_free_app.config import setup_cfg\n")
    assert ("anchor_free_app", 4) in list(_imported_packages(module))
