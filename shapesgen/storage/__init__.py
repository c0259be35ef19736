"""HDF5 storage of rendered scenes, one job per module.

- :mod:`~shapesgen.storage.layout`: the record schema (datasets, columns, attributes), file names
- :mod:`~shapesgen.storage.encode`: scenes to compressed chunks and digests (in render workers)
- :mod:`~shapesgen.storage.digests`: per-scene digests and the checksums chained from them
- :mod:`~shapesgen.storage.writer`: create a file, append encoded batches, finish it
- :mod:`~shapesgen.storage.resume`: reopen a partial file at its intact prefix
- :mod:`~shapesgen.storage.reader`: open and check a file or a sharded folder, read scenes
- :mod:`~shapesgen.storage.manifest`: a sharded dataset's plan, manifest and virtual-dataset file

Storage renders nothing: the build layer (:mod:`shapesgen.build`) passes a ``verify``
callable where a partial file's scenes must be checked against a fresh render.
"""
