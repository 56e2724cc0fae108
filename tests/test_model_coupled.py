"""Groups inside ModelQ, build_model_q and FishLeg: choice, validation, dense order, state_dict keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fishleg_core as fl


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), nn.LayerNorm(3))


@pytest.mark.usefixtures("float64")
def test_group_of_non_adjacent_blocks_keeps_the_dense_order_of_param_names():
    model = mlp()
    q = fl.build_model_q(model, coupled=[{"blocks": ["0", "4"], "form": "tridiag_kron"}], init_scale=0.5)
    assert q.param_names == tuple(name for name, _ in model.named_parameters())
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.2 * torch.randn_like(p))
        x = {name: torch.randn_like(p) for name, p in model.named_parameters()}
        y = q(x)
        flat = lambda v: torch.cat([v[name].reshape(-1) for name in q.param_names])  # noqa: E731
        Q = q.to_dense()
    torch.testing.assert_close(flat(y), Q @ flat(x), rtol=1e-12, atol=1e-12)
    sizes = [p.numel() for p in model.parameters()]  # 0.w, 0.b, 2.w, 2.b, 4.w, 4.b, 5.w, 5.b
    start = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    assert Q[start[0] : start[2], start[4] : start[6]].abs().max() > 0  # block 0 couples to block 4
    assert Q[start[2] : start[4], start[0] : start[2]].abs().max() == 0  # block 2 (own group) does not


def test_couple_adjacent_groups_chains_of_linear_layers():
    q = fl.build_model_q(mlp(), couple="adjacent")
    assert [(type(g).__name__, [b.name for b in g.blocks]) for g in q.groups] == [
        ("TridiagKronQ", ["0", "2", "4"]),
        ("BlockQ", ["5"]),
    ]
    assert any(key.startswith("by_blocks.0+2+4.") for key in q.state_dict())
    # a chain breaks where widths do not feed each other
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 6), nn.Linear(7, 3), nn.Linear(3, 2))
    q = fl.build_model_q(model, couple="adjacent")
    assert [[b.name for b in g.blocks] for g in q.groups] == [["0", "1"], ["2", "3"]]


def test_nested_module_names_become_state_dict_keys():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Linear(4, 2))
    q = fl.build_model_q(model, coupled=[{"blocks": ["0.0", "1"], "form": "tridiag_kron", "coupling_init": 0.001}])
    assert {key.split(".")[1] for key in q.state_dict()} == {"0/0+1"}


@pytest.mark.parametrize(
    "coupled,couple,error,match",
    [
        ([{"blocks": ["0", "9"], "form": "tridiag_kron"}], None, ValueError, r"unknown blocks '9'; the model's blocks"),
        ([{"blocks": ["0", "2"], "form": "tridiag"}], None, KeyError, "unknown coupled form 'tridiag'; known: block"),
        (
            [{"blocks": ["0", "2"], "form": "tridiag_kron"}, {"blocks": ["2", "4"], "form": "tridiag_kron"}],
            None,
            ValueError,
            r"block '2' is in two groups \(tridiag_kron over 0\+2 and tridiag_kron over 2\+4\)",
        ),
        ([{"blocks": ["0", "2"], "form": "tridiag_kron"}], "adjacent", ValueError, "block '0' is in two groups"),
        ([{"blocks": ["0"], "form": "tridiag_kron"}], None, ValueError, "at least two blocks; got only '0'"),
        ([{"blocks": ["0", "2"], "form": "block"}], None, ValueError, "exactly one block"),
        ([{"blocks": ["0", "2"]}], None, ValueError, r"coupled\[0\] must be a mapping with 'blocks'"),
        (
            [{"blocks": "0", "form": "tridiag_kron"}],
            None,
            ValueError,
            r"coupled\[0\]\['blocks'\] must be a non-empty list",
        ),
        ([{"blocks": ["0", "0"], "form": "tridiag_kron"}], None, ValueError, "names a block twice"),
        ({"blocks": ["0", "2"], "form": "tridiag_kron"}, None, TypeError, "coupled must be a list"),
        ([{"blocks": ["0", "2"], "form": "tridiag_kron", "K": 2}], None, TypeError, "coupled form 'tridiag_kron'.*K"),
        ([{"blocks": ["0", "2"], "form": "tridiag_kron", "coupling_init": 0.5}], None, ValueError, "coupling_init"),
        (None, "chain", ValueError, "couple must be one of 'adjacent'"),
    ],
)
def test_bad_groupings_are_rejected_with_clear_errors(coupled, couple, error, match):
    with pytest.raises(error, match=match):
        fl.build_model_q(mlp(), coupled=coupled, couple=couple)


def test_couple_without_a_chain_is_an_error():
    with pytest.raises(ValueError, match="no chain of two or more consecutive nn.Linear"):
        fl.build_model_q(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), couple="adjacent")


def test_regrouped_state_dict_does_not_load():
    model = mlp()
    coupled = fl.build_model_q(model, couple="adjacent")
    regrouped = fl.build_model_q(model, coupled=[{"blocks": ["0", "2"], "form": "tridiag_kron"}])
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"by_blocks\.0\+2\."):
        regrouped.load_state_dict(coupled.state_dict())
    data = [torch.randn(8, 4)]
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, couple="adjacent", aux_data=data)
    other = fl.FishLeg(model, "gaussian", lr=0.1, aux_data=data)
    with pytest.raises(ValueError, match=r"(?s)do not fit this optimizer's Q .*by_blocks"):
        other.load_state_dict(optimizer.state_dict())


def test_fishleg_takes_coupled_and_a_hand_built_q():
    model = mlp()
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, coupled=[{"blocks": ["2", "4"], "form": "tridiag_kron"}])
    assert [type(g).__name__ for g in optimizer.q.groups] == ["BlockQ", "TridiagKronQ", "BlockQ"]
    q = fl.build_model_q(model, couple="adjacent", init_scale=0.3)
    assert fl.FishLeg(model, "gaussian", lr=0.1, q=q).q is q


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"forms": {"Linear": "kron"}}, ValueError, "q is given .*forms must not be"),
        ({"sgd_lr": 0.01}, ValueError, "q is given .*sgd_lr"),
        ({"couple": "adjacent"}, ValueError, "q is given .*couple"),
    ],
)
def test_hand_built_q_excludes_the_arguments_that_build_q(kwargs, error, match):
    model = mlp()
    with pytest.raises(error, match=match):
        fl.FishLeg(model, "gaussian", lr=0.1, q=fl.build_model_q(model), **kwargs)


def test_hand_built_q_must_fit_the_model():
    with pytest.raises(TypeError, match="q must be a ModelQ"):
        fl.FishLeg(mlp(), "gaussian", lr=0.1, q="kron")
    with pytest.raises(ValueError, match=r"q must cover every trainable parameter .*missing: \['0.weight'"):
        fl.FishLeg(mlp(), "gaussian", lr=0.1, q=fl.build_model_q(nn.Linear(4, 5)))
    wider = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match=r"block '0' has 0.weight of shape \(6, 4\), the model's is \(5, 4\)"):
        fl.FishLeg(mlp(), "gaussian", lr=0.1, q=fl.build_model_q(wider))
