"""`python -m fasciculation_cds`: the same command as `fasciculation-cds`."""

from .cli import main

main()
