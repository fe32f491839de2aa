"""Consistency and robustness of the answers (#26 item 4): empty inputs, the unknown wording,
tau-normalisation, checkpoint fingerprints, refining a known class, a server seeing enrolments."""

import dataclasses

from etils import epath
import ml_collections
import numpy as np
import pytest

from animesion_jax import models
from animesion_jax import organize
from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.inference import crops as crops_lib
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import gallery
from animesion_jax.open_set import grouping
from animesion_jax.training import model_setup


def _calibration(classes=3, dim=6):
  return calibration.Calibration(
    temperature=2.0,
    cosine_scale=10.0,
    score="cosine",
    accept=0.95,
    threshold=0.6,
    quantiles={name: list(np.linspace(0.3, 0.9, 201)) for name in calibration.SCORES},
    metrics={},
    provenance={},
    prototypes=np.eye(classes, dim, dtype=np.float32),
  )


def test_no_picture_gets_no_answer_even_calibrated_with_a_gallery():
  characters = {"newbie": gallery.Character(1, np.eye(6)[3], ["n.png"])}
  answers = answering.decide(
    np.zeros((0, 3), np.float32),
    np.zeros((0, 0), np.float32),  # What Recognizer.embed returns for no picture.
    ["a", "b", "c"],
    _calibration(),
    gallery.Gallery({}, characters),
  )
  assert answers == []


class _NoPictureRun:
  """A run that must not be asked anything: there is no picture to embed."""

  config = type("Config", (), {"image_size": 8})()

  def embed(self, *_):
    raise AssertionError("embed called with no picture")


def test_organize_of_an_all_unreadable_folder_returns_no_group(tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a picture")
  files = [crops_lib.image_files.ImageFile(str(bad), "broken.png")]
  groups, crops = organize.organize(_NoPictureRun(), files)
  assert groups == [] and crops.files == []
  assert [p["file"] for p in crops.problems] == [str(bad)]


def _clusters(count, per, dim=32, seed=0):
  rng = np.random.default_rng(seed)
  centres = np.linalg.qr(rng.normal(size=(dim, count)))[0].T  # Orthogonal: far apart.
  points = np.repeat(centres, per, axis=0) + 0.05 * rng.normal(size=(count * per, dim))
  return points / np.linalg.norm(points, axis=1, keepdims=True), np.repeat(np.arange(count), per)


def test_grouping_many_pictures_never_builds_their_n_by_n_distances(monkeypatch):
  embeddings, labels = _clusters(6, 150)  # 900 pictures, linkage on at most 200 at a time.
  largest = []
  pdist = grouping.scipy_distance.pdist

  def counted(x, *args):
    largest.append(len(x))
    return pdist(x, *args)

  monkeypatch.setattr(grouping.scipy_distance, "pdist", counted)
  ids = grouping.cluster(embeddings, 0.5, max_linkage=200)
  assert max(largest) <= 200
  assert grouping.adjusted_rand_index(ids, labels) == 1.0
  # Far from every cluster mean (cosine below 0.9): a cluster of its own, not the nearest's.
  lone = np.zeros((1, embeddings.shape[1]))
  lone[0, 0] = 1.0
  ids = grouping.cluster(np.concatenate([embeddings, lone]), 0.1, max_linkage=200)
  assert (ids[:-1] != ids[-1]).all()


def test_near_duplicates_in_blocks_find_the_first_earlier_copy():
  embeddings, _ = _clusters(3, 200)
  embeddings[450] = embeddings[7]
  embeddings[599] = embeddings[300]
  found = grouping.near_duplicates(embeddings)
  assert found[450] == 7 and found[599] == 300 and found[0] == -1
  assert sum(f >= 0 for f in found) == 2


def test_an_unknown_answer_is_worded_with_no_percentage_and_its_top_k_as_guesses():
  answer = answering.Answer(
    character=None,
    unknown=True,
    confidence=0.912,
    closest="kin_long",
    enrolled=False,
    calibrated=True,
    top_k=(answering.Ranked(1, 3, "kin_long", 0.912), answering.Ranked(2, 0, "asuka", 0.05)),
  )
  assert answer.describe() == "unknown (not sure enough to name; nearest: kin_long)"
  known = dataclasses.replace(answer, character="asuka", unknown=False, closest="asuka")
  rows = [{"file": f, "face": None} | a.to_json() for f, a in [("n.png", answer), ("a.png", known)]]
  table = predict.format_table(rows).splitlines()
  assert table[1].split()[2:5] == ["kin_long", "(91.2%)", "unknown"]
  assert table[3].split()[:4] == ["a.png", "1", "kin_long", "91.2%"]
  assert table[-1] == f"(Probabilities in parentheses: {answering.GUESSES_NOTE}.)"
  assert "(" not in predict.format_table(rows[1:])  # Named pictures: plain percentages.


def _restored(tmp_path, tau_norm, step=4, seed=0):
  """What model_setup.restore_run gives for a run whose config says `tau_norm` (random
  variables of a tiny ShallowNet: no checkpoint on disk)."""
  from tests import test_export  # pylint: disable=g-import-not-at-top

  tiny = test_export.tiny_run("shallow")
  config = ml_collections.ConfigDict(dict(tiny.config))
  config.tau_norm = tau_norm
  variables = test_export._random_variables(tiny.model, tiny.config.image_size, seed)  # pylint: disable=protected-access
  return model_setup.RestoredRun(
    run_dir.RunDir(tmp_path),
    config,
    tiny.model,
    variables,
    tiny.class_names,
    epath.Path(tmp_path) / "checkpoints" / str(step),
    step,
  )


@pytest.fixture
def restore(monkeypatch, tmp_path):
  """restore(tau_norm, step=4, seed=0): what load_run restores next."""
  found = {}

  def restore(tau_norm, step=4, seed=0):
    found["run"] = _restored(tmp_path, tau_norm, step, seed)

  monkeypatch.setattr(model_setup, "restore_run", lambda *_: found["run"])
  return restore


def test_the_runs_tau_norm_is_applied_by_load_run_and_recorded(restore, tmp_path):
  restore(tau_norm=1.0)
  plain = recognizer.load_run(tmp_path, tau_norm=0.0)
  loaded = recognizer.load_run(tmp_path)  # Every command and the Python API load this way.
  assert (plain.tau_norm, loaded.tau_norm) == (0.0, 1.0)
  head = models.family_of(loaded.model).head
  kernel = np.asarray(loaded.variables["params"][head]["kernel"])
  np.testing.assert_allclose(
    np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0), 1.0, rtol=1e-6
  )
  assert not np.allclose(kernel, np.asarray(plain.variables["params"][head]["kernel"]))
  pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), np.uint8)
  assert not np.allclose(loaded.embed(pixels)[0], plain.embed(pixels)[0])
  assert answering.provenance(loaded)["tau_norm"] == 1.0
  assert loaded.fingerprint != plain.fingerprint  # The parameters as answered differ.


