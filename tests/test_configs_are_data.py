"""Configs are data: no code in the package or the scripts assigns a field of a config to change behaviour at run
time (pass an argument, or build a new config with ``config.with_changes(...)`` / ``to_dict()`` + overrides)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _is_config(node: ast.AST) -> bool:
    """``config``, ``model_config``, ``x.config``, ``self.model.config``... (not the ``datasets.config`` module)."""
    if isinstance(node, ast.Name):
        return node.id.endswith("config")
    if isinstance(node, ast.Attribute):
        return node.attr.endswith("config") and not (isinstance(node.value, ast.Name) and node.value.id == "datasets")
    return False


def config_assignments(source: str) -> list[tuple[int, str]]:
    """(line, field) of every assignment to a public field of a config in ``source``, ``setattr`` included.

    Private attributes (``config._commit_hash``, which transformers itself sets and never serialises) are not
    settings and are left out."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = [
                t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])
            ]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            if node.args and _is_config(node.args[0]):
                field = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else "?"
                found.append((node.lineno, str(field)))
        for target in targets:
            if isinstance(target, ast.Attribute) and _is_config(target.value) and not target.attr.startswith("_"):
                found.append((node.lineno, target.attr))
    return sorted(found)


def test_the_detector_finds_config_assignments():
    source = "model.config.task_batchnorm_images = 5\nconfig.views += ['x']\nsetattr(self.config, 'a', 1)\n"
    source += (
        "a, cfg.config.b = 1, 2\nmodel.config = model.config.with_changes(a=1)\nmodel.config._commit_hash = 'x'\n"
    )
    source += "datasets.config.HF_DATASETS_CACHE = 'x'\nconfig_value = 3\n"
    assert config_assignments(source) == [(1, "task_batchnorm_images"), (2, "views"), (3, "a"), (4, "b")]


def test_no_code_assigns_a_config_field():
    files = sorted((ROOT / "sgps_hf").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    assert len(files) > 50
    found = {
        (str(path.relative_to(ROOT)), field, line)
        for path in files
        for line, field in config_assignments(path.read_text(encoding="utf-8"))
    }
    offending = sorted(found)
    assert not offending, offending
