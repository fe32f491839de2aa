"""Tests for the head detector's library: box geometry, targets, loss, decoding, pipeline, COCO."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from animesion_jax import models
from animesion_jax.detection import boxes as boxes_lib
from animesion_jax.detection import coco
from animesion_jax.detection import heads
from animesion_jax.detection import pipeline

_GRID = 16  # 64 px input at stride 4.


def _ideal_output(boxes: np.ndarray, mask: np.ndarray, grid: int = _GRID) -> jnp.ndarray:
  """The model output that encodes `boxes` exactly: +20 logits at centre cells (-20 elsewhere),
  their log sizes and offsets there."""
  n, k, _ = boxes.shape
  out = np.zeros((n, grid, grid, 5), np.float32)
  out[..., 0] = -20.0
  for i in range(n):
    for j in range(k):
      if not mask[i, j]:
        continue
      x, y, w, h = boxes[i, j]
      cx, cy = (x + w / 2) / 4, (y + h / 2) / 4
      ix, iy = int(cx), int(cy)
      out[i, iy, ix] = [20.0, np.log(w / 4), np.log(h / 4), cx - ix, cy - iy]
  return jnp.asarray(out)


_BOXES = np.asarray(
  [
    [[4, 6, 20, 24], [30, 28, 26, 30], [0, 0, 0, 0]],
    [[10, 40, 12, 12], [0, 0, 0, 0], [0, 0, 0, 0]],
  ],
  np.float32,
)
_MASK = np.asarray([[1, 1, 0], [1, 0, 0]], np.float32)


def test_decode_recovers_the_encoded_boxes_best_first():
  decoded = heads.decode(_ideal_output(_BOXES, _MASK), max_detections=4)
  assert decoded["boxes"].shape == (2, 4, 4)
  np.testing.assert_allclose(np.sort(decoded["scores"][0])[::-1][:2], [1.0, 1.0], atol=1e-6)
  assert float(decoded["scores"][0, 2]) < 1e-6  # Nothing else peaks.
  found = {tuple(np.round(b, 3)) for b in np.asarray(decoded["boxes"][0, :2])}
  assert found == {tuple(b) for b in _BOXES[0, :2].tolist()}
  np.testing.assert_allclose(decoded["boxes"][1, 0], _BOXES[1, 0], atol=1e-4)


def test_heatmap_target_is_one_at_centres_and_gaussian_around():
  target = heads.heatmap_targets(
    jnp.asarray(_BOXES), jnp.asarray(_MASK), jnp.zeros((2, 3), jnp.int32), _GRID, _GRID, 1
  )
  assert target.shape == (2, _GRID, _GRID, 1)
  assert int(jnp.sum(target[0] == 1.0)) == 2 and int(jnp.sum(target[1] == 1.0)) == 1
  # Box 0's centre (14, 18) px is cell (3, 4); its neighbour is lower but above zero.
  assert float(target[0, 4, 3, 0]) == 1.0
  assert 0.05 < float(target[0, 4, 4, 0]) < 1.0
  assert float(target[0, 15, 0, 0]) < 1e-3


def test_loss_is_lowest_for_the_ideal_output_and_ignores_padding():
  ideal = _ideal_output(_BOXES, _MASK)
  loss, terms = heads.loss(ideal, jnp.asarray(_BOXES), jnp.asarray(_MASK))
  assert loss.shape == (2,)
  assert float(jnp.max(terms["size"])) < 1e-5 and float(jnp.max(terms["offset"])) < 1e-5
  assert float(jnp.max(loss)) < 0.05
  worse, _ = heads.loss(jnp.zeros_like(ideal), jnp.asarray(_BOXES), jnp.asarray(_MASK))
  assert (worse > loss + 0.5).all()
  garbage = _BOXES.copy()
  garbage[:, 2] = [50, 3, 9, 9]  # A padding row's values must not matter.
  same, _ = heads.loss(ideal, jnp.asarray(garbage), jnp.asarray(_MASK))
  np.testing.assert_allclose(same, loss, rtol=1e-6)
  grads = jax.grad(lambda o: jnp.sum(heads.loss(o, jnp.asarray(_BOXES), jnp.asarray(_MASK))[0]))(
    jnp.zeros_like(ideal)
  )
  assert np.isfinite(np.asarray(grads)).all()


def test_empty_picture_loss_is_only_the_background_term():
  zeros = jnp.full((1, _GRID, _GRID, 5), -20.0)
  loss, terms = heads.loss(zeros, jnp.zeros((1, 2, 4)), jnp.zeros((1, 2)))
  assert float(terms["size"][0]) == 0.0 and float(loss[0]) < 1e-6


def test_letterbox_and_back():
  picture = Image.new("RGB", (200, 100), (10, 20, 30))
  image, placement = boxes_lib.letterbox(picture, 64)
  assert image.shape == (64, 64, 3) and placement.scale == pytest.approx(0.32)
  assert (image[:32] == (10, 20, 30)).all() and (image[33:] == 0).all()
  image, placement = boxes_lib.letterbox(picture, 64, zoom=0.5, offset=(1.0, 1.0))
  assert (placement.offset_x, placement.offset_y) == (32, 48)
  box = np.asarray([[20, 10, 50, 40]], np.float32)
  back = placement.to_picture(placement.to_input(box), 200, 100)
  np.testing.assert_allclose(back, box, atol=1e-4)
  clipped = placement.to_picture(np.asarray([[60, 60, 20, 20]]), 200, 100)
  assert clipped[0, 0] + clipped[0, 2] <= 200 and clipped[0, 1] + clipped[0, 3] <= 100


def _record(width, height, boxes):
  """A scenes record: grey picture with a magenta square at each box."""
  pixels = np.full((height, width, 3), 128, np.uint8)
  for x, y, w, h in boxes:
    pixels[y : y + h, x : x + w] = (255, 0, 255)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return {
    "image": buffer.getvalue(),
    "objects": {"box": [np.asarray(b, np.float32) for b in boxes], "label": [0] * len(boxes)},
  }


def test_train_batch_boxes_follow_zoom_place_and_flip():
  source = [_record(120, 80, [(10, 10, 30, 30), (70, 30, 40, 40)]), _record(90, 90, [])]
  transform = pipeline.SceneBatch(source, 4, 64, 3, 0.5, True, seed=0)
  for step in range(6):
    batch = transform.map(step)
    assert batch["image"].shape == (4, 64, 64, 3)
    for image, boxes, mask in zip(batch["image"], batch["boxes"], batch["box_mask"]):
      for x, y, w, h in boxes[mask > 0]:
        inner = image[int(y + 0.25 * h) : int(y + 0.75 * h), int(x + 0.25 * w) : int(x + 0.75 * w)]
        assert inner.size and (np.abs(inner.astype(int) - (255, 0, 255)).max(-1) < 40).all()
  assert batch["mask"].tolist() == [1, 1, 0, 0]  # 2 pictures, batch 4: 2 padding rows.


def test_coco_metrics_perfect_missed_and_false_boxes():
  truth = np.asarray([[10, 10, 40, 40], [100, 100, 30, 30]], np.float32)
  perfect = [coco.PictureResult(200, 200, truth, truth, np.asarray([0.9, 0.8]))]
  result = coco.metrics(perfect, threshold=0.5)
  assert result["ap50"] == pytest.approx(1.0) and result["ap"] == pytest.approx(1.0)
  assert result["recall"] == 1.0 and result["precision"] == 1.0
  # One head found, one missed (score under the threshold), one false box above it.
  found = np.asarray([[11, 10, 40, 40], [100, 100, 30, 30], [150, 10, 30, 30]], np.float32)
  half = [
    coco.PictureResult(200, 200, truth, found, np.asarray([0.9, 0.2, 0.6])),
    coco.PictureResult(200, 200, np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0)),
    coco.PictureResult(200, 200, np.zeros((0, 4)), found[:1], np.asarray([0.7])),
  ]
  result = coco.metrics(half, threshold=0.5)
  assert result["recall"] == 0.5 and result["precision"] == pytest.approx(1 / 3)
  assert result["empty_clean"] == 0.5 and result["num_boxes"] == 2
  assert 0.3 < result["ap50"] < 1.0


def test_centernet_output_shape_and_size():
  model = models.create_model("centernet", 1, widths=(16, 32, 48, 64), head_width=32)
  images = jnp.zeros((2, 160, 160, 3))
  output, variables = jax.eval_shape(
    lambda: model.init_with_output(jax.random.PRNGKey(0), images, train=False)
  )
  assert output.shape == (2, 40, 40, 5) and output.dtype == jnp.float32
  assert models.count_params(variables["params"]) == 161_269
  with pytest.raises(ValueError, match="multiples of 16"):
    jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 100, 100, 3)), train=False)
    )


def test_config_validation_ties_task_model_and_dataset():
  from animesion_jax.training import config_validation  # pylint: disable=g-import-not-at-top
  from configs import detector_quickstart  # pylint: disable=g-import-not-at-top

  config_validation.validate(detector_quickstart.get_config(), num_devices=1, num_processes=1)
  for field, value, message in (
    ("task", "classify", "'centernet' is a 'detect' model"),
    ("dataset", "synthetic_characters", "cannot train on config.dataset='synthetic_characters'"),
    ("image_size", 100, "multiple of 16"),
  ):
    config = detector_quickstart.get_config()
    config[field] = value
    with pytest.raises(config_validation.ConfigError, match=message):
      config_validation.validate(config, num_devices=1, num_processes=1)
