"""Typed reads of a report.json's fields: what a loaded report holds is checked as it loads, so a
garbled number is named there (as a ReportError), not met later as a TypeError in summary()."""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any

from ..config import AuditConfig

NON_FINITE = {"nan", "inf", "-inf"}
"""How a report.json writes non-finite numbers (JSON has none); read back as floats."""


def config_of(data: Any) -> AuditConfig:
    """The report's ``config`` object as an :class:`AuditConfig` (settings added since the report
    was written take their defaults, except a switch whose default turns on a read the report
    does not have: ``amplify_alpha`` is then None)."""
    if not isinstance(data, dict):
        raise ValueError(f"config is {type(data).__name__}, not an object of settings")
    if "amplify_alpha" not in data:  # written before the amplified read existed: it did not run
        data = {**data, "amplify_alpha": None}
    return AuditConfig.from_dict(data)


def numbers_of(cls: type, data: Any, where: str) -> dict[str, Any]:
    """`data` (an object of `cls`'s fields) with every float and int field checked: a number, or a
    non-finite float as written ("inf"), which is read back as a float; ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is {type(data).__name__}, not an object")
    out = dict(data)
    for f in fields(cls):
        if f.name not in data:
            continue
        if f.type == "float":
            out[f.name] = _float(data[f.name], f"{where}.{f.name}")
        elif f.type == "int":
            out[f.name] = _int(data[f.name], f"{where}.{f.name}")
        elif f.type == "dict[str, float]" and isinstance(data[f.name], dict):
            out[f.name] = {k: _float(v, f"{where}.{f.name}.{k}") for k, v in data[f.name].items()}
    return out


def _float(value: Any, where: str) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    raise ValueError(f"{where} is {_json(value)}, not a number")


def _int(value: Any, where: str) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return value
    raise ValueError(f"{where} is {_json(value)}, not an integer")


def _json(value: Any) -> str:
    return "null" if value is None else repr(value)

