"""The ``shapesgen`` command line: a thin layer over the library."""
