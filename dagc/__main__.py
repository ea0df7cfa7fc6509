"""`python -m dagc ...` (also what `torchrun -m dagc train ...` runs)."""

from dagc.cli import main

main()
