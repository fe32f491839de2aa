"""animesion_jax.open_set.calibration: every number against a direct computation."""

import itertools

import numpy as np
import pytest

from animesion_jax.open_set import calibration


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_auroc_equals_a_brute_force_pair_count_with_ties():
  rng = _rng()
  positive = rng.integers(0, 6, 40).astype(float)  # Many ties.
  negative = rng.integers(-2, 4, 30).astype(float)
  pairs = [
    1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative)
  ]
  assert calibration.auroc(positive, negative) == pytest.approx(np.mean(pairs), abs=1e-12)
  assert calibration.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
  assert calibration.auroc([0.0], [1.0]) == 0.0


def test_threshold_accepts_the_share_and_fpr_counts_negatives_above_it():
  positive = np.arange(100, dtype=float)
  t = calibration.threshold_for(positive, 0.95)
  assert np.mean(positive >= t) == pytest.approx(0.95)
  negative = np.array([3.0, 4.0, 5.0, 50.0, 99.0])
  assert calibration.fpr_at_tpr(positive, negative) == pytest.approx(np.mean(negative >= 5.0))


def test_ece_by_hand():
  confidence = np.array([0.05, 0.1, 0.55, 0.6, 0.95, 1.0])
  correct = np.array([0, 1, 1, 0, 1, 1])
  # 15 bins of width 1/15, right edges included: 0.05 in bin 0, 0.1 in bin 1, 1.0 in bin 14.
  bins = {}
  for c, ok in zip(confidence, correct):
    b = min(int(np.ceil(c * 15)) - 1, 14) if c > 0 else 0
    bins.setdefault(b, []).append((c, ok))
  expected = sum(
    len(m) / 6 * abs(np.mean([ok for _, ok in m]) - np.mean([c for c, _ in m]))
    for m in bins.values()
  )
  assert calibration.ece(confidence, correct) == pytest.approx(expected, abs=1e-12)
  assert calibration.ece(np.ones(4), np.ones(4)) == 0.0


def test_temperature_lowers_the_nll_of_overconfident_logits():
  rng = _rng(1)
  labels = rng.integers(0, 5, 400)
  logits = rng.normal(size=(400, 5))
  logits[np.arange(400), labels] += 1.0
  logits *= 6.0  # Overconfident: the best temperature is well above 1.
  t = calibration.fit_temperature(logits, labels)
  assert t > 2.0
  assert calibration.nll(logits, labels, t) < calibration.nll(logits, labels) - 0.1
  for other in (t * 0.9, t * 1.1):  # A minimum.
    assert calibration.nll(logits, labels, t) <= calibration.nll(logits, labels, other) + 1e-9


def test_scores_against_direct_formulas():
  rng = _rng(2)
  logits = rng.normal(size=(6, 4)) * 3
  embeddings = rng.normal(size=(6, 8))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  labels = np.array([0, 1, 2, 3, 0, 1])
  protos = calibration.prototypes(embeddings, labels, 4)
  np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-6)
  t = 1.7
  p = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
  np.testing.assert_allclose(calibration.score("max_softmax", logits, None, None, t), p.max(1))
  np.testing.assert_allclose(calibration.score("max_logit", logits, None, None, t), logits.max(1))
  np.testing.assert_allclose(
    calibration.score("energy", logits, None, None, t), t * np.log(np.exp(logits / t).sum(1))
  )
  np.testing.assert_allclose(
    calibration.score("cosine", logits, embeddings, protos, t),
    (embeddings @ protos.T).max(1),
    rtol=1e-6,
  )
  dropped = calibration.score("max_logit", logits, None, None, t, drop=labels)
  masked = logits.copy()
  masked[np.arange(6), labels] = -np.inf
  np.testing.assert_allclose(dropped, masked.max(1))


def test_fit_keeps_the_best_separating_score_and_accepts_the_share():
  rng = _rng(3)
  k, d, n = 5, 16, 300
  centres = rng.normal(size=(k, d))
  labels = rng.integers(0, k, n)
  embeddings = centres[labels] + 0.3 * rng.normal(size=(n, d))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  protos = calibration.prototypes(embeddings, labels, k)
  logits = 8 * embeddings @ protos.T
  empty_emb = rng.normal(size=(60, d))
  empty_emb /= np.linalg.norm(empty_emb, axis=1, keepdims=True)
  fitted = calibration.fit(
    logits, embeddings, labels, protos, (8 * empty_emb @ protos.T, empty_emb), accept=0.9
  )
  known = calibration.score(fitted.score, logits, embeddings, protos, fitted.temperature)
  rejected = fitted.no_character_rejects(embeddings)
  assert np.mean(rejected) <= calibration.NO_CHARACTER_BUDGET
  assert np.mean((known >= fitted.threshold) & ~rejected) >= 0.9
  # Pictures like the no-character ones (small changes of them) are rejected by the rule.
  near = empty_emb + 0.05 * rng.normal(size=empty_emb.shape)
  near /= np.linalg.norm(near, axis=1, keepdims=True)
  assert np.mean(fitted.no_character_rejects(near)) > 0.9
  assert abs(fitted.threshold_at(0.9) - fitted.threshold) < 0.05 * (known.max() - known.min())
  after = fitted.metrics["probabilities"]["softmax"]["after"]["nll"]
  assert after <= fitted.metrics["probabilities"]["softmax"]["before"]["nll"] + 1e-9
  restored = calibration.Calibration.from_json(fitted.to_json(), protos, fitted.no_character)
  assert restored.to_json() == fitted.to_json()
  np.testing.assert_array_equal(
    restored.no_character_rejects(near), fitted.no_character_rejects(near)
  )


