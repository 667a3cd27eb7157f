"""``python -m caliber``: the same as the ``caliber`` command."""

from caliber.cli import main

main()
