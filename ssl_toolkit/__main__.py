"""``python -m ssl_toolkit`` runs the ``ssl`` command line."""

from ssl_toolkit.cli import run

run()
