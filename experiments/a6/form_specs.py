"""Forms with options, as the study's rows: ``kron_sum:K=3`` on the command line, ``{form: kron_sum, K: 3}`` in
a config file; the canonical text (``name:option=value:...``) labels the row, its cache file and its colour."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class FormSpec:
    """A registered QForm name and the options its constructor gets (besides shape and init_scale)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name`` then ``:option=value`` per option, in the order given (parsed back by ``parse_spec``)."""
        return self.name + "".join(f":{key}={format_value(value)}" for key, value in self.options.items())


def parse_spec(spec: str | Mapping[str, Any]) -> FormSpec:
    """``"kron_sum:K=3:rank=2"`` or ``{"form": "kron_sum", "K": 3}`` as a ``FormSpec``; values of the text
    form are read as bool (true/false), int, float or else string."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("form", None)
        if not isinstance(name, str):
            raise ValueError(f"a form with options needs a 'form' name, got {dict(spec)!r}")
    elif isinstance(spec, str):
        name, *pairs = [part.strip() for part in spec.split(":")]
        options = {}
        for pair in pairs:
            key, equals, text = pair.partition("=")
            if not equals:
                raise ValueError(f"form {spec!r}: expected option=value after ':', got {pair!r}")
            options[key.strip()] = parse_value(text.strip())
    else:
        raise ValueError(f"a form is a name such as 'kron_sum:K=3' or a mapping with 'form', got {spec!r}")
    bad = [key for key in options if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key)]
    if not name or bad:
        raise ValueError(f"form {spec!r}: {'option names must be identifiers' if bad else 'empty form name'}")
    return FormSpec(name, options)


def file_name(label: str) -> str:
    """``label`` (of a form, possibly after a folder) as a portable file name: characters other than letters,
    digits, ``_ . = + -`` and ``/`` become ``_`` (``forms/kron_sum:K=3`` -> ``forms/kron_sum_K=3``)."""
    return re.sub(r"[^A-Za-z0-9_.=+/-]", "_", label)


def parse_value(text: str) -> Any:
    """``true``/``false`` (any case) as bool, then int, then float, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def format_value(value: Any) -> str:
    """The text that ``parse_value`` reads back as ``value``."""
    return str(value).lower() if isinstance(value, bool) else str(value)
