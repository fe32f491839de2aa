r"""Sorts a folder of pictures by character: known and enrolled names, clusters of unknown faces.

  python -m animesion_jax.organize --workdir=runs/quickstart my_pictures/ --output_dir=sorted \
      [--link | --copy] [--detect_faces] [--accept=0.9]
  python -m animesion_jax.organize --from_batch=answers --output_dir=sorted

Each picture (or, with --detect_faces, each face in it) is answered as predict answers it; the
ones answered with a name go to that name's group, the unknown ones are clustered by how alike
their embeddings are into unknown-1..N (largest first), and near-identical pictures are marked
(duplicate_of). Writes to --output_dir: groups.json, groups.csv, index.html (a contact sheet: one
row of thumbnails per group) and thumbnails/; with --link (symbolic links) or --copy, also one
folder per group holding its pictures. The pictures themselves are never moved or changed.

With --from_batch, the answers come from `python -m animesion_jax.batch`'s Parquet output (run
with --embeddings) instead, for collections of any size: groups.csv (every picture) and
groups.json (each group's size and first pictures), in memory linear in the pictures; beyond
2,000 unknown pictures their clustering is bounded (see distributed/sorting.py, docs/batch.md).
"""

import collections
import csv
import html
import io
import json
import os
import shutil

from absl import app
from absl import flags
from absl import logging
from etils import epath
from PIL import Image

from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.distributed import rows
from animesion_jax.distributed import sorting
from animesion_jax.inference import crops as crops_lib
from animesion_jax.inference import image_files
from animesion_jax.open_set import grouping

THUMBNAIL = 96  # Side of the contact sheet's thumbnails, in pixels.


def organize(run, files, detector=None, batch_size=256):
  """(groups, problems): [{'name', 'kind', 'pictures': [...]}] largest first, named ones first.

  Answers come from the recognizer's calibration and gallery (`run.answer`).
  """
  crops = crops_lib.read_crops(files, run.config.image_size, detector)
  if not crops.files:  # An empty or all-unreadable folder: nothing to answer or group.
    return [], crops
  logits, embeddings = run.embed(crops.pixels, batch_size)
  answers = run.answer(logits, embeddings, top_k=1)
  distance = grouping.cluster_distance_of(run.answerer.calibration)
  names = grouping.group_names(answers, embeddings, distance)
  duplicates = grouping.near_duplicates(embeddings)
  members = collections.defaultdict(list)
  for i, (name, answer) in enumerate(zip(names, answers)):
    kind = "unknown" if answer.unknown else "enrolled" if answer.enrolled else "known"
    members[(name, kind)].append(
      {
        "crop": i,
        "file": crops.files[i].path,
        "relative": crops.files[i].relative,
        "face": crops.faces[i],
        "box": crops.boxes[i],
        "confidence": answer.confidence,
        "closest": answer.closest,
        "duplicate_of": crops.files[duplicates[i]].relative if duplicates[i] >= 0 else None,
      }
    )
  order = sorted(members, key=lambda key: (key[1] == "unknown", -len(members[key]), key[0]))
  groups = [{"name": name, "kind": kind, "pictures": members[(name, kind)]} for name, kind in order]
  return groups, crops


def _folder_name(name: str) -> str:
  cleaned = "".join(c if c.isalnum() or c in " ._-()" else "_" for c in name).strip(" .")
  return cleaned or "_"


def _place(groups, output_dir: epath.Path, link: bool) -> None:
  """One folder per group with its pictures, as links or copies (names kept, clashes numbered).

  Local output folders only (symbolic links and copies of local files).
  """
  for group in groups:
    folder = os.path.join(os.fspath(output_dir), _folder_name(group["name"]))
    os.makedirs(folder, exist_ok=True)
    placed = set()
    for picture in group["pictures"]:
      if picture["file"] in placed:
        continue  # Two faces of one picture in one group: once.
      placed.add(picture["file"])
      name = picture["relative"].replace("/", "__")
      target, counter = os.path.join(folder, name), 1
      while os.path.lexists(target):
        stem, suffix = os.path.splitext(name)
        target, counter = os.path.join(folder, f"{stem}-{counter}{suffix}"), counter + 1
      if link:
        os.symlink(os.path.abspath(picture["file"]), target)
      else:
        shutil.copyfile(picture["file"], target)


