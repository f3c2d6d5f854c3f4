"""`python -m vsrq` is the same as the `vsrq` command."""

from vsrq.cli import main

main()
