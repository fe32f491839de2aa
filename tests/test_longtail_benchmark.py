"""The long-tailed synthetic benchmark (synthetic_characters/longtail) and compare_runs."""

import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from animesion_jax.data import datasets
from tfds_builders.common import class_counts
from tfds_builders.synthetic_characters import drawing
from tfds_builders.synthetic_characters import synthetic_characters_dataset_builder as scb
from tools import compare_runs


def test_longtail_config_has_daf_re_shape_without_building():
  config = next(c for c in scb.Builder.BUILDER_CONFIGS if c.name == "longtail")
  characters = config.characters()
  assert len(characters) == 300 and len({c.name for c in characters}) == 300
  counts = np.array(config.split_counts("train"))
  assert (counts.max(), counts.min(), counts.sum()) == (200, 4, 6198)
  assert counts.max() / counts.min() >= 50
  # DAF:re's training split: median 32 = 2.3x its minimum 14.
  assert np.median(counts) / counts.min() == pytest.approx(2.25)
  assert config.split_counts("validation") == [10] * 300
  assert config.split_counts("test") == [20] * 300
  # The head is not the first labels: frequency is a seeded permutation of the ranks.
  assert counts.argmax() != 0 and not (np.diff(counts) <= 0).all()


def test_generated_characters_differ_in_two_attributes():
  characters = drawing.generated_characters(540, seed=0)
  distances = [
    sum(a != b for a, b in zip(x.attributes(), y.attributes()))
    for x, y in itertools.combinations(characters, 2)
  ]
  assert min(distances) == 2
  # Round-robin over (hair colour, style, accessory): the first 252 share no such triple.
  triples = {(c.hair_color, c.hair_style, c.accessory) for c in characters[:252]}
  assert len(triples) == 252
  assert drawing.generated_characters(300, seed=0) == characters[:300]
  assert drawing.generated_characters(300, seed=1) != characters[:300]
  with pytest.raises(ValueError, match="1 to 540"):
    drawing.generated_characters(541, seed=0)


def test_default_config_is_unchanged(tmp_path):
  builder = scb.Builder(data_dir=tmp_path)
  assert builder.info.features["label"].names == drawing.class_names()
  assert builder.builder_config.split_counts("train") == [360] * len(drawing.CHARACTERS)
  assert builder.info.description.startswith("SYNTHETIC data: 28 procedurally drawn")


@pytest.fixture(scope="module")
def tiny_longtail(tmp_path_factory):
  """The seconds-long `longtail_small` build: 30 characters, 20 down to 2 training images."""
  builder = scb.Builder(config="longtail_small", data_dir=tmp_path_factory.mktemp("tfds"))
  builder.download_and_prepare(file_format="array_record")
  return builder


def test_tiny_longtail_build_stores_its_counts(tiny_longtail):
  want = tiny_longtail.builder_config.split_counts("train")
  assert max(want) == 20 and min(want) == 2
  stored = tiny_longtail.info.metadata[class_counts.METADATA_KEY]
  assert stored["train"] == want
  assert stored["test"] == [2] * 30
  counts = datasets.stored_train_counts(tiny_longtail, "synthetic_characters")
  assert counts.tolist() == want
  labels = datasets.train_labels(tiny_longtail, "synthetic_characters")
  assert np.bincount(labels, minlength=30).tolist() == want
  names = tiny_longtail.info.features["label"].names
  assert names == [c.name for c in drawing.generated_characters(30, 0)]


def test_carved_validation_is_taken_off_the_counts(tiny_longtail, monkeypatch):
  # As for a dataset without a validation split (moeImouto): 20% of train is carved off.
  monkeypatch.setattr(datasets, "carves_validation", lambda builder, fraction: fraction > 0)
  counts = datasets.stored_train_counts(tiny_longtail, "synthetic_characters", 0.2)
  labels = datasets.train_labels(tiny_longtail, "synthetic_characters", 0.2)
  total = sum(tiny_longtail.builder_config.split_counts("train"))
  assert len(labels) == total - round(0.2 * total)
  assert counts.tolist() == np.bincount(labels, minlength=30).tolist()


def test_missing_counts_are_a_clear_error(tiny_longtail):
  reloaded = scb.Builder(config=tiny_longtail.builder_config, data_dir=tiny_longtail.data_dir_root)
  del reloaded.info.metadata[class_counts.METADATA_KEY]
  with pytest.raises(datasets.MissingClassCounts, match="--overwrite"):
    datasets.stored_train_counts(reloaded, "synthetic_characters")


def _report(workdir: str, top1: float, few: float, tau: float = 0.0) -> dict:
  group = lambda value, title: {"title": title, "mean_class_top1": value}
  return {
    "workdir": workdir,
    "training_loss": "softmax",
    "tau_norm": tau,
    "top1": top1,
    "top5": 0.9,
    "mean_class_top1": (top1 + few) / 2,
    "shot_groups": {"many_above": 40, "few_below": 10},
    "groups": {
      "many": group(0.95, "many-shot (>40)"),
      "medium": group(0.5, "medium-shot (10-40)"),
      "few": group(few, "few-shot (<10)"),
    },
  }


def test_compare_runs_table_and_chart(tmp_path):
  run = tmp_path / "runs" / "lt_softmax"
  evaluations = run / "evaluation"
  for name, report in (
    ("test_step10", _report(str(run), 0.5, 0.1)),
    ("test_step20", _report(str(run), 0.6, 0.2)),
    ("test_step20_tau1", _report(str(run), 0.55, 0.3, tau=1.0)),
    ("validation_step20", _report(str(run), 0.9, 0.9)),
  ):
    (evaluations / name).mkdir(parents=True)
    (evaluations / name / "evaluation.json").write_text(json.dumps(report))
  table = compare_runs.compare(
    [str(run), str(evaluations / "test_step20_tau1")], output=tmp_path / "chart.png"
  )
  lines = table.splitlines()
  assert lines[0].startswith(
    "| run | loss | overall top-1 | class-balanced top-1 | many-shot (>40)"
  )
  # The run's newest test evaluation (step 20, not tau-normalised), then the tau one.
  assert lines[2] == "| lt_softmax | softmax | 60.0 | 40.0 | 95.0 | 50.0 | 20.0 | 90.0 |"
  assert lines[3] == "| lt_softmax tau=1 | softmax | 55.0 | 42.5 | 95.0 | 50.0 | 30.0 | 90.0 |"
  assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(FileNotFoundError, match="animesion_jax.evaluate --workdir"):
    compare_runs.evaluation_file(tmp_path / "runs", "test")


def test_longtail_config_is_registered():
  """The benchmark is reachable by its registered name, as the config files use it."""
  assert "longtail" in [c.name for c in tfds.builder_cls("synthetic_characters").BUILDER_CONFIGS]
