"""``python -m rendezvous``: the same command line as the ``rendezvous`` script (cli.py)."""

from .cli import main

main()
