"""The discriminative loss over all layers jointly, vectorised over the batch.

An instance's mean embedding spans its pixels in every layer (foreground and occluded
alike). Per-instance sums use ``unsorted_segment_sum`` with segment ``b * (n + 1) +
id``, so there is no Python loop over images or instances; images with zero or one
instance give finite values and gradients.
"""

from __future__ import annotations

import tensorflow as tf

from amodal_model.config import LossConfig


def _hinge(x: tf.Tensor, squared: bool) -> tf.Tensor:
    x = tf.nn.relu(x)
    return tf.square(x) if squared else x


def _push(hinged: tf.Tensor, pairs: tf.Tensor, present: tf.Tensor, normalisation: str) -> tf.Tensor:
    """The distance term over ``pairs`` (B, n + 1, n + 1), per image. ``reference``: each
    group's pair sum divided by n(n - 1) + 1, summed over the groups (a pair's weight comes
    from the size of its first member's group: its class, or all instances); ``mean``: the
    mean over the pairs."""
    push = hinged * pairs
    if normalisation == "reference":
        group_size = tf.reduce_sum(pairs, axis=2) + present  # a member's pairs in its group, plus itself
        weight = 1.0 / (group_size * (group_size - 1.0) + 1.0)
        return tf.reduce_sum(push * weight[:, :, None], axis=[1, 2])
    return tf.math.divide_no_nan(tf.reduce_sum(push, axis=[1, 2]), tf.reduce_sum(pairs, axis=[1, 2]))


def discriminative_loss(
    embedding: tf.Tensor, instance_ids: tf.Tensor, instance_classes: tf.Tensor, config: LossConfig
) -> dict[str, tf.Tensor]:
    """Variance, distance and regularisation terms, each averaged over the batch.

    embedding ``(B, L, M, M, C)``; instance_ids ``(B, L, M, M)`` (0 = none);
    instance_classes ``(B, n + 1)`` class of each id (entry 0 unused).
    """
    batch = tf.shape(embedding)[0]
    slots = tf.shape(instance_classes)[1]
    dim = tf.shape(embedding)[-1]
    flat = tf.reshape(embedding, (batch, -1, dim))
    ids = tf.reshape(tf.cast(instance_ids, tf.int32), (batch, -1))
    segments = ids + slots * tf.range(batch)[:, None]
    count = tf.math.unsorted_segment_sum(tf.ones_like(ids, tf.float32), segments, batch * slots)
    total = tf.math.unsorted_segment_sum(flat, segments, batch * slots)
    mean = tf.math.divide_no_nan(total, count[:, None])
    present = tf.reshape(tf.cast(count > 0, tf.float32), (batch, slots)) * tf.concat(
        [tf.zeros((batch, 1)), tf.ones((batch, slots - 1))], axis=1
    )
    n_instances = tf.reduce_sum(present, axis=1)
    squared = config.hinge == "squared"

    pixel_mean = tf.gather(mean, segments)
    pull = _hinge(tf.reduce_sum(tf.abs(flat - pixel_mean), axis=-1) - config.d_var, squared)
    pull = pull * tf.cast(ids > 0, tf.float32)
    per_instance = tf.math.divide_no_nan(tf.math.unsorted_segment_sum(pull, segments, batch * slots), count)
    variance = tf.math.divide_no_nan(tf.reduce_sum(tf.reshape(per_instance, (batch, slots)), 1), n_instances)

    centres = tf.reshape(mean, (batch, slots, dim))
    gap = tf.reduce_sum(tf.abs(centres[:, :, None, :] - centres[:, None, :, :]), axis=-1)
    pairs = present[:, :, None] * present[:, None, :] * (1.0 - tf.eye(slots)[None])
    if config.distance_scope == "class":
        same = tf.cast(tf.equal(instance_classes[:, :, None], instance_classes[:, None, :]), tf.float32)
        pairs = pairs * same
    hinged = _hinge(2.0 * config.d_dist - gap, squared)
    distance = _push(hinged, pairs, present, config.loss_normalisation)
    if config.distance_scope == "class" and config.cross_class_weight > 0:
        every = present[:, :, None] * present[:, None, :] * (1.0 - tf.eye(slots)[None])
        distance += config.cross_class_weight * _push(hinged, every, present, config.loss_normalisation)

    norms = tf.reduce_sum(tf.abs(centres), axis=-1) * present
    regulariser = tf.math.divide_no_nan(tf.reduce_sum(norms, axis=1), n_instances)
    return {
        "variance": tf.reduce_mean(variance),
        "distance": tf.reduce_mean(distance),
        "regularisation": tf.reduce_mean(regulariser),
    }


def total_loss(
    outputs: dict[str, tf.Tensor], targets: dict[str, tf.Tensor], config: LossConfig
) -> dict[str, tf.Tensor]:
    """Weighted discriminative terms plus semantic cross-entropy; ``loss`` is the sum.

    The cross-entropy is the per-pixel mean within a layer, summed over the layers
    (``loss_normalisation='reference'``) or averaged over them (``'mean'``).
    """
    terms = discriminative_loss(outputs["embedding"], targets["layers"], targets["instance_classes"], config)
    probabilities = tf.clip_by_value(outputs["semantic"], 1e-7, 1.0)
    labels = tf.cast(targets["class_layers"], tf.int32)
    cross_entropy = tf.reduce_mean(-tf.math.log(tf.gather(probabilities, labels, batch_dims=4)))
    if config.loss_normalisation == "reference":
        cross_entropy = cross_entropy * tf.cast(tf.shape(labels)[1], cross_entropy.dtype)
    terms["cross_entropy"] = cross_entropy
    terms["loss"] = (
        config.var_weight * terms["variance"]
        + config.dist_weight * terms["distance"]
        + config.reg_weight * terms["regularisation"]
        + config.ce_weight * cross_entropy
    )
    return terms
