"""Shared fixtures: small phantoms made once per session, and the optional real-data folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
sys.path.insert(0, str(ROOT))

requires_real_data = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} is absent")


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """2 CT + 3 MR subjects at 64 px: enough for statistics, quick to make."""
    from bundle.data.phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(out, n_ct=2, n_mr=3, seed=3, size=64)
    return out


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` as a user would, capturing its output."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a heavy check outside the CI suite (make test leaves it out, make test-all runs it)")
