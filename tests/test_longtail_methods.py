"""Long-tail methods' numerics: losses, class-balanced sampling, tau-normalisation, shot groups."""

import io

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from animesion_jax.data import class_balanced
from animesion_jax.data import pipeline
from animesion_jax.inference import longtail
from animesion_jax.training import losses

_COUNTS = np.array([200, 60, 12, 4, 4])


def _numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """-log softmax(logits)[label], computed directly in float64."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels]


@pytest.fixture
def logits_and_labels():
  rng = np.random.default_rng(0)
  return rng.normal(0, 3, (16, len(_COUNTS))).astype(np.float32), rng.integers(0, 5, 16)


def test_softmax_loss_is_plain_cross_entropy(logits_and_labels):
  logits, labels = logits_and_labels
  assert losses.logit_offsets("softmax", _COUNTS) is None
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, _numpy_cross_entropy(logits, labels), rtol=1e-5)


def test_balanced_softmax_matches_numpy(logits_and_labels):
  """Ren et al.: softmax over logits + log n_j."""
  logits, labels = logits_and_labels
  offsets = losses.logit_offsets("balanced_softmax", _COUNTS)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), offsets=offsets)
  want = _numpy_cross_entropy(logits + np.log(_COUNTS), labels)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The rare classes' loss is larger than plain softmax's (their logits are pushed down).
  rare = labels >= 3
  assert (np.asarray(got)[rare] > _numpy_cross_entropy(logits, labels)[rare]).all()


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_matches_numpy(logits_and_labels, tau):
  """Menon et al.: softmax over logits + tau * log(prior)."""
  logits, labels = logits_and_labels
  offsets = losses.logit_offsets("logit_adjusted", _COUNTS, tau)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), offsets=offsets)
  prior = _COUNTS / _COUNTS.sum()
  np.testing.assert_allclose(got, _numpy_cross_entropy(logits + tau * np.log(prior), labels), 1e-5)
  if tau == 1.0:  # The same loss as balanced softmax (a constant shift of every logit).
    balanced = losses.cross_entropy(
      jnp.asarray(logits),
      jnp.asarray(labels),
      offsets=losses.logit_offsets("balanced_softmax", _COUNTS),
    )
    np.testing.assert_allclose(got, balanced, rtol=1e-5)


def test_label_smoothing_with_offsets_matches_numpy(logits_and_labels):
  logits, labels = logits_and_labels
  offsets = losses.logit_offsets("balanced_softmax", _COUNTS)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1, offsets)
  shifted = (logits + np.log(_COUNTS)).astype(np.float64)
  log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  targets = np.full(logits.shape, 0.1 / logits.shape[1])
  targets[np.arange(len(labels)), labels] += 0.9
  np.testing.assert_allclose(got, -(targets * log_probs).sum(1), rtol=1e-5)


def test_loss_errors_are_clear():
  with pytest.raises(ValueError, match="choose one of"):
    losses.logit_offsets("focal", _COUNTS)
  with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
    losses.logit_offsets("balanced_softmax", np.array([3, 0, 2]))


def test_class_balanced_sampler_draws_classes_uniformly():
  # 200, 60, 12, 4, 4 records of classes 0-4, in a shuffled order.
  labels = np.random.default_rng(1).permutation(np.repeat(np.arange(5), _COUNTS))
  sampler = class_balanced.ClassBalancedSampler.from_labels(labels)
  draws = 100_000
  picked = sampler.sample(np.random.default_rng(2), draws)
  classes = np.bincount(labels[picked], minlength=5) / draws
  # Each class 20% +- 4 standard errors (sqrt(0.2 * 0.8 / 1e5) = 0.13%); the data is 71% class 0.
  np.testing.assert_allclose(classes, 0.2, atol=0.006)
  # Within a class, each record is equally likely (class 3 has 4 records: 25% each).
  rare = picked[labels[picked] == 3]
  shares = np.unique(rare, return_counts=True)[1] / len(rare)
  assert len(shares) == 4
  np.testing.assert_allclose(shares, 0.25, atol=0.02)


def _png(value: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def test_train_pipeline_batches_are_class_balanced_and_reproducible():
  labels = np.repeat(np.arange(4), [90, 6, 3, 1])
  source = [{"image": _png(int(label) * 60), "label": int(label)} for label in labels]
  batch = pipeline.TrainBatch(
    source,
    global_batch_size=50,
    image_size=8,
    resize_margin=0,
    horizontal_flip=False,
    seed=3,
    sampler=class_balanced.ClassBalancedSampler.from_labels(labels),
  )
  batches = [batch.map(step) for step in range(40)]
  seen = np.concatenate([b["label"] for b in batches])
  np.testing.assert_allclose(np.bincount(seen, minlength=4) / len(seen), 0.25, atol=0.04)
  assert all(b["mask"].all() for b in batches)  # Every row real, also at an epoch's end.
  # The image is the record's own (its grey level encodes the label).
  np.testing.assert_array_equal(batches[0]["image"][:, 0, 0, 0], batches[0]["label"] * 60)
  again = batch.map(7)
  np.testing.assert_array_equal(again["label"], batches[7]["label"])
  # Without the sampler, an epoch is the data's own distribution (90% class 0).
  plain = pipeline.TrainBatch(source, 50, 8, 0, False, 3)
  first_epoch = np.concatenate([plain.map(step)["label"] for step in range(2)])
  assert np.bincount(first_epoch, minlength=4).tolist() == [90, 6, 3, 1]


def test_tau_normalisation_matches_numpy():
  rng = np.random.default_rng(0)
  kernel = rng.normal(0, 1, (6, 4)).astype(np.float32) * np.array([4.0, 2.0, 1.0, 0.5], np.float32)
  variables = {"params": {"head": {"kernel": kernel, "bias": np.ones(4, np.float32)}, "x": 1}}
  for tau in (0.5, 1.0, 2.0):
    got = longtail.tau_normalized(variables, "head", tau)["params"]
    norms = np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=0))
    np.testing.assert_allclose(got["head"]["kernel"], kernel / norms**tau, rtol=1e-6)
    np.testing.assert_array_equal(got["head"]["bias"], np.zeros(4))
    assert got["x"] == 1
  unit = longtail.tau_normalized(variables, "head", 1.0)["params"]["head"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(unit, axis=0), 1.0, rtol=1e-6)
  assert longtail.tau_normalized(variables, "head", 0.0) is variables
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"], kernel)  # Not changed.


def test_shot_group_thresholds_are_configurable():
  counts = np.array([200, 41, 40, 10, 9, 4])
  assert longtail.shot_groups(counts).tolist() == ["many", "medium", "medium", "few", "few", "few"]
  assert longtail.shot_groups(counts, 40, 10).tolist() == [
    "many",
    "many",
    "medium",
    "medium",
    "few",
    "few",
  ]
  labels = np.arange(6)
  top = np.stack([labels, labels], axis=1)
  top[5, 0] = 0  # Class 5 (4 training images) wrong.
  report = longtail.summarize(labels, top, counts, list("abcdef"), many_above=40, few_below=10)
  assert report["shot_groups"] == {"many_above": 40, "few_below": 10}
  assert report["groups"]["few"]["title"] == "few-shot (<10)"
  assert report["groups"]["few"]["classes"] == 2
  assert report["groups"]["few"]["mean_class_top1"] == 0.5
  assert report["groups"]["many"]["mean_class_top1"] == 1.0
  assert report["mean_class_top1"] == pytest.approx(5 / 6)


def test_paper_configs_keep_softmax_and_the_longtail_config_validates():
  from animesion_jax.training import config_validation  # pylint: disable=g-import-not-at-top
  from configs import longtail as longtail_config  # pylint: disable=g-import-not-at-top
  from configs import paper  # pylint: disable=g-import-not-at-top
  from configs import vit_b16  # pylint: disable=g-import-not-at-top

  for config in (vit_b16.get_config(), paper.get_config("1,B-16,scratch")):
    assert (config.loss, config.class_balanced_sampling, config.tau_norm) == ("softmax", False, 0)
    assert (config.many_shot_above, config.few_shot_below) == (100, 20)
  config = longtail_config.get_config()
  config_validation.validate(config, num_devices=1, num_processes=1)
  assert (config.dataset_config, config.many_shot_above, config.few_shot_below) == (
    "longtail",
    40,
    10,
  )
  config.loss = "focal"
  with pytest.raises(config_validation.ConfigError, match="config.loss='focal'"):
    config_validation.validate(config, num_devices=1, num_processes=1)
