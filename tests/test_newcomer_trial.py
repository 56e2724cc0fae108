"""Small things a newcomer met (issue 26, items 6 and 8): q.summary() aligned for long layer names,
check_qform naming the check a form that ignores dtype= fails, load_digits() without a folder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl
from experiments.common.data import load_digits
from fishleg_core.qforms.diagonal import DiagonalQ
from fishleg_core.qforms.positive import PositiveTensor
from fishleg_core.testing import check_qform


def test_the_summary_columns_line_up_for_long_layer_names():
    model = nn.Sequential()
    model.add_module("encoder_block_with_a_name_longer_than_the_column", nn.Linear(784, 10))
    model.add_module("act", nn.Tanh())
    model.add_module("head", nn.Linear(10, 10))
    lines = fl.build_model_q(model).summary().splitlines()
    table = lines[:4]  # header, two blocks, total
    for column in ("layer", "shape", "form"):  # left-aligned: each starts where its header does
        start = table[0].index(column)
        assert all(line[start - 2 : start] == "  " for line in table), column
    for column in ("params", "aux params", "ratio"):  # right-aligned: each ends where its header does
        end = table[0].index(column) + len(column)
        assert all(line[end - 1] != " " and line[end : end + 1] in ("", " ") for line in table[1:]), column
    assert table[1].split()[:2] == ["encoder_block_with_a_name_longer_than_the_column", "Linear"]


class IgnoresDtype(DiagonalQ):
    """The diagonal form, its λ made in the default dtype whatever dtype= says."""

    def __init__(self, shape, init_scale=1.0, *, device=None, dtype=None):
        super().__init__(shape, init_scale, device=device)
        self.D = PositiveTensor(torch.full(self.shape, self.init_scale, device=device))


@pytest.fixture
def ignores_dtype():
    fl.QFORMS.register("test_ignores_dtype")(IgnoresDtype)
    yield
    fl.QFORMS.unregister("test_ignores_dtype")


def test_check_qform_names_the_check_a_form_that_ignores_dtype_fails(ignores_dtype):
    with pytest.raises(
        AssertionError,
        match=r"check 'device and dtype' failed: dtype=torch.float32 gave parameters "
        r"of \['torch.float64'\]: the factory must pass dtype=",
    ):
        check_qform("test_ignores_dtype")


class FailsInside(DiagonalQ):
    def to_dense(self):
        raise RuntimeError("shape mismatch in the user's code")


def test_check_qform_reports_an_error_inside_a_check_as_that_check_failing():
    fl.QFORMS.register("test_fails_inside")(FailsInside)
    try:
        with pytest.raises(AssertionError, match=r"check '.*' failed: RuntimeError: shape mismatch in the user's code"):
            check_qform("test_fails_inside")
    finally:
        fl.QFORMS.unregister("test_fails_inside")


def test_load_digits_without_a_folder_gives_the_shipped_digits():
    pixels, labels = load_digits()
    assert pixels.shape == (5000, 784) and sorted(set(labels.tolist())) == list(range(10))
    assert "None (the default)" in (load_digits.__doc__ or "")