def _save(provenance, tmp_path):
  fitted = dataclasses.replace(
    _calibration(classes=7, dim=4), provenance=provenance, no_character=np.zeros((2, 4), np.float32)
  )
  answering.save_calibration(fitted, epath.Path(tmp_path))


def test_a_calibration_is_used_only_by_the_parameters_it_was_fitted_with(restore, tmp_path):
  restore(tau_norm=1.0)
  _save(answering.provenance(recognizer.load_run(tmp_path, tau_norm=0.0)), tmp_path)
  # Fitted on the untouched classifier: refused by the tau-normalised one the run names.
  refused = recognizer.load_run(tmp_path)
  assert refused.answerer.calibration is None
  assert "fingerprint=" in refused.answerer.note
  assert recognizer.load_run(tmp_path, tau_norm=0.0).answerer.calibration is not None
  # Same parameters under another step (a copied or renamed checkpoint): the fingerprint decides.
  restore(tau_norm=0.0, step=9)
  assert recognizer.load_run(tmp_path).answerer.calibration is not None
  # Other parameters at the same step: refused.
  restore(tau_norm=0.0, seed=1)
  assert recognizer.load_run(tmp_path).answerer.calibration is None


def test_a_calibration_made_before_fingerprints_keeps_working(restore, tmp_path):
  restore(tau_norm=0.0)
  old = {"model": "shallow", "step": 4, "checkpoint": None, "num_classes": 7}
  _save(old, tmp_path)
  assert recognizer.load_run(tmp_path).answerer.calibration is not None
  restore(tau_norm=1.0)  # It was fitted untouched by tau_norm (calibrate never applied it).
  refused = recognizer.load_run(tmp_path)
  assert refused.answerer.calibration is None and "tau_norm=0.0" in refused.answerer.note
  restore(tau_norm=0.0, step=9)  # Without a fingerprint, today's check: the step.
  assert "step=4" in recognizer.load_run(tmp_path).answerer.note


