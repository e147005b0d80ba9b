"""The layer rules of ARCHITECTURE.md, stated as a test so they cannot erode.

schemas <- infra <- producers / stream_app / consumers <- orchestration <- demo, bench
(tests: anything). Services never import each other, orchestration, nor infra.local (the
clusters' process management). Orchestration knows the services only through their
settings: of stream_app and consumers it imports the settings modules alone, and those
load no torch and no Faust. torch is imported only under stream_app/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "schemas",
    "infra",
    "producers",
    "stream_app",
    "consumers",
    "orchestration",
    "demo",
    "bench",
)
# What each package may import of ours (itself always).
ALLOWED = {
    "schemas": set(),
    "infra": {"schemas"},
    "producers": {"schemas", "infra"},
    "stream_app": {"schemas", "infra"},
    "consumers": {"schemas", "infra"},
    "orchestration": {"schemas", "infra", "producers", "stream_app", "consumers"},
    "demo": {"schemas", "infra", "producers", "stream_app", "consumers", "orchestration"},
    "bench": {"schemas", "infra", "producers", "stream_app", "consumers", "orchestration", "demo"},
}
SERVICES = ("producers", "stream_app", "consumers")
# The only modules of stream_app and consumers orchestration may import: their settings
# (group ids, ports, module names, the sink's metrics port), and the read API's
# readiness probe (where it listens, whether it serves).
ORCHESTRATION_READS = {
    "stream_app.settings",
    "consumers.settings",
    "consumers.api.launch",
}


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


def _imported_modules(path: Path) -> list[str]:
    """Like `imports`, with `from pkg import mod` also counted as `pkg.mod`."""
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_orchestration_reads_only_the_services_settings() -> None:
    wrong = []
    for path in modules("orchestration"):
        for name in _imported_modules(path):
            parts = name.split(".")
            if parts[0] not in ("stream_app", "consumers") or len(parts) == 1:
                continue  # `from stream_app import x` is judged as stream_app.x
            # A listed module, something inside it, or a package on the way to one.
            if not any(
                name == m or name.startswith(m + ".") or m.startswith(name + ".")
                for m in ORCHESTRATION_READS
            ):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_orchestration_loads_no_torch_and_no_faust() -> None:
    """Everything orchestration imports (the services' settings too) in a fresh process."""
    mods = sorted(
        "orchestration." + p.stem for p in modules("orchestration") if p.stem != "__main__"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'faust'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "", f"orchestration loads {out.stdout.strip()}"
