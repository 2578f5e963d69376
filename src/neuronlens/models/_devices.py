"""Devices of a model handle: which devices this machine has (cuda, mps, xpu), and the `device`
and `device_map` a handle is made with, checked when the handle is made, before any weights load
or any response is generated (:func:`check_device`, :func:`check_device_map`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelLoadError

_ACCELERATORS = ("cuda", "mps", "xpu")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _accelerator_count(kind: str) -> int:
    """How many `kind` devices ('cuda', 'mps', 'xpu') this PyTorch build can use here (0: none)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    xpu = getattr(torch, "xpu", None)
    return xpu.device_count() if xpu is not None and xpu.is_available() else 0


def available_devices() -> list[str]:
    """The device names this machine accepts: auto, cpu, and each usable accelerator (cuda,
    cuda:0, ...), for error messages that say what to use instead."""
    names = ["auto", "cpu"]
    for kind in _ACCELERATORS:
        n = _accelerator_count(kind)
        if n:
            names += [kind] + ([f"{kind}:{i}" for i in range(n)] if kind != "mps" else [])
    return names


def check_device(device: Any, what: str = "device") -> str:
    """`device` as a device string this machine has, or a :class:`ModelLoadError` listing the ones
    it does have. Checked when the handle is made: a typo ('tpu', 'cuda:abc') or a GPU this torch
    cannot use failed before only when the weights moved, possibly after generation started."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ModelLoadError(
            f"{what}={device!r} (type {type(device).__name__}) is not a device name.", f"Pass one of: {', '.join(available_devices())}."
        )
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{what}={device!r} is not a device name PyTorch knows.", f"Use one of: {', '.join(available_devices())}.") from exc
    if parsed.type == "cpu":
        return device
    count = _accelerator_count(parsed.type) if parsed.type in _ACCELERATORS else 0
    if count == 0:
        raise ModelLoadError(
            f"{what}={device!r}: this machine (PyTorch {torch.__version__}) has no usable {parsed.type} device.",
            f"Use one of: {', '.join(available_devices())}.",
        )
    if parsed.index is not None and parsed.index >= count:
        raise ModelLoadError(
            f"{what}={device!r}: this machine has {count} {parsed.type} device(s), numbered from 0.",
            f"Use one of: {', '.join(available_devices())}.",
        )
    return device


def check_device_map(device_map: Any) -> None:
    """Refuse a `device_map` transformers would reject only while loading the weights (with a
    "checkpoint incomplete" fix that does not fit): a placement strategy, a dict, or a device."""
    if device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAP_STRATEGIES:
        return
    fix = (
        f"Use device_map={DEVICE_MAP_STRATEGIES[0]!r} (or {', '.join(repr(s) for s in DEVICE_MAP_STRATEGIES[1:])}), "
        "a dict {module name: device}, or one device to put the whole model on "
        f"({', '.join(d for d in available_devices() if d != 'auto')})."
    )
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"  # transformers reads an int as a GPU index
    if isinstance(device_map, (str, torch.device)):
        try:
            torch.device(device_map)
        except (RuntimeError, ValueError):
            raise ModelLoadError(f"device_map={device_map!r} is neither a placement strategy nor a device.", fix) from None
        check_device(device_map, "device_map")  # a real device name: is it on this machine?
        return
    raise ModelLoadError(f"device_map={device_map!r} (type {type(device_map).__name__}) is not a placement strategy, a dict or a device.", fix)
