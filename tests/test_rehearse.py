"""invoke rehearse: a whole migration on the lab, from one command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chatmail_migrate.lab import Lab

from .helpers import BIN, REPO

# Labs named by the README ("cmlab", "rehearse"): never two of these at once.
pytestmark = pytest.mark.xdist_group("readme")


def test_rehearse_runs_a_whole_migration_and_cleans_up(lab_available, tmp_path: Path):
    result = subprocess.run(
        [str(BIN / "invoke"), "rehearse", "--accounts", "20", "--messages", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    out = result.stdout
    assert "cmdeploy LAB STAND-IN" in out
    assert "(as the operator) relay.lab.example A →" in out
    assert "[7/7] enable-mail done in" in out
    assert "no differences" in out and "content (sha256)" in out
    assert "rehearse: mail was down for" in out and "rehearse: PASSED" in out
    assert Lab.load("rehearse") is None, "the rehearsal's lab is taken down"
