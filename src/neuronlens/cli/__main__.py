"""`python -m neuronlens.cli ...` runs the CLI (as `python -m neuronlens ...` does)."""

from . import main

main()
