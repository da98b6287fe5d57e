"""docs/troubleshooting.md cannot rot:

* every message it lists (each ``### `message` `` heading) is still a string
  the code can print, and
* every error message the code raises or prints at a user (ConfigError,
  IdentityError, BootstrapClientError, CommandError, die(), _fatal()) is listed.

Messages are compared as templates: in the code, each ``{...}`` of an f-string
or a log format becomes "…"; in the guide, "…" is written where the text
varies.  A new error message therefore needs a line in the guide (what it
means, what to do) before this test passes.
"""

import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "troubleshooting.md")
#: callable name -> index of its message argument
ERROR_CALLS = {"ConfigError": 0, "IdentityError": 0, "BootstrapClientError": 0,
               "CommandError": 0, "die": 1, "_fatal": 1}
#: the simulator is a research tool, not something an operator runs
SKIP = ("peernet/sim/",)


def _template(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _normalise(re.sub(r"\{[^{}]*\}", "…", node.value))
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "…" for v in node.values]
        return _normalise("".join(parts))
    return None


def _normalise(text):
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"…(\s*…)+", "…", text)


def _sources():
    for path in sorted(glob.glob(os.path.join(ROOT, "peernet", "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(SKIP):
            continue
        with open(path) as f:
            yield rel, ast.parse(f.read(), rel)


def code_strings():
    """Every string template in the code (messages, log formats, parts)."""
    out = set()
    for _, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Constant, ast.JoinedStr)):
                t = _template(node)
                if t:
                    out.add(t)
    return out


def error_messages():
    """{template: "file:line"} of every literal message given to an error call."""
    out = {}
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            index = ERROR_CALLS.get(name)
            if index is None or len(node.args) <= index:
                continue
            t = _template(node.args[index])
            if t and t != "…":
                out.setdefault(t, f"{rel}:{node.lineno}")
    return out


def documented():
    with open(GUIDE) as f:
        text = f.read()
    out = []
    for match in re.finditer(r"^### (`+) ?(.+?) ?\1\s*$", text, re.M):
        out.append(_normalise(match.group(2)))
    return out


def test_the_guide_lists_messages():
    messages = documented()
    assert len(messages) > 80
    assert len(set(messages)) == len(messages), "a message is listed twice"


def test_every_listed_message_is_still_in_the_code():
    strings = code_strings()
    gone = [m for m in documented() if m not in strings]
    assert not gone, ("docs/troubleshooting.md lists messages the code no longer has "
                      "(update or remove them):\n" + "\n".join(gone))


def test_every_error_message_is_documented():
    listed = set(documented())
    missing = [f"{where}: {message}" for message, where in sorted(error_messages().items())
               if message not in listed]
    assert not missing, ("error messages missing from docs/troubleshooting.md (add a "
                         "'### `message`' entry saying what it means and what to do):\n"
                         + "\n".join(missing))


def test_templates_are_compared_with_placeholders():
    # The comparison itself: an f-string's fields and a log format's fields
    # both become "…", and whitespace does not matter.
    tree = ast.parse('f"cannot use {path}: {e.strerror}"\n"listening on {address}"')
    assert [_template(n.value) for n in tree.body] == ["cannot use …: …", "listening on …"]
