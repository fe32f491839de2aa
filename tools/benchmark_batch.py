r"""Pictures/s of `batch` (Ray Data, one local Ray) against `predict`, on the same pictures.

  python tools/benchmark_batch.py --workdir=runs/quickstart [--pictures=500] [--small=16] \
      [--repeats=2] [--side=0] [--num_cpus=N] [--folder=/tmp/benchmark_batch]

Writes --pictures test-split images of the run's dataset as PNG files (as JPEGs of --side pixels
when --side > 0, closer to people's pictures) and runs, as users do, `python -m
animesion_jax.predict` and `python -m animesion_jax.batch` on all of them and on the first
--small, alternating which command goes first in each repeat (the machine may be shared). Each
command's wall time includes its start-up (imports, model loading, compilation; for batch, Ray's
start and its workers); the pictures/s column divides by it, and the marginal pictures/s,
(pictures - small) / (wall(pictures) - wall(small)), leaves every fixed cost out. batch's own
line gives Ray's start-up separately. One warm-up run of each fills the compilation cache first.
"""

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_pictures(workdir: str, folder: str, count: int, side: int) -> None:
  from animesion_jax import run_dir  # pylint: disable=g-import-not-at-top
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top

  config = run_dir.RunDir(workdir).load_config()
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  source = datasets.data_source(builder, "test")
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    encoded = source[i % len(source)]["image"]
    if side:
      image = Image.open(io.BytesIO(encoded)).convert("RGB").resize((side, side))
      image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    else:
      with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
        f.write(encoded)


def timed(command: list[str], cwd: str) -> tuple[float, str]:
  env = dict(os.environ, PYTHONPATH=REPO)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
  return seconds, done.stdout


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--pictures", type=int, default=500)
  parser.add_argument("--small", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--side", type=int, default=0)
  parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of batch's local Ray.")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "benchmark_batch"))
  args = parser.parse_args()
  workdir = os.path.abspath(args.workdir)
  root = args.folder
  shutil.rmtree(root, ignore_errors=True)
  everything, first = os.path.join(root, "all"), os.path.join(root, "small")
  write_pictures(workdir, everything, args.pictures, args.side)
  write_pictures(workdir, first, args.small, args.side)
  cache = os.path.join(root, "xla_cache")
  common = [f"--workdir={workdir}", f"--compilation_cache_dir={cache}"]
  batch_size = f"--batch_size={args.batch_size}"

  def predict(folder: str) -> list[str]:
    out = os.path.join(root, "predict_out")
    return [sys.executable, "-m", "animesion_jax.predict", *common, batch_size, folder,
            f"--output_dir={out}", "--print_limit=1"]  # fmt: skip

  def batch(folder: str) -> list[str]:
    out = tempfile.mkdtemp(dir=root, prefix="batch_out_")  # Fresh: nothing already done.
    cpus = [f"--num_cpus={args.num_cpus}"] if args.num_cpus else []
    return [sys.executable, "-m", "animesion_jax.batch", *common, batch_size, *cpus,
            f"--input={folder}", f"--output_dir={out}"]  # fmt: skip

  commands = {"predict": predict, "batch": batch}
  for make in commands.values():  # Warm-up: fills the compilation cache.
    timed(make(first), root)
  walls = {(name, size): [] for name in commands for size in ("all", "small")}
  ray_start, job = [], []
  for repeat in range(args.repeats):
    order = list(commands) if repeat % 2 == 0 else list(commands)[::-1]
    for name in order:
      for size, folder in (("small", first), ("all", everything)):
        seconds, out = timed(commands[name](folder), root)
        walls[(name, size)].append(seconds)
        found = re.search(r"Ray start ([\d.]+) s; job ([\d.]+) s", out)
        if name == "batch" and size == "all" and found:
          ray_start.append(float(found.group(1)))
          job.append(float(found.group(2)))
        print(f"repeat {repeat} {name:7} {size:5} {seconds:7.1f} s", flush=True)
  report = {"pictures": args.pictures, "small": args.small, "side": args.side or "as stored"}
  for name in commands:
    full, small = walls[(name, "all")], walls[(name, "small")]
    report[name] = {
      "wall_s": [round(s, 1) for s in full],
      "pictures_per_s": round(args.pictures / statistics.median(full), 1),
      "small_wall_s": [round(s, 1) for s in small],
      "marginal_pictures_per_s": round(
        (args.pictures - args.small) / (statistics.median(full) - statistics.median(small)), 1
      ),
    }
  report["batch"]["ray_start_s"] = ray_start
  report["batch"]["job_s"] = job
  ratio = report["batch"]["marginal_pictures_per_s"] / report["predict"]["marginal_pictures_per_s"]
  report["marginal_ratio_batch_over_predict"] = round(ratio, 2)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
