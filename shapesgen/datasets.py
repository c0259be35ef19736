"""Named, versioned datasets: configs, splits and expected checksums registered here.

``paper-6:1.0.0/test`` names the same scenes, bit for bit, for everyone: the config
(base seed included), the split's size and seed (:mod:`shapesgen.splits`), and the
content digest of its data are fixed in :data:`REGISTRY`, and :func:`build_split`
refuses to publish a render whose data differs. A registered version never changes;
a change to a dataset's config or to the bytes the generator makes for it is a new
version (as TFDS does).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shapesgen.build import ProgressCallback, Verifier, render_dataset
from shapesgen.config import SceneConfig, StorageConfig, preset
from shapesgen.errors import ConfigError, ShapesgenError, shown
from shapesgen.splits import SEMVER, Split, check_split_name
from shapesgen.storage.reader import open_dataset


class ChecksumMismatchError(ShapesgenError):
    """A registered split rendered here does not reproduce its registered data (exit 1:
    the environment differs, e.g. another numpy or shapely build, not the user's input)."""

    exit_code = 1


def content_digest(checksums: Mapping[str, str]) -> str:
    """One SHA-256 for a dataset's content: of its ``checksums`` attribute (one digest per
    HDF5 dataset) as canonical JSON (sorted keys, no spaces). It does not depend on the
    file's compression, creation time, name or worker count."""
    text = json.dumps(dict(checksums), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_version(digest: str) -> str:
    """The version of unregistered data: ``0.0.0+`` and the first 12 hex digits of its
    content digest (semantic versioning's build metadata), so it changes with the data."""
    return f"0.0.0+{digest[:12]}"


@dataclass(frozen=True, kw_only=True)
class SplitSpec:
    """A registered split: its name, its number of scenes and its content digest."""

    name: str
    num_scenes: int
    digest: str

    def __post_init__(self) -> None:
        check_split_name(self.name)
        if not isinstance(self.num_scenes, int) or self.num_scenes < 1:
            raise ConfigError(f"num_scenes={shown(self.num_scenes)} is invalid: must be an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A registered dataset version: its base config (seed included), splits and notes."""

    name: str
    version: str
    description: str
    config: SceneConfig
    splits: tuple[SplitSpec, ...]
    released: str  # ISO date of the version's registration (Croissant's datePublished)
    notes: str  # release notes, one line per version

    def __post_init__(self) -> None:
        if not SEMVER.fullmatch(self.version):
            raise ConfigError(f"version={self.version!r} is invalid: must be MAJOR.MINOR.PATCH")
        if self.config.seed is None:
            raise ConfigError(f"dataset {self.name}: a registered config has a seed")
        names = [split.name for split in self.splits]
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset {self.name}: split names {names} repeat")

    def split(self, name: str) -> SplitSpec:
        for split in self.splits:
            if split.name == name:
                return split
        allowed = ", ".join(split.name for split in self.splits)
        raise ConfigError(
            f"dataset={self.name}:{self.version}/{name} is invalid: splits are {allowed}", param="dataset"
        )

    def split_of(self, name: str) -> Split:
        """The split ``name`` as recorded in its files (seeds resolved)."""
        self.split(name)
        return Split(name=name, base_seed=self.config.seed, dataset=self.name, version=self.version)

    def reference(self, split: str) -> str:
        return f"{self.name}:{self.version}/{split}"


def _splits(sizes: tuple[int, int, int], digests: tuple[str, str, str]) -> tuple[SplitSpec, ...]:
    """Splits train, val and test with their sizes and content digests."""
    names = ("train", "val", "test")
    return tuple(
        SplitSpec(name=name, num_scenes=size, digest=digest)
        for name, size, digest in zip(names, sizes, digests, strict=True)
    )


_PAPER = preset("paper")
_PAPER_SIZES = (10_000, 1_000, 1_000)  # the paper tests on 1,000 scenes
REGISTRY: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="paper-6",
        version="1.0.0",
        description="the paper's dataset at N = 6 instances per class (18 shapes), 2 layers",
        config=_PAPER.replace(instances_per_class=6, layers=2, seed=6),
        splits=_splits(
            _PAPER_SIZES,
            (
                "b9a167c2ff6b12b22a1dceb5fb6fb971c64e869d285edded840ce8e5ff17486e",
                "235225b2e97b10d003d7c58e656acd40406a6b9eeaba9762f0da83be9c3d049b",
                "eb5c90a0573367c82af319984800efbb6c7eddba534106d67ffec11366dc9ac5",
            ),
        ),
        released="2026-11-25",
        notes="1.0.0: first release; train 10,000, val 1,000, test 1,000 scenes.",
    ),
    DatasetSpec(
        name="paper-12",
        version="1.0.0",
        description="the paper's dataset at N = 12 instances per class (36 shapes), 2 layers",
        config=_PAPER.replace(instances_per_class=12, layers=2, seed=12),
        splits=_splits(
            _PAPER_SIZES,
            (
                "5da360d4e148aaf8fcbc0d721ba46273b6a89a29748cc957a4a40880d2e8b545",
                "02caf27f25b8c0e108a721c3a01a06b0eb9bab3d9ebfc18e64952b0b9cfef52e",
                "7a94594fcc7384fdd852db73f4f622c3fdcdb2ce3d0d79fa9706eab25db78011",
            ),
        ),
        released="2026-11-25",
        notes="1.0.0: first release; train 10,000, val 1,000, test 1,000 scenes.",
    ),
    DatasetSpec(
        name="tiny",
        version="1.0.0",
        description="64 px paper shapes, 3 per class, 3 layers: checks in a second that an install "
        "reproduces the registered bytes",
        config=_PAPER.replace(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=1),
        splits=_splits(
            (16, 4, 4),
            (
                "9d814604f47820df87f1ec1707e6c6c8669b3e6fc08f06a76aabffd45bd88614",
                "5f2995612fd90493c9d69f5a39c57088f51e9ce2739edaf9d3ae50e483ad46c5",
                "7cf77529dc2ea84fd5e0e171f6d1d6f884bec8ef9f17e293c92a2a4ba3c6959a",
            ),
        ),
        released="2026-11-25",
        notes="1.0.0: first release; train 16, val 4, test 4 scenes.",
    ),
)


def dataset_spec(name: str, version: str | None = None) -> DatasetSpec:
    """The registered dataset ``name`` at ``version`` (``None``: its latest version)."""
    versions = [spec for spec in REGISTRY if spec.name == name]
    if not versions:
        known = ", ".join(dict.fromkeys(spec.name for spec in REGISTRY))
        raise ConfigError(f"dataset={name!r} is invalid: registered datasets are {known}", param="dataset")
    if version is None:
        return max(versions, key=lambda spec: tuple(int(part) for part in spec.version.split(".")))
    for spec in versions:
        if spec.version == version:
            return spec
    known = ", ".join(spec.version for spec in versions)
    raise ConfigError(f"dataset={name}:{version} is invalid: {name} has version(s) {known}", param="dataset")


def parse_reference(reference: str) -> tuple[DatasetSpec, SplitSpec]:
    """``NAME[:VERSION]/SPLIT`` (``paper-6:1.0.0/test``; no version = the latest) -> its
    registered dataset and split."""
    text = str(reference)
    name_version, slash, split = text.partition("/")
    if not slash or not split or not name_version:
        raise ConfigError(
            f"dataset={shown(text)} is invalid: give NAME[:VERSION]/SPLIT, e.g. paper-6:1.0.0/test", param="dataset"
        )
    name, _, version = name_version.partition(":")
    spec = dataset_spec(name, version or None)
    return spec, spec.split(split)


def verifier(spec: DatasetSpec, split: SplitSpec) -> Verifier:
    """A check of a render's checksums against the registered digest of ``split``."""

    def verify(checksums: dict[str, str]) -> None:
        digest = content_digest(checksums)
        if digest != split.digest:
            raise ChecksumMismatchError(
                f"dataset={spec.reference(split.name)}: the rendered data (content digest {digest[:12]}) differs "
                f"from the registered data ({split.digest[:12]}); this install ({library_versions()}) does not "
                "reproduce it, so nothing was kept",
                param="dataset",
            )

    return verify


def library_versions() -> str:
    """The versions of the libraries that make the bytes, for a mismatch report."""
    import numpy
    import shapely

    from shapesgen import __version__

    return f"shapesgen {__version__}, numpy {numpy.__version__}, shapely {shapely.__version__}"


def registered_spec(split: Split | None, checksums: Mapping[str, str]) -> DatasetSpec | None:
    """The registered dataset whose split a file holds: the split recorded in the file
    names it, and the file's content digest is the registered one; else ``None``."""
    if split is None or split.dataset is None or split.version is None:
        return None
    try:
        spec = dataset_spec(split.dataset, split.version)
        registered = spec.split(split.name).digest == content_digest(checksums) and spec.config.seed == split.base_seed
    except ConfigError:  # a dataset or split this shapesgen does not know
        return None
    return spec if registered else None


def build_split(
    reference: str,
    out: str | Path,
    *,
    workers: int = 1,
    storage: StorageConfig | None = None,
    resume: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Render the registered split ``reference`` (``paper-6:1.0.0/test``) into ``out`` and
    verify it: a render whose data differs from the registered digest raises
    :class:`ChecksumMismatchError` and is not kept. Workers and storage do not change
    the data."""
    spec, split = parse_reference(reference)
    return render_dataset(
        spec.config,
        out,
        num_scenes=split.num_scenes,
        workers=workers,
        storage=storage,
        resume=resume,
        force=force,
        progress=progress,
        split=spec.split_of(split.name),
        verify=verifier(spec, split),
    )


def render_digest(spec: DatasetSpec, split: str, *, workers: int = 1) -> str:
    """Render a registered split in a temporary folder and return its content digest
    (how a new version's digests are computed; the file is removed)."""
    with tempfile.TemporaryDirectory(prefix="shapesgen-digest-") as folder:
        path = render_dataset(
            spec.config,
            Path(folder) / f"{split}.h5",
            num_scenes=spec.split(split).num_scenes,
            workers=workers,
            split=spec.split_of(split),
        )
        with open_dataset(path) as ds:
            return content_digest(ds.checksums)


def main(argv: list[str]) -> None:
    """``python -m shapesgen.datasets NAME[:VERSION] [WORKERS]``: print each split's content
    digest, as a new version's registry entry needs them."""
    name, _, version = argv[0].partition(":")
    spec = dataset_spec(name, version or None)
    workers = int(argv[1]) if len(argv) > 1 else 1
    for split in spec.splits:
        print(split.name, render_digest(spec, split.name, workers=workers))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
