"""``python -m daskgauss``: the same as the ``daskgauss`` command."""

from .cli import main

main()
