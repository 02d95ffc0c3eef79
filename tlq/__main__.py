"""`python -m tlq` is the `tlq` command."""

from tlq.cli.main import main

main()
