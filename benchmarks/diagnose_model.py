"""Where a trained layered-embedding model loses AP: its layer maps, its embeddings, the layer join.

    python benchmarks/diagnose_model.py --model paper6-2layers --data val.h5 [--cache outputs.npz]
        [--bandwidth B --min-pixels P --score S --settings JSON] [--json diagnosis.json]

Compares the model's outputs with the dataset's exact layer maps (an HDF5 file) and prints:

1. **Layer maps**: per layer, the foreground pixel precision and recall (its class not
   background against a visible instance's id in the layer map) and the class accuracy on
   the pixels both call foreground; the same recall for the pixels of the instances of
   each occlusion band (pixel rate: none, partial, heavy).
2. **Maps or embeddings**: the AP of four predictions that swap in the truth one part at a
   time: the model's clustering; its embeddings clustered on the true layer maps (one-hot
   classes); the predicted foreground grouped by the true instance ids (what perfect
   embeddings would give with these maps); the oracle (true maps, true ids).
3. **The layer join**: for each instance with pixels in layer 2 (the truth), whether the
   cluster that holds most of its predicted layer-1 pixels also holds its predicted
   layer-2 pixels, and what the others became (another cluster, another class, a cluster
   with no layer-1 pixel); how many clusters hold no layer-1 pixel.
4. **Embedding separation**: per occlusion band, the median over instances of the share
   of an instance's pixels (all layers) within ``d_var`` and within the bandwidth of its
   mean embedding (L1, as the loss and the clustering measure), the gap between the mean
   of its layer-1 pixels and that of its deeper ones, and the distance from its mean to
   the nearest other instance's (of any class, and of its class), against the ``2 d_dist``
   the loss asks for: what the clustering has to work with.
5. **Nearest own centre**: per layer, the share of an instance's pixels whose embedding is
   nearer (L1) its own instance's mean than any other instance's in the scene. With the
   true means as the centres this is the best any grouping by nearest centre can do; a
   pixel nearer another instance is lost to it whatever the clustering.

Ground truth counts only visible instances (as ``shapesgen evaluate`` does), so the maps
are the visible-only maps training uses. The forward pass is run once and may be cached
(``--cache``): every other figure is NumPy on those outputs. Figures are counts and
metrics, not timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from amodal_model.cluster import Instance, cluster_pixels, instances_from_labels, merge_clusters, pixel_classes
from amodal_model.config import InferenceConfig
from amodal_model.inference import image_instances, records_of
from shapesgen import open_dataset
from shapesgen.evaluate import BAND_RANGES, evaluate, ground_truth_from_hdf5

BANDS = ("none", "partial", "heavy")


@dataclasses.dataclass(frozen=True)
class Truth:
    """The dataset's exact, visible-only layer maps and the instances they hold."""

    ids: np.ndarray  # (S, L, M, M) instance id (1-based within the scene), 0 = none
    classes: np.ndarray  # (S, L, M, M) class id, 0 = background
    rates: list[np.ndarray]  # per scene: pixel occlusion rate of instance id i at [i]; nan = not visible


def load_truth(path: str | Path, limit: int | None = None) -> Truth:
    """Visible-only layer maps of an HDF5 file (an instance with no layer-1 pixel is background)."""
    with open_dataset(path) as ds:
        count = len(ds) if limit is None else min(limit, len(ds))
        ids = ds.layers[:count].astype(np.int64)
        classes = ds.class_layers[:count].astype(np.int64)
        rates = []
        for scene in range(count):
            table = ds.instances[ds.instance_rows(scene)]
            rate = np.full(len(table) + 1, np.nan)
            rate[1:] = np.where(table["is_visible"], table["pixel_occlusion_rate"], np.nan)
            rates.append(rate)
    for scene in range(count):
        visible = np.zeros(len(rates[scene]), bool)
        visible[np.unique(ids[scene, 0])] = True
        visible[0] = False
        hidden = ~visible[ids[scene]]
        ids[scene][hidden] = 0
        classes[scene][hidden] = 0
    return Truth(ids, classes, rates)


