"""Render a paper-preset dataset with a fixed start time and print its file's SHA-256: run it
on two machines (or CPUs, or worker counts) to check that they write the same bytes.

    python benchmarks/file_digest.py --instances 6 --layers 2 --num 200 --seed 2 --workers 4

The bytes depend only on the config, the seed, the storage settings and the start time
(``created``), which is fixed here; zlib-ng's output must also be the same on both CPUs,
which this checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

from shapesgen.build import render_dataset
from shapesgen.config import build_config

CREATED = "2020-01-01T00:00:00+00:00"


def versions() -> dict[str, str]:
    """What the bytes may depend on besides the config: Python and the libraries that
    draw, compress and lay out the file."""
    import h5py
    import numpy
    import PIL
    import shapely
    import zlib_ng

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "pillow": PIL.__version__,
        "shapely": shapely.__version__,
        "zlib_ng": getattr(zlib_ng, "__version__", "unknown"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = build_config("paper", instances_per_class=args.instances, layers=args.layers, seed=args.seed)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = render_dataset(
            config, Path(folder) / "data.h5", num_scenes=args.num, created=CREATED, workers=args.workers
        )
        seconds = time.perf_counter() - started
        data = path.read_bytes()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "",
    )
    print(
        json.dumps(
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "scenes": args.num,
                "workers": args.workers,
                "seconds": round(seconds, 2),
                "cpu": cpu or platform.processor(),
                "versions": versions(),
            }
        )
    )


if __name__ == "__main__":
    main()
