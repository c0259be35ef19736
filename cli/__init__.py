"""The ``shapesgen`` command line, installed as the package ``shapesgen_cli``."""