def forward_outputs(model_name: str, data: str | Path, limit: int | None, cache: Path | None) -> dict[str, np.ndarray]:
    """The model's ``semantic`` and ``embedding`` outputs for the first ``limit`` scenes (cached in ``cache``)."""
    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            return {key: saved[key] for key in ("semantic", "embedding")}
    import tensorflow as tf

    from amodal_model.data import open_file
    from amodal_model.predict import infer_fn, load_run

    model, _, _ = load_run(model_name)
    forward = infer_fn(model)
    parts: dict[str, list[np.ndarray]] = {"semantic": [], "embedding": []}
    with open_file(data, "data") as source:
        total = source.num_scenes if limit is None else min(limit, source.num_scenes)
        for batch in source.batches(8, seed=0, epoch=0, shuffle=False, limit=total, param="data"):
            out = forward(tf.constant(batch["image"]))
            for key in parts:
                parts[key].append(out[key].numpy())
    outputs = {key: np.concatenate(value) for key, value in parts.items()}
    if cache is not None:
        np.savez(cache, semantic=outputs["semantic"], embedding=outputs["embedding"])
    return outputs


def band_of(rate: float) -> list[str]:
    return [band for band in BANDS if BAND_RANGES[band][0] <= rate <= BAND_RANGES[band][1]]


def map_figures(semantic: np.ndarray, truth: Truth, max_background: float | None = None) -> dict[str, Any]:
    """Per layer: foreground precision and recall, class accuracy on shared foreground,
    and the recall of each band's instances' pixels (pixel classes as :func:`pixel_classes`)."""
    predicted = pixel_classes(semantic, max_background)
    figures: dict[str, Any] = {}
    for layer in range(predicted.shape[1]):
        pred, true_class, true_id = predicted[:, layer], truth.classes[:, layer], truth.ids[:, layer]
        fg_pred, fg_true = pred > 0, true_id > 0
        both = fg_pred & fg_true
        row: dict[str, Any] = {
            "true_pixels": int(fg_true.sum()),
            "predicted_pixels": int(fg_pred.sum()),
            "precision": float(both.sum() / max(fg_pred.sum(), 1)),
            "recall": float(both.sum() / max(fg_true.sum(), 1)),
            "class_accuracy": float((pred[both] == true_class[both]).sum() / max(both.sum(), 1)),
        }
        found = dict.fromkeys(BANDS, 0)
        total = dict.fromkeys(BANDS, 0)
        for scene in range(len(pred)):
            ids = true_id[scene]
            counts = np.bincount(ids.ravel(), minlength=len(truth.rates[scene]))
            hits = np.bincount(ids[fg_pred[scene]].ravel(), minlength=len(truth.rates[scene]))
            for instance in np.flatnonzero(counts[1:]) + 1:
                for band in band_of(float(truth.rates[scene][instance])):
                    total[band] += int(counts[instance])
                    found[band] += int(hits[instance])
        row["recall_by_band"] = {band: float(found[band] / max(total[band], 1)) for band in BANDS}
        row["true_pixels_by_band"] = total
        figures[f"layer{layer + 1}"] = row
    return figures


def truth_semantic(truth: Truth, scene: int, classes: int) -> np.ndarray:
    """One-hot semantic maps of the true layer maps, ``(L, M, M, K + 1)``."""
    return np.eye(classes, dtype=np.float32)[truth.classes[scene]]


def grouped_by_truth(semantic: np.ndarray, truth: Truth, scene: int, foreground: np.ndarray) -> list[Instance]:
    """Perfect grouping of a foreground: its pixels that hold a true instance, by that instance.

    A group's class is the most frequent predicted class among its pixels."""
    ids = np.where(foreground, truth.ids[scene], 0)
    present = np.unique(ids)
    present = present[present > 0]
    labels = np.full(ids.shape, -1, np.int64)
    class_of = []
    predicted = pixel_classes(semantic)
    for cluster, instance in enumerate(present.tolist()):
        here = ids == instance
        labels[here] = cluster
        votes = np.bincount(predicted[here], minlength=semantic.shape[-1])
        votes[0] = 0
        class_of.append(int(votes.argmax()) if votes.any() else int(truth.classes[scene][here][0]))
    return instances_from_labels(semantic, labels, np.array(class_of, np.int64), min_pixels=1)


