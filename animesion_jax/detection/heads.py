"""CenterNet's targets, loss and decoding: pure JAX functions of the model's output.

The model (models/centernet.py) outputs, per cell of a stride-4 grid, heatmap logits per class,
log(w / 4), log(h / 4) and the centre's offset (x, y) within the cell. A box [x, y, w, h] (input
pixels) is encoded at the cell holding its centre: heatmap 1 there, falling off as a Gaussian
(sigma = 0.54 * side / 6, TTFNet's choice) that the focal loss treats as "almost positive"; size
and offset are regressed at that cell only. Decoding keeps the cells that are the maximum of
their 3x3 neighbourhood (no NMS), the top `max_detections` by score.
"""

import jax
import jax.numpy as jnp

from animesion_jax.models import centernet

STRIDE = centernet.STRIDE
# Sigma of a box's Gaussian, as a fraction of its side (in cells), and its floor (cells).
_SIGMA_PER_SIDE = 0.54 / 6
_MIN_SIGMA = 0.5
# Weights of the size and offset L1 terms against the heatmap's focal loss.
SIZE_WEIGHT = 1.0
OFFSET_WEIGHT = 1.0


def _centres(boxes: jax.Array, grid_h: int, grid_w: int):
  """Centre (float, cells) and its integer cell (clipped to the grid) of [..., 4] boxes."""
  cx = (boxes[..., 0] + boxes[..., 2] / 2) / STRIDE
  cy = (boxes[..., 1] + boxes[..., 3] / 2) / STRIDE
  ix = jnp.clip(jnp.floor(cx), 0, grid_w - 1).astype(jnp.int32)
  iy = jnp.clip(jnp.floor(cy), 0, grid_h - 1).astype(jnp.int32)
  return cx, cy, ix, iy


def heatmap_targets(
  boxes: jax.Array, box_mask: jax.Array, labels: jax.Array, grid_h: int, grid_w: int, classes: int
) -> jax.Array:
  """[N, H, W, classes] targets in [0, 1], exactly 1 at each box's centre cell.

  boxes: [N, K, 4] input pixels; box_mask: [N, K] (1 real, 0 padding); labels: [N, K] classes.
  """
  _, _, ix, iy = _centres(boxes, grid_h, grid_w)
  sx = jnp.maximum(boxes[..., 2] / STRIDE * _SIGMA_PER_SIDE, _MIN_SIGMA)
  sy = jnp.maximum(boxes[..., 3] / STRIDE * _SIGMA_PER_SIDE, _MIN_SIGMA)
  gx = jnp.arange(grid_w, dtype=jnp.float32)[None, None, None, :]
  gy = jnp.arange(grid_h, dtype=jnp.float32)[None, None, :, None]
  dx = (gx - ix[..., None, None]) / sx[..., None, None]
  dy = (gy - iy[..., None, None]) / sy[..., None, None]
  gauss = jnp.exp(-0.5 * (dx**2 + dy**2)) * box_mask[..., None, None]  # [N, K, H, W]
  one_hot = jax.nn.one_hot(labels, classes) * box_mask[..., None]  # [N, K, C]
  return jnp.max(gauss[..., None] * one_hot[:, :, None, None, :], axis=1)


def _gather_cells(output: jax.Array, iy: jax.Array, ix: jax.Array) -> jax.Array:
  """output [N, H, W, D] at cells (iy, ix) [N, K] -> [N, K, D]."""
  return jax.vmap(lambda o, y, x: o[y, x])(output, iy, ix)


def loss(
  output: jax.Array, boxes: jax.Array, box_mask: jax.Array, labels: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example loss [N] (focal + size + offset, each over the example's box count, at least
  1) and its terms {'heatmap', 'size', 'offset'} ([N] each).

  output: the model's [N, H, W, classes + 4]; boxes [N, K, 4] input pixels; box_mask [N, K];
  labels [N, K] heatmap classes (default: all 0, one class).
  """
  output = output.astype(jnp.float32)
  _, grid_h, grid_w, channels = output.shape
  classes = channels - centernet.BOX_CHANNELS
  box_mask = box_mask.astype(jnp.float32)
  labels = jnp.zeros(box_mask.shape, jnp.int32) if labels is None else labels
  target = heatmap_targets(boxes, box_mask, labels, grid_h, grid_w, classes)
  logits = output[..., :classes]
  # Penalty-reduced focal loss (CenterNet, alpha 2, beta 4), in log-sigmoid form for stability.
  prob = jax.nn.sigmoid(logits)
  positive = (target >= 1.0 - 1e-4).astype(jnp.float32)
  pos_term = -jax.nn.log_sigmoid(logits) * (1 - prob) ** 2 * positive
  neg_term = -jax.nn.log_sigmoid(-logits) * prob**2 * (1 - target) ** 4 * (1 - positive)
  count = jnp.maximum(jnp.sum(box_mask, axis=1), 1.0)
  heatmap = jnp.sum(pos_term + neg_term, axis=(1, 2, 3)) / count
  cx, cy, ix, iy = _centres(boxes, grid_h, grid_w)
  at_centres = _gather_cells(output[..., classes:], iy, ix)  # [N, K, 4]
  log_size = jnp.log(jnp.maximum(boxes[..., 2:4], 1.0) / STRIDE)
  offset = jnp.stack([cx - ix, cy - iy], axis=-1)
  size_l1 = jnp.sum(jnp.abs(at_centres[..., :2] - log_size), axis=-1) * box_mask
  offset_l1 = jnp.sum(jnp.abs(at_centres[..., 2:] - offset), axis=-1) * box_mask
  size = jnp.sum(size_l1, axis=1) / count
  offset = jnp.sum(offset_l1, axis=1) / count
  total = heatmap + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset
  return total, {"heatmap": heatmap, "size": size, "offset": offset}


def decode(output: jax.Array, max_detections: int = 32) -> dict[str, jax.Array]:
  """The top `max_detections` heatmap peaks of each picture, best first.

  Returns {'boxes': [N, D, 4] input pixels [x, y, w, h], 'scores': [N, D] in (0, 1),
  'classes': [N, D] int32}.
  """
  output = output.astype(jnp.float32)
  n, grid_h, grid_w, channels = output.shape
  classes = channels - centernet.BOX_CHANNELS
  heat = jax.nn.sigmoid(output[..., :classes])
  pooled = jax.lax.reduce_window(
    heat, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )
  peaks = jnp.where(heat >= pooled, heat, 0.0).reshape(n, -1)
  count = min(max_detections, peaks.shape[1])
  scores, flat = jax.lax.top_k(peaks, count)
  cell, cls = flat // classes, flat % classes
  iy, ix = cell // grid_w, cell % grid_w
  regress = _gather_cells(output[..., classes:], iy, ix)
  size = jnp.exp(regress[..., :2]) * STRIDE
  cx = (ix + regress[..., 2]) * STRIDE
  cy = (iy + regress[..., 3]) * STRIDE
  boxes = jnp.stack([cx - size[..., 0] / 2, cy - size[..., 1] / 2, size[..., 0], size[..., 1]], -1)
  return {"boxes": boxes, "scores": scores, "classes": cls.astype(jnp.int32)}
