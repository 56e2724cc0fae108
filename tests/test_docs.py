"""README.md and docs/ stay true: their runnable examples run, their links resolve, the numbers they quote
from result files are those files' numbers, and they hold neither copies of source files, test counts nor
text about the machine's load.

Conventions for pages (checked here):

- a fenced ```python block that begins with an import or a docstring is a program: it is run, in a namespace
  of its own, from the repository root, unless the line just before its fence is an HTML comment
  ``<!-- skip: reason -->``; a comment line ``# [...]`` in it is printed output that the run must show. A block
  that begins otherwise is a fragment (a call, a function to paste into one's own code) and is not run;
- a table right after a line ``<!-- table from PATH -->`` (blank lines between allowed) quotes the result
  file PATH: each of its rows must match a row of a table in PATH on every column the two tables share.
"""

from __future__ import annotations

import ast
import inspect
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
from fishleg_core import FishLeg
from fishleg_core.plugins import unload_plugin

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = sorted(
    path for package in ("fishleg_core", "experiments", "benchmarks") for path in (ROOT / package).rglob("*.py")
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
SKIP = re.compile(r"<!--\s*skip\b[^>]*-->\s*$")
TABLE_FROM = re.compile(r"^<!--\s*table from (\S+)\s*-->\s*$")
COPIED_LINES = 10  # this many consecutive non-blank lines of a source file in a page count as a copy


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(page: Path, language: str) -> list[tuple[int, str, bool]]:
    """(line number, code, skipped) of the page's fenced blocks in ``language``."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) != language:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, match.start()) + 1, match.group(2), bool(SKIP.match(before))))
    return found


PROGRAM_START = re.compile(r'^(import |from \S+ import |""")')
PROGRAMS = {
    f"{rel(page)}:{line}": code
    for page in PAGES
    for line, code, skipped in blocks(page, "python")
    if PROGRAM_START.match(code) and not skipped
}

RUNNER = """
import contextlib, io, json, sys, traceback
programs, results = json.load(open(sys.argv[1])), {}
for name, code in programs.items():
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = {"stdout": out.getvalue(), "error": None}
    except BaseException:
        results[name] = {"stdout": out.getvalue(), "error": traceback.format_exc()}
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def program_runs(tmp_path_factory) -> dict[str, dict]:
    """Every runnable block, each in a namespace of its own, in one fresh process (one import of torch)."""
    folder = tmp_path_factory.mktemp("programs")
    (folder / "programs.json").write_text(json.dumps(PROGRAMS))
    (folder / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(folder / "runner.py"), str(folder / "programs.json"), str(folder / "runs.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((folder / "runs.json").read_text())


def test_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md is the front door: at most 250 lines, the rest in docs/"
    assert "make study" in text and "make test" in text
    assert len(PROGRAMS) >= 10  # the quickstarts and the guide's and extension pages' examples


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_runnable_blocks_run(name, program_runs):
    run = program_runs[name]
    assert run["error"] is None, run["error"][-2000:]
    for expected in re.findall(r"^# (\[.*\])$", PROGRAMS[name], flags=re.M):  # printed results shown as comments
        assert expected in run["stdout"]


def windows(lines: list[str]) -> set[tuple[str, ...]]:
    kept = [line.strip() for line in lines if line.strip()]
    return {tuple(kept[i : i + COPIED_LINES]) for i in range(len(kept) - COPIED_LINES + 1)}


def test_no_page_copies_a_source_file():
    """Pages link source files instead of copying them: no run of COPIED_LINES consecutive non-blank lines
    of a library, experiment or benchmark module appears in a page's code."""
    source_windows = {window: path for path in SOURCES for window in windows(path.read_text().splitlines())}
    for page in PAGES:
        for match in FENCE.finditer(page.read_text()):
            for window in windows(match.group(2).splitlines()):
                assert window not in source_windows, (
                    f"{rel(page)} copies {rel(source_windows[window])} (from {window[0]!r}): link the file instead"
                )


def test_no_page_states_a_test_count():
    for page in PAGES:
        found = re.findall(r"\b\d[\d,]*\s+(?:tests|test cases)\b", page.read_text())
        assert not found, f"{rel(page)} states a test count ({found[0]!r}): it goes stale"


