"""Writes the tiny moeImouto trees used by the builder tests.

One tree per layout, each mirroring the real download, awkward parts
included: non-image files (`ignore`, `color.csv`) in class folders, a class
folder without images, a grayscale PNG (like the 2 the paper dropped), a
truncated PNG, and for the Animesion layout split files with a row whose file
is missing, a blank line, a duplicate row and an out-of-range class id.

  python tfds_builders/moeimouto/dummy_data/make_dummy_data.py

Image names are real ones from the paper's split files, so the split files
shipped with the builder (paper_split/) apply to these trees: of the 15 listed
images here, 11 are in the paper's train split and 4 in its test split (one
train image truncated); the grayscale image is one of the 2 the paper dropped.

Expected counts (train/test), checked by tests/test_moeimouto.py:
  shipped paper split (drop_non_rgb; nagadomi, kaggle, zip): 11/4, with
    14,380 of the paper's 14,395 images missing.
  sorted 80/20 rule (convert_to_rgb; nagadomi, kaggle, zip): 12/4.
  Animesion split files in the manual dir: drop_non_rgb 10/5,
    convert_to_rgb 11/5.
"""

import io
import pathlib
import shutil
import zipfile

from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent

# class folder -> RGB image names (comments: split in the paper's files).
# Folder 144 also gets a grayscale and a truncated image; folder 048 holds no
# image at all.
RGB_IMAGES = {
  "000_hatsune_miku": [
    "face_214_99_108.png",
    "face_641_448_151.png",  # train
    "face_328_209_46.png",
    "face_632_189_54.png",  # train
    "face_604_367_106.png",
    "face_385_110_90.png",
  ],  # test
  "001_kinomoto_sakura": [
    "face_189_227_85.png",
    "face_348_348_12.png",  # train
    "face_887_181_71.png",
    "face_204_227_93.png",  # train
    "face_294_242_111.png",
  ],  # test
  "144_kotegawa_yui": [
    "face_298_149_4.png",
    "face_132_180_83.png",  # train
    "face_284_132_91.png",  # train
    "face_113_132_80.png",
  ],  # test
}
# Not in the paper's split files (dropped as non-RGB).
GRAYSCALE = ("144_kotegawa_yui", "face_272_204_0.png")
# In the paper's train split.
TRUNCATED = ("144_kotegawa_yui", "face_228_166_78.png")
EMPTY_CLASS = "048_unused"
NON_IMAGE_FILES = {"ignore": "", "color.csv": "0.1,0.2,0.3\n"}

# Animesion class ids follow first-seen filesystem order, not name order.
ANIMESION_CLASSES = ["144_kotegawa_yui", "000_hatsune_miku", "001_kinomoto_sakura"]
ANIMESION_TRAIN = """\
0,144_kotegawa_yui/face_132_180_83.png
0,144_kotegawa_yui/face_298_149_4.png
0,144_kotegawa_yui/face_272_204_0.png
0,144_kotegawa_yui/face_228_166_78.png
1,000_hatsune_miku/face_328_209_46.png
1,000_hatsune_miku/face_214_99_108.png
1,000_hatsune_miku/face_632_189_54.png
1,000_hatsune_miku/face_404_0_0.png
1,000_hatsune_miku/face_641_448_151.png

2,001_kinomoto_sakura/face_887_181_71.png
2,001_kinomoto_sakura/face_189_227_85.png
2,001_kinomoto_sakura/face_204_227_93.png
2,001_kinomoto_sakura/face_204_227_93.png
2,001_kinomoto_sakura/face_348_348_12.png
7,001_kinomoto_sakura/face_294_242_111.png
"""
ANIMESION_TEST = """\
0,144_kotegawa_yui/face_113_132_80.png
0,144_kotegawa_yui/face_284_132_91.png
1,000_hatsune_miku/face_604_367_106.png
1,000_hatsune_miku/face_385_110_90.png
2,001_kinomoto_sakura/face_294_242_111.png
"""


def png_bytes(seed: int, mode: str = "RGB") -> bytes:
  """A distinct 16x16 gradient, a few hundred bytes."""
  image = Image.new("RGB", (16, 16))
  image.putdata(
    [
      ((seed * 37 + x * 16) % 256, (seed * 91 + y * 16) % 256, (seed * 53) % 256)
      for y in range(16)
      for x in range(16)
    ]
  )
  buffer = io.BytesIO()
  image.convert(mode).save(buffer, format="PNG")
  return buffer.getvalue()


def write_class_folders(root: pathlib.Path) -> None:
  """Writes the class folders of every layout under `root`."""
  seed = 0
  for folder, names in RGB_IMAGES.items():
    for name in names:
      seed += 1
      path = root / folder / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(png_bytes(seed))
    for name, text in NON_IMAGE_FILES.items():
      (root / folder / name).write_text(text)
  (root / GRAYSCALE[0] / GRAYSCALE[1]).write_bytes(png_bytes(99, mode="L"))
  whole = png_bytes(98)
  (root / TRUNCATED[0] / TRUNCATED[1]).write_bytes(whole[: len(whole) // 2])
  for name, text in NON_IMAGE_FILES.items():
    (root / EMPTY_CLASS).mkdir(parents=True, exist_ok=True)
    (root / EMPTY_CLASS / name).write_text(text)


def write_zip(source: pathlib.Path, zip_path: pathlib.Path) -> None:
  """Zips `source` with fixed timestamps, so reruns give identical bytes."""
  zip_path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
    for path in sorted(source.rglob("*")):
      info = zipfile.ZipInfo(
        str(path.relative_to(source.parent)) + ("/" if path.is_dir() else ""),
        date_time=(2009, 1, 1, 0, 0, 0),
      )
      archive.writestr(info, b"" if path.is_dir() else path.read_bytes())


def main() -> None:
  for layout in ("animesion", "kaggle", "nagadomi", "nagadomi_zip", "no_manual"):
    shutil.rmtree(HERE / layout, ignore_errors=True)

  animesion = HERE / "animesion"
  write_class_folders(animesion / "data")
  (animesion / "classid_classname.csv").write_text(
    "".join(f"{i},{name}\n" for i, name in enumerate(ANIMESION_CLASSES))
  )
  (animesion / "train.csv").write_text(ANIMESION_TRAIN)
  (animesion / "test.csv").write_text(ANIMESION_TEST)

  write_class_folders(HERE / "kaggle" / "moeimouto-faces")

  nagadomi = HERE / "nagadomi" / "animeface-character-dataset"
  write_class_folders(nagadomi / "thumb")
  (nagadomi / "tools").mkdir()
  (nagadomi / "tools" / "README").write_text("scripts, not images\n")
  write_zip(nagadomi, HERE / "nagadomi_zip" / "animeface-character-dataset.zip")

  # A manual directory holding nothing usable: the builder must download.
  (HERE / "no_manual").mkdir()
  (HERE / "no_manual" / "README.txt").write_text(
    "Intentionally no moeImouto data here (tests the download path).\n"
  )


if __name__ == "__main__":
  main()
