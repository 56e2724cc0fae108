"""What ``run_study`` returns: the configuration, the pre-training and one row per form and reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.a6.config import StudyConfig

Row = dict[str, Any]
"""One form or reference: its name, held-out A, A*, e per probe and their means, curves, seconds, ...
(the entries of ``results.json``; see ``experiments.report.result_row``)."""


@dataclass
class StudyResults:
    """The study's results, as written to ``out/results.json``; with several seeds, the rows combine them
    (``experiments.a6.seeds``) and ``runs`` holds each seed's own results. ``skipped``: the references that
    could not be computed on this model, with the reason."""

    config: StudyConfig
    out: Path
    pretraining: dict[str, Any]
    forms: list[Row]
    references: list[Row]
    runs: list[StudyResults] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        """The row of the form or reference ``name``."""
        rows = {row["name"]: row for row in self.forms + self.references}
        if name not in rows:
            raise KeyError(f"no row {name!r}; rows: {', '.join(rows)}")
        return rows[name]

    def normalized_errors(self) -> dict[str, float]:
        """Held-out normalised error e (mean over probes, and seeds) per form and reference, in table order."""
        return {row["name"]: row["mean_normalized_error"] for row in self.forms + self.references}
