"""Bundle metadata: valid for MONAI's schema offline, and consistent with the pinned requirements."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT


def test_verify_metadata_passes_offline_against_the_bundled_schema():
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
         "--filepath", "configs/schema/meta_schema_20240725.json"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_metadata_describes_image_in_liver_out_and_matches_pins():
    meta = json.loads((ROOT / "configs/metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver"}
    assert meta["version"] in meta["changelog"]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert pins["monai"] == meta["monai_version"] and pins["torch"] == meta["pytorch_version"] and pins["numpy"] == meta["numpy_version"]
    for package, version in meta["required_packages_version"].items():
        assert pins[package] == version, package
