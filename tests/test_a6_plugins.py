"""Plugins and the Python API of the A.6 study: a form in the user's own file, compared without editing the
library, and refitted when the file changes."""

from __future__ import annotations

import json

import pytest
from tiny_study import TINY_STUDY

import fishleg_core as fl
from experiments.a6 import study as a6_study
from experiments.a6.config import resolve
from fishleg_core.plugins import PluginError, load_plugins, unload_plugin

PLUGIN = '''
"""A user's form: the diagonal form with its product scaled."""
from fishleg_core import QFORMS
from fishleg_core.qforms.diagonal import DiagonalQ

SCALE = {scale}

@QFORMS.register("test_scaled")
class ScaledDiagonalQ(DiagonalQ):
    def multiply(self, G):
        return SCALE * super().multiply(G)
'''


@pytest.fixture
def plugin(tmp_path):
    """A plugin file registering the QForm ``test_scaled``; unloaded after the test."""
    path = tmp_path / "user_forms.py"
    path.write_text(PLUGIN.format(scale=1.0))
    yield path
    unload_plugin("user_forms")


def test_an_edited_plugin_file_is_reloaded_and_refitted(plugin, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    arguments = [
        "--plugins",
        str(plugin),
        "--config",
        str(config),
        "--forms",
        "diagonal,test_scaled",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]
    assert a6_study.main(arguments) == 0
    first = json.loads((out / "results.json").read_text())["forms"]
    assert [row["name"] for row in first] == ["diagonal", "test_scaled"]
    capsys.readouterr()

    plugin.write_text(PLUGIN.format(scale=0.01))  # the user edits the form, then runs from Python
    load_plugins([str(plugin)])
    results = a6_study.run_study(resolve(str(config), False, {"forms": "diagonal,test_scaled"}), out, progress=False)
    err = capsys.readouterr().err
    assert "forms/diagonal: reused from" in err and "forms/test_scaled: reused" not in err
    assert results.row("diagonal") == first[0]
    assert results.row("test_scaled")["mean_normalized_error"] != first[1]["mean_normalized_error"]
    assert json.loads((out / "results.json").read_text())["forms"] == results.forms
    assert list(results.normalized_errors()) == ["diagonal", "test_scaled", *a6_study.REFERENCES]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("raise RuntimeError('broken')", "cannot import plugin .*: RuntimeError: broken"),
        ("x = 1", "registered nothing"),
    ],
    ids=["missing", "raises", "registers-nothing"],
)
def test_bad_plugins_are_one_line_errors(content, message, tmp_path, capsys):
    path = tmp_path / "bad_plugin.py"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PluginError, match=message):
        load_plugins(str(path))
    assert a6_study.main(["--plugins", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("a6_study: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_plugins_by_module_name(tmp_path, monkeypatch):
    (tmp_path / "user_forms.py").write_text(PLUGIN.format(scale=2.0))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        [module] = load_plugins("user_forms")
        assert fl.QFORMS.get("test_scaled") is module.ScaledDiagonalQ
        [again] = load_plugins("user_forms")  # loaded again: its registration replaced, not refused
        assert fl.QFORMS.get("test_scaled") is again.ScaledDiagonalQ
    finally:
        unload_plugin("user_forms")
    assert "test_scaled" not in fl.QFORMS
    with pytest.raises(PluginError, match="No module named 'no_such_plugin'"):
        load_plugins("no_such_plugin")
