r"""Writes a DAF:re-shaped tree of synthetic JPEGs to measure the build rate.

The tree has the real layout (faces/<NNNN>/<id>.jpg, labels/*.csv without
headers) and 128x128 JPEGs of about the real size (4-6 KB), so that

  python tfds_builders/dafre/make_benchmark_tree.py --out=/tmp/dafre_bench \
      --num_images=20000
  time tfds build tfds_builders/dafre --manual_dir=/tmp/dafre_bench \
      --data_dir=/tmp/dafre_bench_tfds

measures images per second on this machine. Nothing here is a real image.
"""

import argparse
import io
import pathlib

import numpy as np
from PIL import Image

SPLIT_SHARES = (("train.csv", 0.7), ("val.csv", 0.1), ("test.csv", 0.2))


def synthetic_jpeg(rng: np.random.Generator, size: int = 128) -> bytes:
  """A smooth random blob with noise, compressing like a real face crop."""
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
  pixels = np.asarray(image, dtype=np.int16)
  pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def write_tree(out: pathlib.Path, num_images: int, num_classes: int, seed: int = 0) -> int:
  """Writes the tree; returns the total bytes of the images."""
  rng = np.random.default_rng(seed)
  labels = out / "labels"
  labels.mkdir(parents=True, exist_ok=True)
  (labels / "classid_classname.csv").write_text(
    "".join(f"{i},character_{i:04d}\n" for i in range(num_classes))
  )
  rows = {name: [] for name, _ in SPLIT_SHARES}
  total_bytes = 0
  for image_id in range(num_images):
    rel_path = f"{image_id % 1000:04d}/{image_id}.jpg"
    path = out / "faces" / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = synthetic_jpeg(rng)
    path.write_bytes(data)
    total_bytes += len(data)
    split = rng.choice(len(SPLIT_SHARES), p=[s for _, s in SPLIT_SHARES])
    rows[SPLIT_SHARES[split][0]].append(f"{rng.integers(num_classes)},{rel_path}\n")
  for name, lines in rows.items():
    (labels / name).write_text("".join(lines))
  return total_bytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--num_images", type=int, default=20000)
  parser.add_argument("--num_classes", type=int, default=300)
  args = parser.parse_args()
  total = write_tree(args.out, args.num_images, args.num_classes)
  print(
    f"{args.num_images} images, {total / args.num_images / 1024:.1f} KB "
    f"each on average, under {args.out}"
  )


if __name__ == "__main__":
  main()
