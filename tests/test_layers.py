"""The package's layering, checked on the source: packages talk through public faces.

* Only ``storecomp.io`` imports the native module.
* No module imports a private (``_``-prefixed) name or module of another top-level
  package of storecomp (inside its own package, private modules are the point).
* Arrows point down: ``store`` never imports ``data``, ``kvcache``, ``cli``,
  ``bench`` or ``integrations``; ``io`` imports none of them nor ``store``;
  ``data`` and ``kvcache`` never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "storecomp"
FORBIDDEN = {
    "io": {"store", "data", "kvcache", "cli", "bench", "integrations"},
    "store": {"data", "kvcache", "cli", "bench", "integrations"},
    "data": {"kvcache", "cli", "bench", "integrations"},
    "kvcache": {"data", "cli", "bench", "integrations"},
}


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(module imported, name imported or "", line) for every storecomp import in ``path``, absolute dotted."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("storecomp"):
                out += [(mod, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("storecomp")]
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_packages_talk_through_public_faces(path: Path) -> None:
    own = path.relative_to(ROOT).parts[0] if len(path.relative_to(ROOT).parts) > 1 else ""
    bad = []
    for mod, name, line in _imports(path):
        parts = mod.split(".")[1:] + ([name] if name else [])
        target = parts[0] if parts else ""
        if "_native" in parts and own != "io":
            bad.append(f"line {line}: {mod} {name}: only storecomp.io touches the native module")
        if target != own and target not in ("", "errors", "config", "optional", "crc", "redact", "crypto", "metrics"):
            private = [p for p in parts[1:] if p.startswith("_") and p != "__version__"]
            if private:
                bad.append(f"line {line}: {mod} {name}: private name of package {target!r}")
        if target in FORBIDDEN.get(own, set()):
            bad.append(f"line {line}: {mod}: package {own!r} must not import {target!r} (arrows point down)")
    assert not bad, f"{path.relative_to(ROOT)}:\n" + "\n".join(bad)
