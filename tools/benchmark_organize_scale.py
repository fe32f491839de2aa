r"""organize --from_batch on a synthetic batch output of a million pictures: time, memory, quality.

  python tools/benchmark_organize_scale.py [--rows=1000000] [--unknown=0.3] [--dim=128] \
      [--names=1000] [--clusters=500] [--folder=/tmp/organize_scale]

Writes a batch output (distributed/rows.py's Parquet parts of 10,000 rows) with --rows pictures:
a share --unknown of them answered unknown, their L2-normalised embeddings drawn around
--clusters random directions (the rest named, among --names names), then runs `python -m
animesion_jax.organize --from_batch` on it as users do and reports its wall time, its peak
resident memory (the child's ru_maxrss) and the adjusted Rand index of the unknown clusters
found against the true ones; also how long a re-run of batch takes to read back which pictures
the output already holds (rows.done_files).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from animesion_jax.distributed import rows  # noqa: E402  pylint: disable=g-import-not-at-top
from animesion_jax.open_set import grouping  # noqa: E402  pylint: disable=g-import-not-at-top

PART_ROWS = 10_000


def write_batch(folder: str, args) -> np.ndarray:
  """The synthetic batch output; returns each picture's true unknown cluster (-1: named)."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(args.clusters, args.dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  truth = np.where(
    rng.random(args.rows) < args.unknown, rng.integers(0, args.clusters, args.rows), -1
  )
  out = rows.run_dir.resolve(folder)
  schema = rows.schema(embeddings=True)
  for part, start in enumerate(range(0, args.rows, PART_ROWS)):
    index = np.arange(start, min(start + PART_ROWS, args.rows))
    labels = truth[index]
    unknown = labels >= 0
    vectors = rng.normal(size=(len(index), args.dim)) * (args.spread / np.sqrt(args.dim))
    vectors[unknown] += centers[labels[unknown]]
    vectors[~unknown] += rng.normal(size=((~unknown).sum(), args.dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    named = np.char.add("name_", rng.integers(0, args.names, len(index)).astype(str))
    files = np.char.add(np.char.add("/collection/", index.astype(str)), ".png")
    closest = pa.array(named.tolist())
    table = pa.table(
      {
        "file": pa.array(files.tolist()),
        "relative": pa.array(files.tolist()),
        "character": pa.array(np.where(unknown, None, named).tolist(), pa.string()),
        "unknown": pa.array(unknown),
        "confidence": pa.array(rng.random(len(index))),
        "closest": closest,
        "enrolled": pa.array(np.zeros(len(index), bool)),
        "calibrated": pa.array(np.ones(len(index), bool)),
        "names": pa.array([[n] for n in named.tolist()], pa.list_(pa.string())),
        "class_ids": pa.array([[0]] * len(index), pa.list_(pa.int32())),
        "probabilities": pa.array([[0.5]] * len(index), pa.list_(pa.float64())),
        "note": pa.array([""] * len(index)),
        "error": pa.array([""] * len(index)),
        "embedding": pa.FixedSizeListArray.from_arrays(
          pa.array(vectors.astype(np.float32).reshape(-1)), args.dim
        ).cast(pa.list_(pa.float32())),
      },
      schema=schema,
    )
    rows.write_part(table, rows.part_path(out, "synthetic", part))
  return truth


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--unknown", type=float, default=0.3)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--names", type=int, default=1000)
  parser.add_argument("--clusters", type=int, default=500)
  parser.add_argument("--spread", type=float, default=0.3, help="Noise around each direction.")
  parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "organize_scale"))
  args = parser.parse_args()
  shutil.rmtree(args.folder, ignore_errors=True)
  batch, sorted_dir = os.path.join(args.folder, "batch"), os.path.join(args.folder, "sorted")
  start = time.perf_counter()
  truth = write_batch(batch, args)
  written = time.perf_counter() - start
  start = time.perf_counter()  # What a re-run of batch reads first: the files already answered.
  done = rows.done_files(rows.run_dir.resolve(batch))
  done_seconds = time.perf_counter() - start
  assert len(done) == args.rows
  command = [sys.executable, "-m", "animesion_jax.organize", f"--from_batch={batch}",
             f"--output_dir={sorted_dir}"]  # fmt: skip
  start = time.perf_counter()
  done = subprocess.run(
    command, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, check=False
  )
  seconds = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(done.stderr[-4000:])
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  table = pa_csv.read_csv(os.path.join(sorted_dir, "groups.csv"))
  index = np.char.replace(
    np.char.replace(np.asarray(table.column("file").to_pylist(), str), "/collection/", ""),
    ".png",
    "",
  ).astype(np.int64)
  groups = np.asarray(table.column("group").to_pylist(), object)
  unknown = truth[index] >= 0
  ari = grouping.adjusted_rand_index(truth[index][unknown], groups[unknown])
  record = json.loads(open(os.path.join(sorted_dir, "groups.json"), encoding="utf-8").read())
  report = {
    "rows": args.rows,
    "unknown": int((truth >= 0).sum()),
    "dim": args.dim,
    "true_clusters": args.clusters,
    "unknown_groups": sum(1 for g in record["groups"] if g["kind"] == "unknown"),
    "unknown_ari": round(ari, 4),
    "organize_wall_s": round(seconds, 1),
    "organize_peak_rss_mib": round(peak_mib),
    "batch_output_mib": round(
      sum(os.path.getsize(os.path.join(batch, f)) for f in os.listdir(batch)) / 2**20
    ),
    "write_s": round(written, 1),
    "done_set_s": round(done_seconds, 2),
  }
  print(done.stdout.splitlines()[-1])
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
