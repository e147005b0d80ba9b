"""The layer rules of ARCHITECTURE.md, stated as a test so they cannot erode.

schemas <- infra <- producers / stream_app / consumers <- demo, bench (tests: anything).
Services never import each other nor infra.local (the clusters' process management);
torch is imported only under stream_app/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "infra", "producers", "stream_app", "consumers", "demo", "bench")
# What each package may import of ours (itself always).
ALLOWED = {
    "schemas": set(),
    "infra": {"schemas"},
    "producers": {"schemas", "infra"},
    "stream_app": {"schemas", "infra"},
    "consumers": {"schemas", "infra"},
    "demo": {"schemas", "infra", "producers", "stream_app", "consumers"},
    "bench": {"schemas", "infra", "producers", "stream_app", "consumers", "demo"},
}
SERVICES = ("producers", "stream_app", "consumers")


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = []
    for path in modules(package):
        for name in imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", SERVICES)
def test_services_never_import_the_cluster_process_management(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in imports(path)
        if name == "infra.local" or name.startswith("infra.local.")
    ]
    assert not wrong, "\n".join(wrong)


def test_torch_is_imported_only_under_stream_app() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in PACKAGES
        if package != "stream_app"
        for path in modules(package)
        for name in imports(path)
        if name.split(".")[0] == "torch"
    ]
    assert not wrong, "\n".join(wrong)
