"""``python -m webpeer``: the same command line as the ``webpeer`` script (cli.py)."""

from .cli import main

main()
