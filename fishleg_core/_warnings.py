"""Warnings attributed to the user's line of code, not to fishleg_core's or torch's internals."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

_INTERNAL = tuple(str(Path(path).parent) + os.sep for path in (__file__, torch.__file__))


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside fishleg_core and torch, so the
    warning names the call in the user's code however deep inside the library it arose."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
