"""The discriminative loss over all layers jointly, vectorised over the batch, on ``keras.ops``.

An instance's mean embedding spans its pixels in every layer (foreground and occluded
alike); its pull is the mean over those pixels, or the mean of its per-layer means.
Per-instance sums are products with each pixel's one-hot instance id (``(B, pixels, n + 1)``,
small: n + 1 slots), so there is no Python loop over images or
instances, no data-dependent shape, and the same code runs on every Keras backend
(TensorFlow for ``shapesgen train``, JAX for ``Model.fit`` on a GPU: the two tested);
images with zero or one instance give finite values and gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from amodal_model.config import LossConfig

Tensor = Any
"""A backend tensor (tf.Tensor, jax.Array, torch.Tensor) or a NumPy array."""


def _hinge(x: Tensor, squared: bool) -> Tensor:
    x = ops.relu(x)
    return ops.square(x) if squared else x


def _push(hinged: Tensor, pairs: Tensor, present: Tensor, normalisation: str) -> Tensor:
    """The distance term over ``pairs`` (B, n + 1, n + 1), per image. ``reference``: each
    group's pair sum divided by n(n - 1) + 1, summed over the groups (a pair's weight comes
    from the size of its first member's group: its class, or all instances); ``mean``: the
    mean over the pairs."""
    push = hinged * pairs
    if normalisation == "reference":
        group_size = ops.sum(pairs, axis=2) + present  # a member's pairs in its group, plus itself
        weight = 1.0 / (group_size * (group_size - 1.0) + 1.0)
        return ops.sum(push * weight[:, :, None], axis=(1, 2))
    return ops.divide_no_nan(ops.sum(push, axis=(1, 2)), ops.sum(pairs, axis=(1, 2)))


def discriminative_loss(
    embedding: Tensor, instance_ids: Tensor, instance_classes: Tensor, config: LossConfig
) -> dict[str, Tensor]:
    """Variance, distance, regularisation and pixel-push terms, each averaged over the batch
    (the pixel push is 0, and not computed, at ``pixel_push_weight=0``).

    embedding ``(B, L, M, M, C)``; instance_ids ``(B, L, M, M)`` (0 = none);
    instance_classes ``(B, n + 1)`` class of each id (entry 0 unused).
    """
    slots = int(instance_classes.shape[1])
    dim = int(embedding.shape[-1])
    pixels = int(np.prod(embedding.shape[1:-1]))
    flat = ops.reshape(ops.cast(embedding, "float32"), (-1, pixels, dim))
    ids = ops.reshape(ops.cast(instance_ids, "int32"), (-1, pixels))
    member = ops.one_hot(ids, slots, dtype="float32")  # (B, pixels, slots)
    count = ops.sum(member, axis=1)
    mean = ops.divide_no_nan(ops.einsum("bps,bpc->bsc", member, flat), count[:, :, None])
    is_instance = ops.convert_to_tensor(np.arange(slots) > 0, dtype="float32")  # slot 0 is background
    present = ops.cast(count > 0, "float32") * is_instance[None]
    n_instances = ops.sum(present, axis=1)
    squared = config.hinge == "squared"

    pixel_mean = ops.einsum("bps,bsc->bpc", member, mean)
    pull = _hinge(ops.sum(ops.abs(flat - pixel_mean), axis=-1) - config.d_var, squared)
    pull = pull * ops.cast(ids > 0, "float32")
    if config.pull_balance == "layers":
        layers = int(embedding.shape[1])
        by_layer = ops.reshape(member, (-1, layers, pixels // layers, slots))
        layer_count = ops.sum(by_layer, axis=2)  # (B, L, slots)
        layer_pull = ops.einsum("blp,blps->bls", ops.reshape(pull, (-1, layers, pixels // layers)), by_layer)
        layers_held = ops.sum(ops.cast(layer_count > 0, "float32"), axis=1)
        per_instance = ops.divide_no_nan(ops.sum(ops.divide_no_nan(layer_pull, layer_count), axis=1), layers_held)
    else:
        per_instance = ops.divide_no_nan(ops.einsum("bp,bps->bs", pull, member), count)
    variance = ops.divide_no_nan(ops.sum(per_instance, axis=1), n_instances)

    gap = ops.sum(ops.abs(mean[:, :, None, :] - mean[:, None, :, :]), axis=-1)
    every = present[:, :, None] * present[:, None, :] * (1.0 - ops.eye(slots, dtype="float32")[None])
    pairs = every
    if config.distance_scope == "class":
        same = ops.equal(instance_classes[:, :, None], instance_classes[:, None, :])
        pairs = every * ops.cast(same, "float32")
    hinged = _hinge(2.0 * config.d_dist - gap, squared)
    distance = _push(hinged, pairs, present, config.loss_normalisation)
    if config.distance_scope == "class" and config.cross_class_weight > 0:
        distance += config.cross_class_weight * _push(hinged, every, present, config.loss_normalisation)

    norms = ops.sum(ops.abs(mean), axis=-1) * present
    regulariser = ops.divide_no_nan(ops.sum(norms, axis=1), n_instances)
    pixel_push = ops.zeros(())
    if config.pixel_push_weight > 0:
        rivals = pairs
        if config.distance_scope == "class" and config.cross_class_weight > 0:
            rivals = pairs + config.cross_class_weight * every
        pixel_push = ops.mean(_pixel_push(flat, mean, member, rivals, count, n_instances, config))
    return {
        "variance": ops.mean(variance),
        "distance": ops.mean(distance),
        "regularisation": ops.mean(regulariser),
        "pixel_push": pixel_push,
    }


def _pixel_push(
    flat: Tensor, mean: Tensor, member: Tensor, rivals: Tensor, count: Tensor, n_instances: Tensor, config: LossConfig
) -> Tensor:
    """The pixel push, per image: each pixel's hinge on its distance to every rival instance's
    mean, weighted by ``rivals`` ``(B, n + 1, n + 1)`` (the distance term's pair weights) and
    summed over the rivals, averaged over the instance's pixels, then over the instances.

    The distance term pushes means apart; this pushes each pixel out of its rivals' reach,
    the failure the mean-shift cannot undo. Its margin, ``2 d_dist - d_var``, is where a
    pixel pulled within ``d_var`` of its mean lies from a rival ``2 d_dist`` away.
    """
    reach = ops.sum(ops.abs(flat[:, :, None, :] - mean[:, None, :, :]), axis=-1)  # (B, pixels, slots)
    hinged = _hinge(2.0 * config.d_dist - config.d_var - reach, config.hinge == "squared")
    weight = ops.einsum("bps,bst->bpt", member, rivals)  # each pixel's rivals, by its own instance
    per_pixel = ops.sum(hinged * weight, axis=-1)
    per_instance = ops.divide_no_nan(ops.einsum("bp,bps->bs", per_pixel, member), count)
    return ops.divide_no_nan(ops.sum(per_instance, axis=1), n_instances)


def total_loss(outputs: dict[str, Tensor], targets: dict[str, Tensor], config: LossConfig) -> dict[str, Tensor]:
    """Weighted discriminative terms plus semantic cross-entropy; ``loss`` is the sum.

    The cross-entropy is the per-pixel mean within a layer, summed over the layers
    (``loss_normalisation='reference'``) or averaged over them (``'mean'``).
    """
    terms = discriminative_loss(outputs["embedding"], targets["layers"], targets["instance_classes"], config)
    probabilities = ops.clip(ops.cast(outputs["semantic"], "float32"), 1e-7, 1.0)
    classes = int(probabilities.shape[-1])
    labels = ops.one_hot(ops.cast(targets["class_layers"], "int32"), classes, dtype="float32")
    cross_entropy = -ops.mean(ops.sum(labels * ops.log(probabilities), axis=-1))
    if config.loss_normalisation == "reference":
        cross_entropy = cross_entropy * float(probabilities.shape[1])
    terms["cross_entropy"] = cross_entropy
    terms["loss"] = (
        config.var_weight * terms["variance"]
        + config.dist_weight * terms["distance"]
        + config.reg_weight * terms["regularisation"]
        + config.pixel_push_weight * terms["pixel_push"]
        + config.ce_weight * cross_entropy
    )
    return terms
