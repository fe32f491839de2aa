"""The open-set protocol (issue #26): folds, tune/report separation, false names, mean +- sd, the
no-character kinds; and (slow) tools/open_set_protocol.py end to end on tiny runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from animesion_jax.open_set import calibration
from animesion_jax.open_set import no_character_kinds
from animesion_jax.open_set import protocol
from tests import helpers

_NAMES = [f"c{i:02d}" for i in range(28)]


def test_folds_are_disjoint_deterministic_and_split_in_tune_and_report():
  folds = protocol.make_folds(_NAMES, fold_count=3, fold_size=8, seed=0)
  held = [set(f.held_out) for f in folds]
  assert [len(h) for h in held] == [8, 8, 8]
  assert not (held[0] & held[1]) and not (held[0] & held[2]) and not (held[1] & held[2])
  assert set().union(*held) <= set(_NAMES)
  for fold in folds:
    assert len(fold.tune) == len(fold.report) == 4
    assert not set(fold.tune) & set(fold.report)
    assert len(fold.report_enrolled) == len(fold.report_never) == 2
    assert len(fold.tune_enrolled) == len(fold.tune_never) == 2
    assert fold.holdout_flag().split(",") == list(fold.held_out)
  # Same seed, same folds; another seed deals other classes.
  assert protocol.make_folds(_NAMES, 3, 8, seed=0) == folds
  assert protocol.make_folds(_NAMES, 3, 8, seed=1) != folds
  # 7 folds of 4 cover every class exactly once.
  every = protocol.make_folds(_NAMES, fold_count=7, fold_size=4)
  assert sorted(n for f in every for n in f.held_out) == sorted(_NAMES)


def test_folds_that_do_not_fit_are_refused():
  with pytest.raises(ValueError, match="do not fit"):
    protocol.make_folds(_NAMES, fold_count=4, fold_size=8)
  with pytest.raises(ValueError, match="at least 4"):
    protocol.make_folds(_NAMES, fold_count=3, fold_size=2)


def test_shares_count_false_names_of_never_enrolled_pictures():
  truth = np.array(["x"] * 5, dtype=object)
  named = np.array(["", "known_a", "new_b", "", "x"], dtype=object)
  enrolled = np.array([False, False, True, False, False])
  shares = protocol.shares(named, enrolled, truth, known={"known_a", "known_b"})
  assert shares == pytest.approx(
    {"right": 0.2, "unknown": 0.4, "false_name": 0.4, "false_enrolled": 0.2, "false_known": 0.2}
  )


def test_summarise_gives_mean_sample_sd_and_count():
  runs = [{"a": 0.5, "b": 1.0, "per_class": {}}, {"a": 0.7, "per_class": {}}, {"a": 0.9}]
  stats = protocol.summarise(runs)
  assert stats["a"] == pytest.approx((0.7, 0.2, 3))
  assert stats["b"] == (1.0, 0.0, 1)
  per_class = protocol.per_class_summary(
    [{"per_class": {"x": {"u": 0.2}}}, {"per_class": {"x": {"u": 0.4}, "y": {"u": 1.0}}}]
  )
  assert per_class["x"]["u"] == pytest.approx((0.3, np.sqrt(0.02), 2))
  assert per_class["y"]["u"] == (1.0, 0.0, 1)


def _unit(rows):
  rows = np.asarray(rows, np.float64)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _world(seed=0, per_class=40):
  """3 known classes on axes 0-2 and the 8 held-out classes of a fold on axes 3-10 (class 'r3',
  never enrolled, sits on the enrolled report class 'r0''s axis): logits = 8 x cosine to the known
  prototypes. Returns (calibration, class names, fold, pictures by split, draws)."""
  rng = np.random.default_rng(seed)
  dim = 12
  fold = protocol.Fold(0, ("t0",), ("t1", "t2", "t3"), ("r0", "r1"), ("r2", "r3"))
  axes = {"k0": 0, "k1": 1, "k2": 2, "t0": 3, "t1": 4, "t2": 5, "t3": 6}
  axes.update({"r0": 7, "r1": 8, "r2": 9, "r3": 7})

  def pictures(classes, n=per_class, noise=0.15):
    names = np.repeat(np.asarray(classes, dtype=object), n)
    emb = _unit(np.eye(dim)[[axes[c] for c in names]] + noise * rng.normal(size=(len(names), dim)))
    return protocol.Pictures(8.0 * emb[:, :3], emb.astype(np.float32), names)

  known = ["k0", "k1", "k2"]
  val, test = pictures(known), pictures(known)
  labels = np.array([known.index(n) for n in val.names])
  empty = _unit(rng.normal(size=(30, dim)))
  fitted = calibration.fit(
    val.logits, val.embeddings, labels, np.eye(dim)[:3], (8.0 * empty[:, :3], empty)
  )
  fitted.enrolled_quantiles = {}
  held = pictures(list(fold.held_out))
  train = pictures(list(fold.held_out), n=10)
  draws = {
    k: [{c: train.embeddings[train.names == c][d : d + k] for c in fold.held_out} for d in (0, 5)]
    for k in (1, 5)
  }
  return fitted, known, fold, {"val": val, "test": test, "held": held}, draws


def test_report_counts_false_names_of_a_never_enrolled_class_through_decide():
  fitted, known, fold, pics, draws = _world()
  thresholds = protocol.tune(fitted, known, pics["val"], pics["held"], draws, fold)
  result = protocol.report(
    fitted, thresholds, known, pics["test"], pics["held"], draws, fold, no_character={}
  )
  per_class = result["per_class"]
  assert set(per_class) == set(fold.report)
  # Enrolled report classes are named; 'r2' (its own axis) stays unknown; 'r3', drawn on r0's
  # axis, takes r0's enrolled name: every one of its pictures is a false (enrolled) name.
  assert per_class["r0"]["shot5_named"] > 0.9 and per_class["r1"]["shot5_named"] > 0.9
  assert per_class["r2"]["shot5_false_name"] < 0.1
  assert per_class["r3"]["shot5_false_name"] > 0.9
  assert result["shot5_never_false_name"] == pytest.approx(
    (per_class["r2"]["shot5_false_name"] + per_class["r3"]["shot5_false_name"]) / 2, abs=1e-9
  )
  assert result["shot5_never_false_enrolled"] == pytest.approx(result["shot5_never_false_name"])
  # Before enrolment, all four report classes are far from the known ones: unknown.
  assert result["report_unknown"] > 0.9 and result["known_rejected"] <= 0.1


def test_tuning_never_sees_report_classes():
  fitted, known, fold, pics, draws = _world()
  chosen = protocol.tune(fitted, known, pics["val"], pics["held"], draws, fold)
  # Moving every report-class picture (and enrolment draw) onto a known class changes nothing.
  held = pics["held"]
  moved_emb = held.embeddings.copy()
  report = np.isin(held.names, fold.report)
  on_known = np.arange(report.sum()) % len(pics["val"])
  moved_emb[report] = pics["val"].embeddings[on_known]
  moved = protocol.Pictures(held.logits.copy(), moved_emb, held.names)
  moved.logits[report] = pics["val"].logits[on_known]
  # Report classes' enrolment pictures moved onto a tune never-enrolled class: were they enrolled
  # while tuning, its pictures would take their names.
  decoy = held.embeddings[held.names == "t1"]
  moved_draws = {
    k: [{c: (e if c in fold.tune else decoy[: len(e)]) for c, e in d.items()} for d in ds]
    for k, ds in draws.items()
  }
  assert protocol.tune(fitted, known, pics["val"], moved, moved_draws, fold) == chosen
  # Moving a tune class does change the choice (the test can fail).
  tune = np.isin(held.names, fold.tune_never)
  moved_emb = held.embeddings.copy()
  on_known = np.arange(tune.sum()) % len(pics["val"])
  moved_emb[tune] = pics["val"].embeddings[on_known]
  logits = held.logits.copy()
  logits[tune] = pics["val"].logits[on_known]
  changed = protocol.Pictures(logits, moved_emb, held.names)
  assert protocol.tune(fitted, known, pics["val"], changed, draws, fold) != chosen


def test_tuned_calibration_uses_the_tuned_thresholds():
  fitted, known, fold, pics, draws = _world()
  thresholds = protocol.Thresholds("cosine", 0.97, 0.42, {5: 0.61}, {})
  tuned = protocol.tuned_calibration(fitted, thresholds, 5)
  assert (tuned.score, tuned.threshold) == ("cosine", 0.42)
  assert tuned.enrolled_threshold(1, 0.5) == pytest.approx(0.61)
  assert tuned.enrolled_threshold(50, 0.99) == pytest.approx(0.61)
  assert fitted.threshold != 0.42  # The fitted one is not changed.


@pytest.mark.parametrize("kind", no_character_kinds.FITTED_KINDS + no_character_kinds.UNSEEN_KINDS)
def test_no_character_kinds_are_deterministic_pictures(kind):
  pictures = no_character_kinds.draw(kind, 12, 32, seed=3)
  assert pictures.shape == (12, 32, 32, 3) and pictures.dtype == np.uint8
  np.testing.assert_array_equal(pictures, no_character_kinds.draw(kind, 12, 32, seed=3))
  assert not np.array_equal(pictures, no_character_kinds.draw(kind, 12, 32, seed=4))
  # Not all the same picture.
  assert len({p.tobytes() for p in pictures}) == 12


def _roughness(pictures):
  """Mean absolute difference of horizontally neighbouring pixels."""
  return float(np.abs(np.diff(pictures.astype(np.float64), axis=2)).mean())


def test_unseen_kinds_differ_from_the_fitted_ones():
  noise = no_character_kinds.draw("noise", 30, 32, 0)
  flat = no_character_kinds.draw("flat", 30, 32, 0)
  assert _roughness(noise) > 60 and _roughness(flat) == 0
  for kind in no_character_kinds.UNSEEN_KINDS:
    pictures = no_character_kinds.draw(kind, 30, 32, 0)
    # Far smoother than uniform noise; not flat colours; not linear gradients (a linear
    # gradient's second differences are ~0 in both directions everywhere but for rounding).
    assert _roughness(pictures) < 30, kind
    assert np.mean([len(np.unique(p.reshape(-1, 3), axis=0)) > 1 for p in pictures]) > 0.9, kind
    second = np.abs(np.diff(pictures.astype(np.float64), n=2, axis=1)).max(axis=(1, 2, 3))
    assert np.mean(second > 8) > 0.5, kind


def test_unknown_kind_is_refused():
  with pytest.raises(ValueError, match="Unknown no-character kind"):
    no_character_kinds.draw("clouds", 1, 8, 0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_protocol_tool_trains_folds_and_reports_mean_and_sd(tmp_path):
  """3 folds x 1 seed of tiny runs, trained by the tool itself, then measured."""
  (tmp_path / "tiny_config.py").write_text(
    "from tests import helpers\n\n\ndef get_config():\n"
    "  config = helpers.tiny_config()\n  config.model.num_layers = 1\n  return config\n"
  )
  env = helpers.subprocess_env(tmp_path)
  command = [
    sys.executable,
    os.path.join(helpers.REPO, "tools", "open_set_protocol.py"),
    "--config=tiny_config.py",
    "--root=runs",
    "--seeds=0",
    "--shots=1,2",
    "--draws=2",
    "--no_character=6",
    "--json=protocol.json",
  ]
  absent = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
  assert absent.returncode == 1 and "add --train" in absent.stderr
  done = subprocess.run(
    [*command, "--train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "3 runs (folds x seeds) measured" in done.stdout
  assert "| 2-shot: never-enrolled given a false name |" in done.stdout
  record = json.loads((tmp_path / "protocol.json").read_text())
  folds, runs = record["folds"], record["runs"]
  assert len(runs) == 3 and [r["fold"] for r in runs] == [0, 1, 2]
  report_classes = [n for f in folds for n in f["report_enrolled"] + f["report_never"]]
  assert sorted(n for r in runs for n in r["per_class"]) == sorted(report_classes)
  for fold, run in zip(folds, runs):
    held = json.loads((tmp_path / run["run"] / "config.json").read_text())["open_set"]
    assert sorted(held["holdout_classes"].split(",")) == sorted(
      fold["tune_enrolled"] + fold["tune_never"] + fold["report_enrolled"] + fold["report_never"]
    )
    for kind in no_character_kinds.UNSEEN_KINDS:
      assert 0.0 <= run[f"no_character_{kind}_unknown"] <= 1.0
  # The printed mean is the runs' mean.
  mean = np.mean([r["report_unknown"] for r in runs])
  assert f"| {mean:.3f} +- " in done.stdout
