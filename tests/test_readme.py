"""README.md stays true: its complete examples run, and the code it shows from the library is the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
PROGRAMS = [block for block in BLOCKS if block.startswith("import")]


def test_the_readme_has_its_examples():
    assert len(PROGRAMS) == 5  # training, classification, frozen-model fit, a form of one's own, a new layer type
    assert "make study" in README and "make test" in README


@pytest.mark.parametrize("program", PROGRAMS, ids=["training", "classification", "frozen-fit", "own-form", "layer-type"])
def test_readme_programs_run(program, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(program)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in re.findall(r"^# (\[.*\])$", program, flags=re.M):  # printed results shown as comments
        assert expected in done.stdout


@pytest.mark.parametrize("path", ["fishleg_core/qforms/diag_low_rank.py", "fishleg_core/likelihoods/poisson.py"])
def test_readme_shows_the_library_files_verbatim(path):
    assert (ROOT / path).read_text().rstrip() in README
