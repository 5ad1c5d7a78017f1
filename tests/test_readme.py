"""The README's commands and its Python example are what users run first: keep them working."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHARED = ROOT.parent / "shared" / "data"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", README, re.S)


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = [b for b in _blocks("bash") if "pip install" in b]
    assert len(setup) == 2, setup
    main_cmd, test_cmd = setup
    for cmd in setup:
        assert "torch==2.14.1 torchvision==0.29.1" in cmd and "\n" not in cmd.strip()
    assert "sgps quickstart" in main_cmd and "sgps demo" in main_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "README.md" in ci and "pytest" in ci and "set -euo pipefail" in ci


@pytest.mark.e2e
@pytest.mark.integration
def test_readme_python_example_runs_against_a_local_hub(hub_env, tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from sgps_hf import DEFAULT_CHECKPOINT

    if not (Path(DEFAULT_CHECKPOINT) / "model.safetensors").is_file():
        pytest.fail(f"the bundled checkpoint is missing: {DEFAULT_CHECKPOINT}")
    (example,) = [block for block in _blocks("python") if "push_to_hub" in block]
    repo_id = hub_env.new_repo_id("skin-lesions-classifier")
    code = example.replace("my-user/skin-lesions-classifier", repo_id)
    code = code.replace('Path("../shared/data/', f'Path("{SHARED}/')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    labels = ["melanoma", "nevus", "basal_cell_carcinoma", "actinic_keratosis", "seborrheic_keratosis"]
    assert str(labels) in result.stdout
    assert (tmp_path / "skin-lesions-classifier" / "model.safetensors").is_file()
