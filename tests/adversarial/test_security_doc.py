"""docs/security.md names a test for every threat: each one must exist."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "security.md")
#: `path.py::name[param]`, or `::name` for another test of the path before it.
REF = re.compile(r"`((?:tests|fuzz)/[\w/]+\.py)(?:::(\w+))?(?:\[[^\]]*\])?`|`::(\w+)`")


def _names(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_named_in_security_md_exists():
    with open(DOC) as f:
        text = f.read()
    refs = []
    for line in text.splitlines():
        last = None
        for m in REF.finditer(line):
            if m.group(1):
                last = m.group(1)
                refs.append((last, m.group(2)))
            elif last is not None:
                refs.append((last, m.group(3)))
    assert len(refs) > 60
    missing = []
    for path, name in refs:
        if not os.path.exists(os.path.join(ROOT, path)):
            missing.append(path)
        elif name is not None and name not in _names(path):
            missing.append(f"{path}::{name}")
    assert not missing, missing
