"""Splits: disjoint sets of scenes of one config, told apart by their seeds.

A split of a config with seed ``base_seed`` is the same config with the seed
:func:`split_seed` ``(base_seed, name)``: scene ``i`` of split ``name`` uses
``default_rng([split_seed(base_seed, name), i])``. Two splits of one base seed (or of
two base seeds) never share a ``(seed, index)`` pair, so they share no scene draw.
Every file records its split (HDF5 attribute ``split``, the export's ``info.split``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from shapesgen.config import MAX_SEED, SceneConfig, parse_json
from shapesgen.errors import ConfigError, shown

SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # also a valid Hugging Face split name
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
SPLIT_SEED_DOMAIN = "shapesgen-split"


def check_split_name(name: object) -> str:
    """``name`` if it is a valid split name (``train``, ``val``, ``test``, ``extra_1``, ...)."""
    if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
        raise ConfigError(
            f"split={shown(name)} is invalid: must be a lowercase letter then up to 31 letters, digits "
            "or underscores (e.g. train, val, test)",
            param="split",
        )
    return name


def split_seed(base_seed: int, name: str) -> int:
    """The seed of split ``name`` of a config seeded ``base_seed``: the first 63 bits of
    SHA-256 of ``"shapesgen-split/<base_seed>/<name>"`` (stable on every platform)."""
    check_split_name(name)
    text = f"{SPLIT_SEED_DOMAIN}/{int(base_seed)}/{name}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


@dataclass(frozen=True, kw_only=True)
class Split:
    """One split: its name, the seed it derives from, and the registered dataset it
    belongs to (``dataset`` and ``version``, both ``None`` for a user's config).

    ``base_seed=None`` means "the seed of the config it is applied to" (a request);
    a file always records a resolved one.
    """

    name: str
    base_seed: int | None = None
    dataset: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        check_split_name(self.name)
        if self.base_seed is not None and (
            not isinstance(self.base_seed, int)
            or isinstance(self.base_seed, bool)
            or not 0 <= self.base_seed <= MAX_SEED
        ):
            raise ConfigError(f"base_seed={shown(self.base_seed)} is invalid: must be an integer in [0, {MAX_SEED}]")
        if (self.dataset is None) != (self.version is None):
            raise ConfigError("a split's dataset and version are given together or not at all", param="dataset")
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise ConfigError(f"dataset={shown(self.dataset)} is invalid: must be a dataset name", param="dataset")
        if self.version is not None and (not isinstance(self.version, str) or not SEMVER.fullmatch(self.version)):
            raise ConfigError(f"version={shown(self.version)} is invalid: must be MAJOR.MINOR.PATCH", param="dataset")

    @property
    def seed(self) -> int:
        """The seed the split's scenes are drawn from."""
        if self.base_seed is None:
            raise ConfigError("base_seed=None: resolve the config's seed before deriving a split's seed")
        return split_seed(self.base_seed, self.name)

    @property
    def reference(self) -> str | None:
        """``dataset:version/split`` for a registered dataset (``paper-6:1.0.0/test``), else ``None``."""
        return f"{self.dataset}:{self.version}/{self.name}" if self.dataset is not None else None

    def apply(self, config: SceneConfig) -> tuple[SceneConfig, Split]:
        """The split's config (seed = :attr:`seed`) from its base ``config`` and the
        resolved split; the base seed is this split's, or else the config's."""
        base = self.base_seed if self.base_seed is not None else config.seed
        if base is None:
            raise ConfigError("seed=None: resolve the config's seed before applying a split", param="seed")
        resolved = Split(name=self.name, base_seed=base, dataset=self.dataset, version=self.version)
        return config.replace(seed=resolved.seed), resolved

    def to_dict(self) -> dict[str, Any]:
        """As recorded in files: ``name``, ``base_seed``, ``seed``, ``dataset``, ``version``."""
        return {
            "name": self.name,
            "base_seed": self.base_seed,
            "seed": self.seed,
            "dataset": self.dataset,
            "version": self.version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object) -> Split:
        """A recorded split; its ``seed`` must be the one its ``base_seed`` and ``name`` give."""
        keys = {"name", "base_seed", "seed", "dataset", "version"}
        if not isinstance(data, dict) or set(data) != keys:
            raise ConfigError(f"split record {shown(data, 120)} must be an object with keys {sorted(keys)}")
        if data["base_seed"] is None:
            raise ConfigError("split record has base_seed=null: a file records the seed it derives from")
        split = cls(name=data["name"], base_seed=data["base_seed"], dataset=data["dataset"], version=data["version"])
        if data["seed"] != split.seed:
            raise ConfigError(
                f"split record seed={shown(data['seed'])} is not the seed of split {split.name!r} of base seed "
                f"{split.base_seed} ({split.seed})"
            )
        return split


def split_from_json(text: str) -> Split | None:
    """The split recorded in a file's ``split`` attribute (``null``: the file is no split)."""
    data = parse_json(text, "split")
    return None if data is None else Split.from_dict(data)
