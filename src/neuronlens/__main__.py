"""`python -m neuronlens ...` (what torchrun and accelerate launch) runs the CLI."""

from .cli import main

main()