def test_fit_keeps_the_cosine_when_only_the_embeddings_separate():
  """Embeddings cluster by class, no-character ones are random; the logits are noise for both,
  so the cosine score is kept."""
  rng = _rng(6)
  k, d, n = 5, 16, 300
  centres = rng.normal(size=(k, d))
  labels = rng.integers(0, k, n)
  embeddings = centres[labels] + 0.3 * rng.normal(size=(n, d))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  empty_emb = rng.normal(size=(60, d))
  empty_emb /= np.linalg.norm(empty_emb, axis=1, keepdims=True)
  protos = calibration.prototypes(embeddings, labels, k)
  fitted = calibration.fit(
    3 * rng.normal(size=(n, k)),
    embeddings,
    labels,
    protos,
    (3 * rng.normal(size=(60, k)), empty_emb),
    accept=0.9,
  )
  assert fitted.score == "cosine"
  scores = fitted.metrics["scores"]
  assert scores["cosine"]["auroc_no_character"] > 0.99
  assert scores["max_softmax"]["auroc_no_character"] < 0.75


def test_fit_keeps_a_logit_score_when_only_the_logits_separate():
  """Known pictures have confident logits, no-character ones flat logits; the embeddings of both
  are random (no class structure), so a score of the logits is kept, not the cosine."""
  rng = _rng(5)
  k, d, n = 5, 16, 300
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += 8.0
  embeddings = rng.normal(size=(n, d))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  empty_emb = rng.normal(size=(60, d))
  empty_emb /= np.linalg.norm(empty_emb, axis=1, keepdims=True)
  protos = calibration.prototypes(embeddings, labels, k)
  fitted = calibration.fit(
    logits, embeddings, labels, protos, (rng.normal(size=(60, k)), empty_emb), accept=0.9
  )
  assert fitted.score in ("max_softmax", "max_logit", "energy")
  scores = fitted.metrics["scores"]
  assert scores[fitted.score]["auroc_no_character"] > 0.99
  assert scores["cosine"]["auroc_no_character"] < 0.75


def test_no_character_pictures_are_noise_flat_and_gradients():
  pictures = calibration.no_character_pictures(9, 16, seed=0)
  assert pictures.shape == (9, 16, 16, 3) and pictures.dtype == np.uint8
  assert pictures[0].std() > 50  # noise
  assert pictures[1].reshape(-1, 3).std(axis=0).max() == 0  # flat
  assert 0 < pictures[2].std() < 128  # gradient
  np.testing.assert_array_equal(pictures, calibration.no_character_pictures(9, 16, seed=0))


def test_enrolment_thresholds_fit_the_number_of_pictures():
  rng = _rng(4)
  k, d = 6, 32
  centres = rng.normal(size=(k, d))
  train_labels = np.repeat(np.arange(k), 60)
  val_labels = np.repeat(np.arange(k), 20)

  def draw(labels):
    x = centres[labels] + 0.8 * rng.normal(size=(len(labels), d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  train, val = draw(train_labels), draw(val_labels)
  quantiles = calibration.enrolment_quantiles(train, train_labels, val, val_labels)
  assert set(quantiles) == {"1", "2", "3", "5", "10", "20", "50"}
  medians = [quantiles[str(n)][100] for n in calibration.ENROL_SIZES]
  assert medians[0] < medians[3] < medians[-1]  # More pictures, a truer prototype.
  # With one training picture per class, the 1-shot prototype is that picture: the quantiles are
  # those of every validation picture's cosine to its class's one picture (no larger sizes).
  one = np.arange(k)
  single = calibration.enrolment_quantiles(train[one * 60], one, val, val_labels)
  assert set(single) == {"1"}
  cosines = np.concatenate([val[val_labels == c] @ train[c * 60] for c in range(k)])
  np.testing.assert_allclose(single["1"], np.quantile(cosines, np.linspace(0, 1, 201)))
  # With two per class, the 2-picture prototype is their normalised sum.
  two = np.repeat(np.arange(k), 2)
  pairs = train[np.stack([one * 60, one * 60 + 1], axis=1).reshape(-1)]
  double = calibration.enrolment_quantiles(pairs, two, val, val_labels)
  assert set(double) == {"1", "2"}
  summed = pairs[0::2] + pairs[1::2]
  summed /= np.linalg.norm(summed, axis=1, keepdims=True)
  cosines = np.concatenate([val[val_labels == c] @ summed[c] for c in range(k)])
  np.testing.assert_allclose(double["2"], np.quantile(cosines, np.linspace(0, 1, 201)))
  fitted = calibration.Calibration(
    1.0,
    1.0,
    "cosine",
    0.95,
    0.5,
    {"cosine": list(np.linspace(0.6, 0.9, 201))},
    {},
    {},
    enrolled_quantiles=quantiles,
  )
  assert fitted.enrolled_threshold(7, 0.95) == pytest.approx(np.quantile(quantiles["5"], 0.05))
  assert fitted.enrolled_threshold(500, 0.5) == pytest.approx(np.quantile(quantiles["50"], 0.5))
  without = calibration.Calibration(
    1.0, 1.0, "cosine", 0.95, 0.5, {"cosine": list(np.linspace(0.6, 0.9, 201))}, {}, {}
  )
  assert without.enrolled_threshold(5, 0.95) == pytest.approx(without.threshold_at(0.95, "cosine"))
