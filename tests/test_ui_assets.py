"""javascript/tipo.js and style.css agree with the Python side on every class name, and the
script parses (with Node.js where it is installed)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tipo.diff import css_class

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "javascript" / "tipo.js"
STYLE = ROOT / "style.css"


def python_classes() -> set[str]:
    """Every ``css_class("a", "b")`` call with literal arguments in tipo/."""
    found = set()
    for path in (ROOT / "tipo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            literal = isinstance(node, ast.Call) and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
            if literal and getattr(node.func, "id", None) == "css_class":
                found.add(css_class(*(a.value for a in node.args)))
    return found


def js_classes(pattern: str) -> set[str]:
    calls = re.findall(pattern, SCRIPT.read_text(encoding="utf-8"))
    return {css_class(*re.findall(r'"([^"]+)"', args)) for args in calls}


def test_every_class_the_stylesheet_and_script_use_is_made_somewhere():
    made_by_python = python_classes()
    set_by_script = js_classes(r"classList\.(?:toggle|add|remove)\(tipoClass\(([^)]*)\)")
    looked_up_by_script = js_classes(r"\.\$\{tipoClass\(([^)]*)\)\}")
    styled = set(re.findall(r"\.(tipo-[a-z-]+)", STYLE.read_text(encoding="utf-8")))
    assert {"tipo-diff-added", "tipo-nl-prompt", "tipo-send-to-prompt", "tipo-preview-text"} <= made_by_python
    assert looked_up_by_script - set_by_script <= made_by_python, "the script looks for classes nobody sets"
    assert styled <= made_by_python | set_by_script, "style.css styles classes nobody sets"
    assert "tipo-diff-added" in styled and "tipo-diff-added-only" in set_by_script


def test_the_stylesheet_follows_the_theme_in_light_and_dark():
    style = STYLE.read_text(encoding="utf-8")
    assert style.count("{") == style.count("}")
    assert "var(--body-text-color)" in style and "var(--block-background-fill)" in style
    assert ".dark .tipo-diff {" in style, "the highlight's tint is set apart for the dark theme"
    fixed = re.findall(r"^\s*(?:color|background(?:-color)?):\s*(#[0-9a-f]+|rgba?\([^)]*\))", style, flags=re.MULTILINE | re.IGNORECASE)
    assert not fixed, f"text and fill colours come from theme variables (or tints set per theme): {fixed}"


def test_the_script_is_valid_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    done = subprocess.run([node, "--check", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
