"""Learning-rate schedules and optimizer options."""

import ml_collections
import numpy as np
import optax
import pytest

from animesion_jax import config_schema as base
from animesion_jax.training import optim


def _config(dataset: str = "dafre", **overrides) -> ml_collections.ConfigDict:
  config = base.get_base_config(dataset)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_paper_step_schedule_divides_by_three_every_20_epochs():
  config = _config()  # The paper's DAF:re default (Table 1): 50 epochs.
  assert (config.num_epochs, config.decay_every_epochs) == (50, 20)
  schedule = optim.create_schedule(config, steps_per_epoch=10, total_steps=500)
  lr = lambda epoch: float(schedule(epoch * 10))
  assert lr(0) == pytest.approx(1e-3)
  assert lr(19.9) == pytest.approx(1e-3)
  assert lr(20) == pytest.approx(1e-3 / 3)
  assert lr(39.9) == pytest.approx(1e-3 / 3)
  assert lr(40) == pytest.approx(1e-3 / 9)
  assert lr(49.9) == pytest.approx(1e-3 / 9)


def test_200_epoch_runs_decay_every_50():
  config = _config("moeimouto")  # The paper's moeImouto default (Table 2): 200 epochs.
  assert (config.num_epochs, config.decay_every_epochs) == (200, 50)
  schedule = optim.create_schedule(config, 10, 2000)
  assert [float(schedule(e * 10)) for e in (49, 50, 100, 150, 199)] == pytest.approx(
    [1e-3, 1e-3 / 3, 1e-3 / 9, 1e-3 / 27, 1e-3 / 27]
  )


def test_warmup_cosine():
  schedule = optim.create_schedule(
    _config(schedule="warmup_cosine", learning_rate=0.1, warmup_epochs=1.0), 10, 100
  )
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(55)) == pytest.approx(0.05, abs=1e-6)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_sgd_momentum_matches_the_textbook_recursion():
  tx = optim.create_optimizer(_config(schedule="constant", learning_rate=0.1), 10, 100)
  params = {"w": np.array([1.0, -2.0], np.float32)}
  state = tx.init(params)
  velocity, expected = np.zeros(2), params["w"].astype(np.float64)
  for grad in ([0.5, 1.0], [0.25, -1.0], [1.0, 0.0]):
    grad = np.asarray(grad, np.float32)
    updates, state = tx.update({"w": grad}, state, params)
    params = optax.apply_updates(params, updates)
    velocity = 0.9 * velocity + grad  # torch.optim.SGD(momentum=0.9, dampening=0)
    expected = expected - 0.1 * velocity
  np.testing.assert_allclose(params["w"], expected, rtol=1e-6)


def test_freeze_backbone_updates_only_the_classifier():
  params = {
    "conv1": {"kernel": np.ones((3,), np.float32)},
    "fc": {"kernel": np.ones((3,), np.float32), "bias": np.ones((1,), np.float32)},
  }
  config = _config(schedule="constant", freeze_backbone=True)
  config.model.name = "resnet18"  # Its classifier is "fc" (models.MODELS).
  tx = optim.create_optimizer(config, 10, 100, params=params)
  grads = {
    "conv1": {"kernel": np.ones((3,), np.float32)},
    "fc": {"kernel": np.ones((3,), np.float32), "bias": np.ones((1,), np.float32)},
  }
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates["conv1"]["kernel"]) == 0)
  assert np.all(np.asarray(updates["fc"]["kernel"]) == pytest.approx(-1e-3))


def test_freeze_backbone_without_classifier_is_an_error():
  with pytest.raises(ValueError, match="no classifier parameters"):
    optim.create_optimizer(
      _config(freeze_backbone=True),
      10,
      100,
      params={"dense": {"kernel": np.ones((2,), np.float32)}},
    )