def test_a_gallery_is_tied_to_the_parameters_and_an_old_one_gets_a_fingerprint(restore, tmp_path):
  restore(tau_norm=0.0)
  run = recognizer.load_run(tmp_path, read_open_set=False)
  directory = epath.Path(tmp_path) / run_dir.GALLERY_DIR
  old = {"model": "shallow", "step": 4, "checkpoint": None, "num_classes": 7}
  gallery.enroll(directory, old, "newbie", np.eye(1, 4), ["n.png"], run.class_names)
  assert recognizer.load_run(tmp_path).answerer.gallery.names == ["newbie"]
  gallery.enroll(
    directory, answering.provenance(run), "other", np.eye(1, 4), ["o.png"], run.class_names
  )
  stored = gallery.load(directory, answering.provenance(run)).provenance
  assert stored["fingerprint"] == run.fingerprint
  restore(tau_norm=0.0, seed=1)
  with pytest.raises(gallery.GalleryMismatch, match="fingerprint"):
    recognizer.load_run(tmp_path)


def test_refining_a_known_class_moves_its_prototype_and_adds_no_second_name():
  fitted = dataclasses.replace(_calibration(), class_counts=[3, 3, 3])
  # Three pictures of class 'b' drawn along e3: 'b' refined, no 'b' enrolled beside it.
  added = gallery.Gallery({}, {"b": gallery.Character(3, 3 * np.eye(6)[3], ["b.png"] * 3)})
  embedding = 0.6 * np.eye(6)[1] + 0.8 * np.eye(6)[3]  # Nearer the added pictures than b's.
  logits = np.array([[0.0, 8.0, 0.0]])
  (answer,) = answering.decide(logits, embedding[None], ["a", "b", "c"], fitted, added)
  assert (answer.character, answer.closest, answer.enrolled) == ("b", "b", False)
  # The prototype moved halfway (3 training pictures, 3 added).
  moved = answering.refined(fitted, added, ["a", "b", "c"]).prototypes[1]
  np.testing.assert_allclose(moved, (np.eye(6)[1] + np.eye(6)[3]) / np.sqrt(2), atol=1e-6)
  # Without class counts (older calibrations) the added pictures weigh as much: the same here.
  equal = answering.refined(_calibration(), added, ["a", "b", "c"]).prototypes[1]
  np.testing.assert_allclose(equal, moved, atol=1e-6)
  assert answering.enrolled_names(added, ["a", "b", "c"]) == []
  assert answering.Answerer(["a", "b", "c"], fitted, added).names == ["a", "b", "c"]
  # The untouched classes keep theirs; the calibration given is not changed.
  np.testing.assert_array_equal(fitted.prototypes, np.eye(3, 6))


def test_a_running_server_answers_a_character_enrolled_from_the_command_line(tmp_path):
  from animesion_jax.serve import app  # pylint: disable=g-import-not-at-top

  provenance = {"fingerprint": "f00d"}
  directory = epath.Path(tmp_path) / run_dir.GALLERY_DIR
  asked = []
  watch = gallery.Watch(directory, lambda: asked.append(1) or provenance, every_s=0.0)
  service = app.Service(
    batcher=None,
    class_names=["a", "b", "c"],
    model="tiny",
    image_size=8,
    detector=None,
    face_note="",
    answerer=answering.Answerer(["a", "b", "c"], _calibration()),
    gallery_watch=watch,
  )
  picture = np.eye(6)[3][None]  # Far from a, b and c: unknown until 'newbie' is enrolled.
  logits = np.array([[0.0, 8.0, 0.0]])
  assert app.current_answerer(service).answer(logits, picture)[0].unknown
  assert asked == []  # Nothing stored yet: no fingerprint computed.
  # What python -m animesion_jax.enroll does, from another process.
  gallery.enroll(directory, provenance, "newbie", np.eye(6)[3:4], ["n.png"], ["a", "b", "c"])
  (answer,) = app.current_answerer(service).answer(logits, picture)
  assert (answer.character, answer.enrolled) == ("newbie", True)
  # A second change straight after (the same second, the same size) is seen too.
  gallery.remove(directory, provenance, "newbie")
  gallery.enroll(directory, provenance, "newbee", np.eye(6)[3:4], ["n.png"], ["a", "b", "c"])
  assert app.current_answerer(service).answer(logits, picture)[0].character == "newbee"
  # A gallery of another model written there: refused, the answers so far kept.
  (directory / gallery.GALLERY_FILE).write_text(
    (directory / gallery.GALLERY_FILE).read_text().replace("f00d", "beef")
  )
  assert app.current_answerer(service).answer(logits, picture)[0].character == "newbee"
  # While an enrolment through the page holds the lock, requests do not wait for it.
  (directory / gallery.GALLERY_FILE).unlink()  # The gallery moved away.
  with service.enroll_lock:
    assert app.current_answerer(service).gallery.names == ["newbee"]
  assert app.current_answerer(service).gallery is None
  assert asked == [1]