def join_figures(
    semantic: np.ndarray, embedding: np.ndarray, truth: Truth, settings: InferenceConfig
) -> dict[str, Any]:
    """How the layer-2 pixels of each instance are joined to its layer-1 cluster."""
    outcome = {"joined": 0, "other_cluster": 0, "other_class": 0, "not_found": 0, "no_layer1_cluster": 0}
    pixels = dict.fromkeys(outcome, 0)
    by_band: dict[str, dict[str, int]] = {band: dict.fromkeys(outcome, 0) for band in BANDS}
    clusters = kept = layer2_only = layer2_only_kept = 0
    for scene in range(len(semantic)):
        labels, class_of = cluster_pixels(
            semantic[scene],
            embedding[scene],
            bandwidth=settings.bandwidth,
            max_clusters=settings.max_clusters,
            max_iterations=settings.max_iterations,
            seed=[settings.seed, scene],
            max_background=settings.max_background,
            scope=settings.cluster_scope,
        )
        labels = merge_clusters(
            labels,
            embedding[scene],
            len(class_of),
            small_clusters=settings.small_clusters,
            hidden_clusters=settings.hidden_clusters,
            min_pixels=settings.min_pixels,
            merge_radius=settings.merge_radius,
        )
        union = np.zeros((len(class_of), *labels.shape[1:]), bool)
        for layer in range(labels.shape[0]):
            rows, cols = np.nonzero(labels[layer] >= 0)
            union[labels[layer][rows, cols], rows, cols] = True
        sizes = union.reshape(len(class_of), -1).sum(axis=1)
        in_top = np.bincount(labels[0][labels[0] >= 0], minlength=len(class_of))
        clusters += len(class_of)
        kept += int((sizes >= settings.min_pixels).sum())
        layer2_only += int((in_top == 0).sum())
        layer2_only_kept += int(((in_top == 0) & (sizes >= settings.min_pixels)).sum())
        ids = truth.ids[scene]
        for instance in np.unique(ids[1]):
            if instance == 0:
                continue
            top = labels[0][(ids[0] == instance) & (labels[0] >= 0)]
            deep = (ids[1] == instance) & (labels[1] >= 0)
            if not deep.any():
                continue
            deep_labels = labels[1][deep]
            if top.size == 0:
                kind = "no_layer1_cluster"
            else:
                home = int(np.bincount(top).argmax())
                share = np.bincount(deep_labels, minlength=len(class_of))
                best = int(share.argmax())
                if best == home:
                    kind = "joined"
                elif class_of[best] != class_of[home]:
                    kind = "other_class"
                else:
                    kind = "other_cluster"
            outcome[kind] += 1
            pixels[kind] += int(deep.sum())
            for band in band_of(float(truth.rates[scene][instance])):
                by_band[band][kind] += 1
    return {
        "instances": outcome,
        "layer2_pixels": pixels,
        "instances_by_band": by_band,
        "clusters": clusters,
        "clusters_kept": kept,
        "clusters_without_layer1": layer2_only,
        "clusters_without_layer1_kept": layer2_only_kept,
    }


