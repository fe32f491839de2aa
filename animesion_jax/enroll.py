r"""Adds characters the model was never trained on, from a few pictures, without retraining.

  python -m animesion_jax.enroll --workdir=runs/quickstart --name="Tanjiro" pics/tanjiro/ a.png
      [--detect_faces [--cascade=PATH]] [--refine]
  python -m animesion_jax.enroll --workdir=runs/quickstart --list
  python -m animesion_jax.enroll --workdir=runs/quickstart --remove="Tanjiro"
  python -m animesion_jax.enroll --checkpoint=b16.pth --source=pytorch_vit \
      --class_names=classid_classname.csv --gallery=DIR --name=NAME PICTURES...

The pictures' embeddings are averaged into a prototype stored in the run's gallery/ (or
--gallery=DIR for a checkpoint file; see animesion_jax/open_set/gallery.py); from then on predict,
evaluate, organize and the web page answer that name, with the same "unknown" rule as the
trained characters (which needs the model's calibration: python -m animesion_jax.calibrate).
One face per picture: with --detect_faces the largest face found, and pictures without a face are
skipped. Unreadable pictures are reported and skipped; nothing is written when none is usable.
A name the model already has is refused unless --refine: then the pictures are added to it (to an
enrolled character's prototype, or to a trained class's prototype, which moves towards them: the
class keeps its one name, see answering.refined).
"""

from absl import app
from absl import flags
from absl import logging

from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.inference import crops as crops_lib
from animesion_jax.inference import image_files
from animesion_jax.open_set import answering
from animesion_jax.open_set import gallery


def define_flags() -> None:
  common.define_model_flags("With --source: classid_classname.csv or a JSON list of names.")
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_string("name", None, "The character's name.")
  flags.DEFINE_bool("list", False, "List the enrolled characters.")
  flags.DEFINE_string("remove", None, "Remove this enrolled character.")
  flags.DEFINE_bool("refine", False, "Add the pictures to a name the model or gallery has.")
  common.define_face_flags("Find the largest anime face in each picture.")


def _gallery_dir(run, given):
  directory = answering.store_dir(run, given)
  if directory is None:
    raise gallery.GalleryError(
      "A checkpoint file has no run directory to keep the gallery in: give --gallery=DIR."
    )
  return directory / run_dir.GALLERY_DIR


def main(argv):
  flag = flags.FLAGS
  inputs = argv[1:]
  actions = sum([flag.name is not None, flag.list, flag.remove is not None])
  if actions != 1:
    raise app.UsageError("Give exactly one of --name=NAME PICTURES..., --list or --remove=NAME.")
  if flag.name is not None and not inputs:
    raise app.UsageError("Give the pictures (files or folders) of the character after the flags.")
  if flag.name is None and inputs:
    raise app.UsageError(f"Unexpected arguments: {inputs}")
  common.check_model_flags(flag)
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  common.start_jax(flag)
  try:
    detector = common.face_detector(flag)
    run = common.load_from_flags(flag, read_open_set=False)  # Its gallery is read below.
    directory = _gallery_dir(run, flag.gallery)
    provenance = answering.provenance(run)
    if flag.list:
      found = gallery.load(directory, provenance)
      characters = found.characters if found else {}
      for name in sorted(characters):
        added = " (added to the model's class)" if name in run.class_names else ""
        print(f"{name}: {characters[name].count} pictures{added}")
      new = answering.enrolled_names(found, run.class_names)
      print(f"{len(new)} enrolled characters in {directory}")
      return
    if flag.remove is not None:
      gallery.remove(directory, provenance, flag.remove)
      print(f"Removed {flag.remove!r} from {directory}")
      return
    files, problems = image_files.find_images(inputs)
    crops = crops_lib.read_crops(
      files, run.config.image_size, detector, require_face=True, largest_face_only=True
    )
    skipped = [{"file": given, "error": why} for given, why in problems] + crops.problems
    for problem in skipped:
      print(f"Skipping {problem['file']}: {problem['error']}")
    _, embeddings = run.embed(crops.pixels)
    updated = gallery.enroll(
      directory,
      provenance,
      flag.name,
      embeddings,
      [file.relative for file in crops.files],
      run.class_names,
      refine=flag.refine,
    )
    fitted, note = answering.load_calibration(answering.store_dir(run, flag.gallery), provenance)
  except common.USER_ERRORS as error:
    common.exit_with_user_error("enroll", error)
  name = flag.name.strip()
  character = updated.characters[name]
  if name in run.class_names:  # --refine of a trained class: its prototype moves, no new name.
    print(
      f"Added {len(crops.files)} pictures to the model's class {name!r} ({character.count} "
      f"added in all; its prototype now includes them); kept in {directory}"
    )
  else:
    new = answering.enrolled_names(updated, run.class_names)
    print(
      f"Enrolled {name!r} from {len(crops.files)} pictures "
      f"({character.count} in all); {len(new)} characters in {directory}"
    )
  if fitted is None:
    print(f"Note: {note}; enrolled characters are answered once the model is calibrated.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
