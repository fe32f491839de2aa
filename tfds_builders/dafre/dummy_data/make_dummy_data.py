"""Writes the tiny DAF:re trees used by the builder tests.

`current/` mirrors the extracted download (faces/, fullMin256/, labels/ with
headerless `class_id,path` files), awkward parts included: in train.csv a
row whose file is missing, a truncated JPEG, a text file named .jpg, an
out-of-range class id, a duplicate row and a blank line; in val.csv a
grayscale JPEG; in test.csv a CMYK JPEG. `legacy/` has the older label files: swapped columns
(`path,class_id`) and header rows.

  python tfds_builders/dafre/dummy_data/make_dummy_data.py

Expected counts (train/validation/test), checked by tests/test_dafre.py:
  current, config faces: 16/4/8 (the truncated and text files skipped)
  current, config full:  18/4/8 (fullMin256/ has those two intact)
  legacy, config faces:  16/4/8
"""

import io
import pathlib
import shutil

from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
CLASSES = ["morrigan_aensland", "uchiha_sasuke", "haruno_sakura", "futaba_rio"]
PER_CLASS = {"train": 4, "val": 1, "test": 2}
TRUNCATED_ID = 2841943
TEXT_ID = 2354522
MISSING_ID = 1796291


def jpeg_bytes(seed: int, size: tuple[int, int], mode: str = "RGB") -> bytes:
  """A distinct small JPEG, under a kilobyte."""
  width, height = size
  image = Image.new("RGB", size)
  image.putdata(
    [
      ((seed * 37 + x * 8) % 256, (seed * 91 + y * 8) % 256, (seed * 53) % 256)
      for y in range(height)
      for x in range(width)
    ]
  )
  buffer = io.BytesIO()
  image.convert(mode).save(buffer, format="JPEG", quality=80)
  return buffer.getvalue()


def rel_path(image_id: int) -> str:
  return f"{image_id % 1000:04d}/{image_id}.jpg"


def split_rows() -> dict[str, list[tuple[int, int]]]:
  """(class_id, image id) per split, all with images in both folders."""
  rows = {split: [] for split in PER_CLASS}
  image_id = 190000
  for class_id in range(len(CLASSES)):
    for split, count in PER_CLASS.items():
      for _ in range(count):
        image_id += 7919  # Spreads the ids over the <NNNN> folders.
        rows[split].append((class_id, image_id))
  return rows


def write_images(root: pathlib.Path, rows, size, damaged: bool) -> None:
  for split_rows_ in rows.values():
    for class_id, image_id in split_rows_:
      path = root / rel_path(image_id)
      path.parent.mkdir(parents=True, exist_ok=True)
      mode = {rows["val"][0][1]: "L", rows["test"][0][1]: "CMYK"}.get(image_id, "RGB")
      path.write_bytes(jpeg_bytes(image_id + class_id, size, mode))
  for image_id in (TRUNCATED_ID, TEXT_ID):
    path = root / rel_path(image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(image_id, size))
  if damaged:
    whole = jpeg_bytes(TRUNCATED_ID, size)
    (root / rel_path(TRUNCATED_ID)).write_bytes(whole[: len(whole) * 2 // 3])
    (root / rel_path(TEXT_ID)).write_text("<html>404 Not Found</html>\n")


def csv_text(rows, swapped: bool, header: str | None) -> str:
  lines = [header] if header else []
  for class_id, image_id in rows:
    pair = (rel_path(image_id), str(class_id))
    lines.append(",".join(pair if swapped else pair[::-1]))
  return "\n".join(lines) + "\n"


def main() -> None:
  rows = split_rows()
  for tree in ("current", "legacy"):
    shutil.rmtree(HERE / tree, ignore_errors=True)

  current = HERE / "current"
  write_images(current / "faces", rows, (16, 16), damaged=True)
  write_images(current / "fullMin256", rows, (24, 16), damaged=False)
  labels = current / "labels"
  labels.mkdir()
  (labels / "classid_classname.csv").write_text(
    "".join(f"{i},{name}\n" for i, name in enumerate(CLASSES))
  )
  train = rows["train"] + [(0, TRUNCATED_ID), (1, TEXT_ID), (2, MISSING_ID)]
  train_text = csv_text(train, swapped=False, header=None)
  first_row = train_text.splitlines()[0]
  train_text += (
    f"\n{first_row}\n"  # A blank line and a duplicate row.
    f"{len(CLASSES) + 5},{rel_path(rows['train'][1][1])}\n"
  )
  (labels / "train.csv").write_text(train_text)
  (labels / "val.csv").write_text(csv_text(rows["val"], False, None))
  (labels / "test.csv").write_text(csv_text(rows["test"], False, None))

  legacy = HERE / "legacy"
  write_images(legacy / "faces", rows, (16, 16), damaged=False)
  labels = legacy / "labels"
  labels.mkdir()
  (labels / "classid_classname.csv").write_text(
    "class_id,class_name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(CLASSES))
  )
  for split, file_name in (("train", "train.csv"), ("val", "val.csv"), ("test", "test.csv")):
    (labels / file_name).write_text(csv_text(rows[split], swapped=True, header="dir,label"))


if __name__ == "__main__":
  main()
