"""The shape of the package: layers, no import circles, small modules (README: Layout).

These read the source only; they boot no host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chatmail_migrate"
MAX_LINES = 450


def modules() -> list[str]:
    return [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__main__.py"
    ]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # An import circle shows only when a module is imported first: each one alone.
    started = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in modules()
    }
    failed = {}
    for name, proc in started.items():
        errors = proc.communicate()[1]
        if proc.returncode != 0:
            failed[name] = errors.strip().splitlines()[-1:]
    assert len(started) > 50
    assert failed == {}


def test_imports_go_down_the_layers_and_never_in_a_circle():
    # The contracts are in setup.cfg ([importlinter]); lint-imports reads them there.
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports is missing: pip install -e .[test]"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0


def test_no_module_is_longer_than_450_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_folder_of_the_package_is_described_in_the_readme():
    readme = (ROOT / "README.rst").read_text()
    layout = readme[readme.index("\nLayout\n") :]
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert len(folders) >= 7
    assert [f for f in folders if f"``{f}/``" not in layout] == []
