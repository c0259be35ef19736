"""``python -m shapesgen``: the ``shapesgen`` command."""

from shapesgen_cli.app import main

main()
