"""Atomic writes and results cached under a key of the settings that produced them."""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary file next to ``path``, then ``os.replace`` it into place, so ``path`` holds
    either its old content or the complete new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_json(path: Path, value: Any) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n"))


def save_keyed(path: Path, key: str, value: Any) -> None:
    """Store ``value`` with the key of the settings that made it (JSON for a ``.json`` path, else torch)."""
    record = {"key": key, "value": value}
    if path.suffix == ".json":
        save_json(path, record)
    else:
        write_atomic(path, lambda p: torch.save(record, p))


def load_keyed(path: Path, key: str, what: str) -> Any | None:
    """The value stored at ``path`` if it was made with settings and code of this ``key`` (announced on
    stderr: ``<what>: reused from <path>``); None if absent, unreadable or made otherwise (a note on stderr
    says which, as it is then recomputed)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        print(f"a6_study: note: {path} is unreadable ({error}); recomputing it", file=sys.stderr)
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        print(f"a6_study: note: {path} was made with other settings or code; recomputing it", file=sys.stderr)
        return None
    print(f"a6_study: {what}: reused from {path}", file=sys.stderr)
    return record["value"]


def write_report(out: Path, report: dict[str, Any], figure: str, plot: Callable[[Path], None], table: str) -> None:
    """``out/results.json`` (the report), ``out/<figure>`` (drawn by ``plot``) and ``out/summary.md`` (``table``,
    also printed)."""
    save_json(out / "results.json", report)
    write_atomic(out / figure, plot)
    write_atomic(out / "summary.md", lambda path: path.write_text(table))
    print(table)