def separation_figures(embedding: np.ndarray, truth: Truth, d_var: float, bandwidth: float) -> dict[str, Any]:
    """Per band, medians over instances of how tight and how far apart the embeddings are (see the module docs)."""
    rows: dict[str, list[list[float]]] = {band: [] for band in BANDS}
    for scene in range(len(embedding)):
        ids, classes, vectors = truth.ids[scene], truth.classes[scene], embedding[scene]
        present = [int(i) for i in np.unique(ids) if i > 0]
        means = {i: vectors[ids == i].mean(axis=0) for i in present}
        class_of = {i: int(classes[ids == i][0]) for i in present}
        for i in present:
            spread = np.abs(vectors[ids == i] - means[i]).sum(axis=1)
            front, deeper = vectors[0][ids[0] == i], vectors[1:][ids[1:] == i]
            gap = np.abs(front.mean(axis=0) - deeper.mean(axis=0)).sum() if len(front) and len(deeper) else np.nan
            others = [(np.abs(means[j] - means[i]).sum(), class_of[j] == class_of[i]) for j in present if j != i]
            nearest = min((d for d, _ in others), default=np.nan)
            same = min((d for d, alike in others if alike), default=np.nan)
            figures = [(spread <= d_var).mean(), (spread <= bandwidth).mean(), gap, nearest, same]
            for band in band_of(float(truth.rates[scene][i])):
                rows[band].append([float(v) for v in figures])
    names = ("within_d_var", "within_bandwidth", "front_to_deeper", "nearest_other", "nearest_same_class")
    out: dict[str, Any] = {}
    for band, values in rows.items():
        table = np.array(values, dtype=np.float64).reshape(-1, len(names))
        medians = [float(np.nanmedian(column)) if np.isfinite(column).any() else None for column in table.T]
        out[band] = {"instances": len(values), **dict(zip(names, medians, strict=True))}
    return out


def nearest_own_figures(embedding: np.ndarray, truth: Truth) -> dict[str, dict[str, float | int]]:
    """Per layer, how many instance pixels there are and the share nearer their own instance's
    mean embedding (over all its layers) than any other instance's (see the module docs)."""
    layers = truth.ids.shape[1]
    pixels, nearest = np.zeros(layers, np.int64), np.zeros(layers, np.int64)
    for scene in range(len(embedding)):
        ids, vectors = truth.ids[scene], embedding[scene]
        present = np.array([int(i) for i in np.unique(ids) if i > 0])
        if len(present) == 0:
            continue
        means = np.stack([vectors[ids == i].mean(axis=0) for i in present])
        for layer in range(layers):
            held = ids[layer] > 0
            distances = np.abs(vectors[layer][held][:, None, :] - means[None]).sum(axis=2)
            pixels[layer] += int(held.sum())
            nearest[layer] += int((present[distances.argmin(axis=1)] == ids[layer][held]).sum())
    return {
        f"layer {layer + 1}": {
            "pixels": int(pixels[layer]),
            "nearest_own": float(nearest[layer] / pixels[layer]) if pixels[layer] else float("nan"),
        }
        for layer in range(layers)
    }


def records_for(count: int, make: Callable[[int], list[Instance]]) -> list[dict[str, Any]]:
    return [record for scene in range(count) for record in records_of(make(scene), scene)]