def write_outputs(groups, crops, problems, run, note, output_dir: epath.Path) -> None:
  output_dir.mkdir(parents=True, exist_ok=True)
  thumbnails = output_dir / "thumbnails"
  thumbnails.mkdir(exist_ok=True)
  for i, pixels in enumerate(crops.pixels):
    image = Image.fromarray(pixels).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (thumbnails / f"{i}.png").write_bytes(buffer.getvalue())
  record = {
    "workdir": run.description,
    "step": run.step,
    "calibration": note or "calibrated",
    "groups": groups,
    "errors": problems,
  }
  (output_dir / "groups.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["group", "kind", "file", "face", "confidence", "closest", "duplicate_of"])
  for group in groups:
    for p in group["pictures"]:
      writer.writerow(
        [
          group["name"],
          group["kind"],
          p["file"],
          "" if p["face"] is None else p["face"],
          f"{p['confidence']:.4f}",
          p["closest"],
          p["duplicate_of"] or "",
        ]
      )
  (output_dir / "groups.csv").write_text(text.getvalue(), encoding="utf-8")
  (output_dir / "index.html").write_text(contact_sheet(groups, note), encoding="utf-8")


def contact_sheet(groups, note: str = "") -> str:
  """An HTML page: one row of thumbnails per group (names escaped: they are data)."""
  rows = []
  for group in groups:
    cells = "".join(
      f'<figure><img src="thumbnails/{p["crop"]}.png" alt="{html.escape(p["relative"])}" '
      f'title="{html.escape(p["relative"])} ({100 * p["confidence"]:.0f}%)">'
      + (' <figcaption class="dup">duplicate</figcaption>' if p["duplicate_of"] else "")
      + "</figure>"
      for p in group["pictures"]
    )
    rows.append(
      f'<section class="group {group["kind"]}"><h2>{html.escape(group["name"])} '
      f"<small>{group['kind']}, {len(group['pictures'])}</small></h2>"
      f'<div class="row">{cells}</div></section>'
    )
  style = (
    "body{font-family:sans-serif;margin:1em}.row{display:flex;flex-wrap:wrap;gap:4px}"
    "figure{margin:0}img{width:96px;height:96px}.unknown h2{color:#a40}.dup{font-size:small}"
  )
  note_html = f"<p>{html.escape(note)}</p>" if note else ""
  return (
    f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Pictures by character"
    f"</title><style>{style}</style></head><body><h1>Pictures by character</h1>{note_html}"
    + "".join(rows)
    + "</body></html>"
  )


def define_flags() -> None:
  common.define_model_flags("With --source: classid_classname.csv or a JSON list of names.")
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_string("output_dir", None, "Where to write the groups (required).")
  flags.DEFINE_bool("link", False, "Also make a folder per group with links to its pictures.")
  flags.DEFINE_bool("copy", False, "Also make a folder per group with copies of its pictures.")
  common.define_face_flags("Find anime faces first and group each face.")
  flags.DEFINE_integer("batch_size", 256, "Pictures per device call.")
  flags.DEFINE_string(
    "from_batch", None, "Sort the Parquet output of python -m animesion_jax.batch (no model run)."
  )


def main_from_batch(flag) -> None:
  if not flag.output_dir:
    raise app.UsageError("Give --output_dir=DIR (where the groups are written).")
  try:
    groups, errors = sorting.organize(flag.from_batch, flag.output_dir)
  except rows.BatchOutputError as error:
    common.exit_with_user_error("organize", error)
  print(sorting.describe(groups, errors, flag.output_dir))


def main(argv):
  flag = flags.FLAGS
  inputs = argv[1:]
  if flag.from_batch:
    if inputs or flag.workdir or flag.source:
      raise app.UsageError("--from_batch reads answers already made: give no model or pictures.")
    return main_from_batch(flag)
  if not inputs:
    raise app.UsageError("Give the folders (or files) of pictures to sort after the flags.")
  if not flag.output_dir:
    raise app.UsageError("Give --output_dir=DIR (where the groups are written).")
  if flag.link and flag.copy:
    raise app.UsageError("Give --link or --copy, not both.")
  common.check_model_flags(flag)
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  common.start_jax(flag)
  files, problems = image_files.find_images(inputs)
  problems = [{"file": given, "error": why} for given, why in problems]
  if not files:
    for problem in problems:
      print(f"Could not read {problem['file']}: {problem['error']}")
    raise SystemExit(f"organize: no pictures found in {', '.join(inputs)}; nothing written.")
  try:
    detector = common.face_detector(flag)
    run = common.load_from_flags(flag)  # With its calibration and gallery.
  except common.USER_ERRORS as error:
    common.exit_with_user_error("organize", error)
  groups, crops = organize(run, files, detector, flag.batch_size)
  problems += crops.problems
  if not crops.files:
    for problem in problems:
      print(f"Could not read {problem['file']}: {problem['error']}")
    raise SystemExit(
      "organize: no picture could be read (see the messages above); nothing written."
    )
  output_dir = run_dir.resolve(flag.output_dir)
  write_outputs(groups, crops, problems, run, run.answerer.note, output_dir)
  if flag.link or flag.copy:
    _place(groups, output_dir, link=flag.link)
  for problem in problems:
    print(f"Could not read {problem['file']}: {problem['error']}")
  for group in groups:
    print(f"{group['name']:30} {group['kind']:9} {len(group['pictures']):>5}")
  if run.answerer.note:
    print(f"Note: {run.answerer.note}.")
  print(f"{len(crops.files)} pictures in {len(groups)} groups; wrote {output_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
