"""Writes the tiny moeImouto trees used by the builder tests.

One tree per layout, each mirroring the real download, awkward parts
included: non-image files (`ignore`, `color.csv`) in class folders, a class
folder without images, a grayscale PNG (like the 2 the paper dropped), a
truncated PNG, and for the Animesion layout split files with a row whose file
is missing, a blank line, a duplicate row and an out-of-range class id.

  python tfds_builders/moeimouto/dummy_data/make_dummy_data.py

Expected counts (train/test), checked by tests/test_moeimouto.py:
  sorted 80/20 rule (nagadomi, kaggle, zip): drop_non_rgb 11/4,
    convert_to_rgb 12/4.
  Animesion split files: drop_non_rgb 10/5, convert_to_rgb 11/5.
"""

import io
import pathlib
import shutil
import zipfile

from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent

# class folder -> RGB image names. Folder 144 also gets a grayscale and a
# truncated image; folder 048 holds no image at all.
RGB_IMAGES = {
    '000_hatsune_miku': [f'face_{i}_{10 * i}_0.png' for i in (11, 12, 13, 14,
                                                              15, 16)],
    '001_kinomoto_sakura': [f'face_{i}_{20 * i}_1.png' for i in (21, 22, 23,
                                                                 24, 25)],
    '144_kotegawa_yui': [f'face_{i}_{i}_0.png' for i in (101, 102, 103, 104)],
}
GRAYSCALE = ('144_kotegawa_yui', 'face_272_204_0.png')
TRUNCATED = ('144_kotegawa_yui', 'face_999_9_9.png')
EMPTY_CLASS = '048_unused'
NON_IMAGE_FILES = {'ignore': '', 'color.csv': '0.1,0.2,0.3\n'}

# Animesion class ids follow first-seen filesystem order, not name order.
ANIMESION_CLASSES = ['144_kotegawa_yui', '000_hatsune_miku',
                     '001_kinomoto_sakura']
ANIMESION_TRAIN = """\
0,144_kotegawa_yui/face_103_103_0.png
0,144_kotegawa_yui/face_101_101_0.png
0,144_kotegawa_yui/face_272_204_0.png
0,144_kotegawa_yui/face_999_9_9.png
1,000_hatsune_miku/face_14_140_0.png
1,000_hatsune_miku/face_11_110_0.png
1,000_hatsune_miku/face_16_160_0.png
1,000_hatsune_miku/face_404_0_0.png
1,000_hatsune_miku/face_12_120_0.png

2,001_kinomoto_sakura/face_23_460_1.png
2,001_kinomoto_sakura/face_21_420_1.png
2,001_kinomoto_sakura/face_25_500_1.png
2,001_kinomoto_sakura/face_25_500_1.png
2,001_kinomoto_sakura/face_22_440_1.png
7,001_kinomoto_sakura/face_24_480_1.png
"""
ANIMESION_TEST = """\
0,144_kotegawa_yui/face_102_102_0.png
0,144_kotegawa_yui/face_104_104_0.png
1,000_hatsune_miku/face_13_130_0.png
1,000_hatsune_miku/face_15_150_0.png
2,001_kinomoto_sakura/face_24_480_1.png
"""


def png_bytes(seed: int, mode: str = 'RGB') -> bytes:
  """A distinct 16x16 gradient, a few hundred bytes."""
  image = Image.new('RGB', (16, 16))
  image.putdata([((seed * 37 + x * 16) % 256, (seed * 91 + y * 16) % 256,
                  (seed * 53) % 256) for y in range(16) for x in range(16)])
  buffer = io.BytesIO()
  image.convert(mode).save(buffer, format='PNG')
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
  (root / GRAYSCALE[0] / GRAYSCALE[1]).write_bytes(png_bytes(99, mode='L'))
  whole = png_bytes(98)
  (root / TRUNCATED[0] / TRUNCATED[1]).write_bytes(whole[:len(whole) // 2])
  for name, text in NON_IMAGE_FILES.items():
    (root / EMPTY_CLASS).mkdir(parents=True, exist_ok=True)
    (root / EMPTY_CLASS / name).write_text(text)


def write_zip(source: pathlib.Path, zip_path: pathlib.Path) -> None:
  """Zips `source` with fixed timestamps, so reruns give identical bytes."""
  zip_path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_DEFLATED) as archive:
    for path in sorted(source.rglob('*')):
      info = zipfile.ZipInfo(
          str(path.relative_to(source.parent)) + ('/' if path.is_dir() else ''),
          date_time=(2009, 1, 1, 0, 0, 0))
      archive.writestr(info, b'' if path.is_dir() else path.read_bytes())


def main() -> None:
  for layout in ('animesion', 'kaggle', 'nagadomi', 'nagadomi_zip',
                 'no_manual'):
    shutil.rmtree(HERE / layout, ignore_errors=True)

  animesion = HERE / 'animesion'
  write_class_folders(animesion / 'data')
  (animesion / 'classid_classname.csv').write_text(
      ''.join(f'{i},{name}\n' for i, name in enumerate(ANIMESION_CLASSES)))
  (animesion / 'train.csv').write_text(ANIMESION_TRAIN)
  (animesion / 'test.csv').write_text(ANIMESION_TEST)

  write_class_folders(HERE / 'kaggle' / 'moeimouto-faces')

  nagadomi = HERE / 'nagadomi' / 'animeface-character-dataset'
  write_class_folders(nagadomi / 'thumb')
  (nagadomi / 'tools').mkdir()
  (nagadomi / 'tools' / 'README').write_text('scripts, not images\n')
  write_zip(nagadomi,
            HERE / 'nagadomi_zip' / 'animeface-character-dataset.zip')

  # A manual directory holding nothing usable: the builder must download.
  (HERE / 'no_manual').mkdir()
  (HERE / 'no_manual' / 'README.txt').write_text(
      'Intentionally no moeImouto data here (tests the download path).\n')


if __name__ == '__main__':
  main()