def metrics(gt: Any, records: list[dict[str, Any]]) -> dict[str, float]:
    """AP, AP50, AR100 and AR heavy of ``records`` (order and invisible-mask metrics left out)."""
    amodal = [{k: v for k, v in r.items() if k not in ("depth", "visible_segmentation")} for r in records]
    result = evaluate(gt, amodal)
    return {
        "AP": result["all"]["AP"],
        "AP50": result["all"]["AP50"],
        "AR100": result["all"]["AR100"],
        "AR_heavy": result["bands"]["heavy"]["AR100"],
        "detections": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="paper6-2layers")
    parser.add_argument("--data", required=True, help="HDF5 file with the exact layer maps")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="npz of the forward pass (written if missing)")
    parser.add_argument("--bandwidth", type=float, default=None)
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--score", default=None)
    parser.add_argument(
        "--settings", default="{}", help='other inference settings as JSON, e.g. \'{"small_clusters": "merge"}\''
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from amodal_model.predict import load_run

    outputs = forward_outputs(args.model, args.data, args.limit, args.cache)
    _, config, _ = load_run(args.model)
    settings = config.inference.with_overrides(
        bandwidth=args.bandwidth, min_pixels=args.min_pixels, score=args.score, **json.loads(args.settings)
    )
    semantic, embedding = outputs["semantic"], outputs["embedding"]
    count, classes = len(semantic), semantic.shape[-1]
    truth = load_truth(args.data, count)
    gt = ground_truth_from_hdf5(args.data)
    if count < len(gt.images):
        keep = set(range(1, count + 1))
        gt = dataclasses.replace(
            gt,
            images=[i for i in gt.images if i["id"] in keep],
            annotations=[a for a in gt.annotations if a["image_id"] in keep],
        )

    report: dict[str, Any] = {"settings": settings.to_dict(), "scenes": count}
    report["maps"] = map_figures(semantic, truth, settings.max_background)
    print(f"{count} scenes, settings {settings.to_dict()}")
    print("\n1. layer maps against the exact visible-only layer maps (pixels)")
    print("layer | true px | pred px | precision | recall | class acc | recall none / partial / heavy")
    for name, row in report["maps"].items():
        band = row["recall_by_band"]
        print(
            f"{name} | {row['true_pixels']} | {row['predicted_pixels']} | {row['precision']:.4f} | "
            f"{row['recall']:.4f} | {row['class_accuracy']:.4f} | "
            f"{band['none']:.4f} / {band['partial']:.4f} / {band['heavy']:.4f}"
        )

    def truth_fg(scene: int) -> np.ndarray:
        return truth.ids[scene] > 0

    def predicted_fg(scene: int) -> np.ndarray:
        return pixel_classes(semantic[scene], settings.max_background) > 0

    variants: dict[str, Callable[[int], list[Instance]]] = {
        "model (predicted maps, clustered embeddings)": lambda s: image_instances(
            semantic[s], embedding[s], s, settings
        ),
        "true maps, clustered embeddings": lambda s: image_instances(
            truth_semantic(truth, s, classes), embedding[s], s, settings
        ),
        "predicted maps, true ids": lambda s: grouped_by_truth(semantic[s], truth, s, predicted_fg(s)),
        "true maps, true ids (oracle)": lambda s: grouped_by_truth(
            truth_semantic(truth, s, classes), truth, s, truth_fg(s)
        ),
    }
    report["ablation"] = {}
    print("\n2. maps or embeddings: AP with one part swapped for the truth")
    print("variant | AP | AP50 | AR100 | AR heavy | detections")
    for name, make in variants.items():
        row = metrics(gt, records_for(count, make))
        report["ablation"][name] = row
        print(
            f"{name} | {row['AP']:.4f} | {row['AP50']:.4f} | {row['AR100']:.4f} | {row['AR_heavy']:.4f} | "
            f"{row['detections']}"
        )

    report["join"] = join_figures(semantic, embedding, truth, settings)
    join = report["join"]
    print("\n3. the layer join: instances with predicted layer-2 pixels on their true layer-2 pixels")
    print("outcome | instances | their layer-2 pixels | heavy instances")
    for kind, value in join["instances"].items():
        print(f"{kind} | {value} | {join['layer2_pixels'][kind]} | {join['instances_by_band']['heavy'][kind]}")
    print(
        f"clusters {join['clusters']}, kept (>= min pixels) {join['clusters_kept']}; without a layer-1 pixel "
        f"{join['clusters_without_layer1']}, of them kept {join['clusters_without_layer1_kept']}"
    )
    loss = config.loss
    report["separation"] = separation_figures(embedding, truth, loss.d_var, settings.bandwidth)
    print(f"\n4. embedding separation (medians over instances; the loss asks for >= {2 * loss.d_dist:g} apart)")
    print("band | instances | within d_var | within bandwidth | layer 1 to deeper | nearest other | same class")
    for band, row in report["separation"].items():
        cells = [f"{row[k]:.3f}" if row[k] is not None else "-" for k in list(row)[1:]]
        print(f"{band} | {row['instances']} | " + " | ".join(cells))
    report["nearest_own"] = nearest_own_figures(embedding, truth)
    print("\n5. pixels nearer their own instance's mean embedding than any other's (the truth's means)")
    print("layer | instance pixels | nearest own")
    for name, row in report["nearest_own"].items():
        print(f"{name} | {row['pixels']} | {row['nearest_own']:.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