def test_no_page_writes_about_machine_load():
    pattern = re.compile(r"load average|quiet machine|loaded machine|this session|shared machine", flags=re.I)
    for page in PAGES:
        found = pattern.findall(page.read_text())
        assert not found, f"{rel(page)} writes about the circumstances of a run ({found[0]!r})"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(heading) for heading in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{rel(page)} links {target!r}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{rel(page)} links {target!r}: no such heading in {rel(resolved)}"


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every markdown table in ``text``, cells stripped of bold markers."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def cells(line: str) -> list[str]:
    return [cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]


def quoted_tables(page: Path) -> list[tuple[str, list[str], list[list[str]]]]:
    """(source file, header, rows) of the tables the page marks as quoted."""
    lines, found = page.read_text().splitlines(), []
    for i, line in enumerate(lines):
        match = TABLE_FROM.match(line)
        if match:
            start = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
            (header, rows) = tables("\n".join(lines[start:]))[0]
            assert lines[start].startswith("|"), f"{rel(page)}:{i + 1}: no table right after the marker"
            found.append((match.group(1), header, rows))
    return found


QUOTES = [pytest.param(page, id=rel(page)) for page in PAGES if quoted_tables(page)]


@pytest.mark.parametrize("page", QUOTES)
def test_quoted_numbers_match_their_result_files(page):
    for source, header, rows in quoted_tables(page):
        path = ROOT / source
        assert path.exists(), f"{rel(page)} quotes {source}, which does not exist"
        originals = tables(path.read_text())
        for row in rows:
            quoted = dict(zip(header, row))
            matches = [
                shared
                for original_header, original_rows in originals
                for original in original_rows
                if (shared := [name for name in header if name in original_header])
                and header[0] in shared
                and all(quoted[name] == dict(zip(original_header, original))[name] for name in shared)
            ]
            assert matches, f"{rel(page)}: the row {row} quoted from {source} is not in it"
            assert len(matches[0]) >= 2, f"{rel(page)}: the table shares only its first column with {source}"


def test_quoted_tables_are_checked():
    """The marker convention is in use on the results pages, so the check above is not vacuous."""
    quoted = {source for page in PAGES for source, _, _ in quoted_tables(page)}
    assert {"docs/a6/summary.md", "docs/deep_linear/summary.md", "docs/autoencoder_training/summary.md"} <= quoted


def test_compare_your_own_form(tmp_path, monkeypatch):
    """README's "Compare your own form": the plugin file, the command that names it (on tiny settings) and
    the Python program of docs/extending/plugins.md, run as a user would, next to each other in a folder."""
    readme = README.read_text()
    plugin = next(code for _, code, _ in blocks(README, "python") if code.startswith('"""my_forms.py'))
    command = next(code for _, code, _ in blocks(README, "bash") if "--plugins" in code)
    program = next(code for _, code, _ in blocks(ROOT / "docs/extending/plugins.md", "python") if "compare.py" in code)
    (tmp_path / "my_forms.py").write_text(plugin)
    (tmp_path / "compare.py").write_text(program)
    rates = re.search(r"`my_study.yaml`: `(aux_lr: \{.*?\})`", readme.replace("\n", " ")).group(1)
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


def test_fishlegs_defaults_are_the_codes():
    """The defaults table of the project guide states every argument of FishLeg with its default."""
    page = (ROOT / "docs/guide/using_in_your_project.md").read_text()
    section = page.split("## FishLeg's defaults", 1)[1].split("\n## ", 1)[0]
    ((header, rows),) = tables(section)
    assert header[:2] == ["argument", "default"]
    stated = {}
    for row in rows:
        names = re.findall(r"`(\w+)`", row[0])
        values = [value.strip().strip("`") for value in row[1].split(" / ")]
        assert len(names) == len(values), f"row {row[0]!r}: one default per argument, separated by ' / '"
        stated.update(zip(names, values))
    parameters = inspect.signature(FishLeg.__init__).parameters
    assert set(stated) == set(parameters) - {"self", "model", "likelihood"}
    for name, value in stated.items():
        default = parameters[name].default
        if default is inspect.Parameter.empty:
            assert value == "required", f"{name} has no default"
        else:
            assert ast.literal_eval(value) == default, f"{name}: the guide says {value}, the code {default!r}"
