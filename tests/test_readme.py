"""README.md stays true: its complete examples run, and the code it shows from the library is the code."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_study import TINY_STUDY

from experiments.a6 import study as a6_study
from fishleg_core.plugins import unload_plugin

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
PROGRAMS = [block for block in BLOCKS if block.startswith("import")]


def test_the_readme_has_its_examples():
    # training, classification, frozen-model fit, tuple/dict outputs with tied weights, a form of one's own,
    # groups, a new layer type
    assert len(PROGRAMS) == len(PROGRAM_IDS)
    assert "make study" in README and "make test" in README


PROGRAM_IDS = ["training", "classification", "frozen-fit", "architectures", "own-form", "groups", "layer-type"]


@pytest.mark.parametrize("program", PROGRAMS, ids=PROGRAM_IDS)
def test_readme_programs_run(program, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(program)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in re.findall(r"^# (\[.*\])$", program, flags=re.M):  # printed results shown as comments
        assert expected in done.stdout


@pytest.mark.parametrize(
    "path",
    ["fishleg_core/qforms/diag_low_rank.py", "fishleg_core/likelihoods/poisson.py", "fishleg_core/fisher/empirical.py"],
)
def test_readme_shows_the_library_files_verbatim(path):
    assert (ROOT / path).read_text().rstrip() in README


def test_readme_shows_the_tridiagonal_form_as_it_is():
    shown = next(block for block in BLOCKS if 'COUPLED_FORMS.register("tridiag_kron")' in block)
    source = (ROOT / "fishleg_core/coupled/tridiag_kron.py").read_text()
    assert all(line.strip() in source for line in shown.splitlines())


def test_readme_compare_your_own_form(tmp_path, monkeypatch):
    """ "Compare your own form": the plugin file, the command that names it (on tiny settings) and the Python
    program, run as a user would, next to each other in a folder of their own."""
    plugin = next(block for block in BLOCKS if block.startswith('"""my_forms.py'))
    program = next(block for block in BLOCKS if block.startswith("# compare.py"))
    command = next(block for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S) if "--plugins" in block)
    (tmp_path / "my_forms.py").write_text(plugin)
    (tmp_path / "compare.py").write_text(program)
    rates = re.search(r"`my_study.yaml`: `(aux_lr: \{.*?\})`", README.replace("\n", " ")).group(1)
    (tmp_path / "my_study.yaml").write_text(f"{rates}\n{TINY_STUDY}")
    done = subprocess.run(
        [sys.executable, "compare.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = dict(re.findall(r"^(\w+): held-out e = ([0-9.]+)$", done.stdout, flags=re.M))
    assert list(printed) == [
        "diagonal",
        "kron",
        "diag_kron",
        "identity",
        "kfac",
        "kfac_curvlinops",
        "kfac_curvlinops_rescaled",
        "ekfac_curvlinops",
    ]
    assert 0 < float(printed["diag_kron"]) < 1.5

    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "experiments.a6"]
    monkeypatch.chdir(tmp_path)
    try:
        assert a6_study.main([*words[3:], "--no-progress", "--threads", "1"]) == 0
    finally:
        unload_plugin("my_forms")
    rows = json.loads((tmp_path / "results" / "my-forms" / "results.json").read_text())["forms"]
    assert [row["name"] for row in rows] == ["diagonal", "kron", "diag_kron"] and rows[2]["lr"] == 0.1
