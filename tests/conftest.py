"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype (dense references need the precision)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True, scope="session")
def study_in_one_process():
    """The A.6 study in the test's own process unless a test asks for ``--jobs`` (session-wide, so that the
    module-scoped study runs see it too): the tests that count or replace its functions see every call, and
    forms registered in a test are there."""
    from experiments.a6 import parallel

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "default_jobs", lambda: 1)
        yield
