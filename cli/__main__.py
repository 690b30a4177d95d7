"""``python -m fercurate_cli``: the same as the ``fercurate`` command."""

from fercurate_cli.main import main_entry

main_entry()
