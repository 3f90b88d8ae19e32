"""Bridges to other tools of the field (optional dependencies, imported on use):
:mod:`steepest.integrations.optuna` (``pip install steepest[tune]``)."""

from . import optuna  # noqa: E402  (imports Optuna itself only when used)
