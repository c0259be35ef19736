"""``python -m shapesgen``: the ``shapesgen`` command."""

if __name__ == "__main__":
    from shapesgen_cli.entry import main

    main()
