"""Internal: recognising a collection with Ray Data (the `batch` command's job).

  listed files -> only those not yet in OUT -> ray.data.from_items
    -> map_batches(decode_batch): Ray tasks read each file (local or gs://) and decode it as
       `Recognizer.pixels` does; a file that cannot be read becomes an error row
    -> map_batches(Answering): an actor pool, each actor loading the recognizer once
       (`animesion_jax.load_run`: the run's best checkpoint, calibration and gallery); one actor
       per GPU where the cluster has GPUs, else one per node
    -> the driver writes each block it receives as one Parquet part (rows.write_part)

Answers are the recognizer's own (`Recognizer.embed` then `Recognizer.answer`), so they equal
predict's. Ray is imported here only, and only when a job starts.
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import os
import time
from typing import Any

from etils import epath
import numpy as np
import pyarrow as pa

from animesion_jax import run_dir
from animesion_jax.cli import xla_flags
from animesion_jax.data import preprocess
from animesion_jax.distributed import rows
from animesion_jax.inference import image_files
from animesion_jax.open_set import answering

# What a worker may raise reading one file: reported in its row, the job goes on. Anything else
# (a bug) fails the job, as in predict.
READ_ERRORS = (image_files.UnreadableImage, OSError)
# Rows per Parquet part: fewer, larger files than one per batch (a million pictures: ~250
# parts); a crash loses at most this many answers, which the next run gives again.
PART_ROWS = 4096
SHOWN_ERRORS = 10  # Unreadable files the command lists (every one has its row).


def decode_batch(batch: dict[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
  """A Ray task: files -> uint8 [n, S, S, 3] model inputs, and '' or the reason per file."""
  pixels = np.zeros((len(batch["file"]), image_size, image_size, 3), np.uint8)
  errors = []
  for i, file in enumerate(batch["file"]):
    try:
      image = image_files.load_image(str(file), min_size=image_size)
      pixels[i] = np.asarray(preprocess.resize_square(image_files.to_rgb(image), image_size))
      errors.append("")
    except READ_ERRORS as error:
      errors.append(f"{type(error).__name__}: {error}")
  return {
    "file": batch["file"],
    "relative": batch["relative"],
    "pixels": pixels,
    "error": np.asarray(errors, dtype=object),
  }


class Answering:
  """A Ray actor (map_batches callable class): one recognizer, loaded once, answering batches."""

  def __init__(
    self,
    workdir: str,
    top_k: int,
    batch_size: int,
    embeddings: bool,
    accept: float | None,
    compilation_cache_dir: str | None,
  ):

    from animesion_jax import recognizer  # pylint: disable=g-import-not-at-top

    # As the commands start JAX (cli/common.start_jax), so a repeated job (or a restarted
    # actor) does not compile again.
    xla_flags.prepare(compilation_cache_dir)

    self.run = recognizer.load_run(workdir, accept=accept)
    self.top_k, self.batch_size, self.embeddings = top_k, batch_size, embeddings

  def __call__(self, batch: dict[str, np.ndarray]):
    errors = [str(e) for e in batch["error"]]
    readable = [i for i, e in enumerate(errors) if not e]
    answers, vectors = {}, {}
    if readable:
      # Padded to whole batches: every call has the one shape compiled once.
      size = max(self.batch_size, len(readable))
      padded = np.zeros((size, *batch["pixels"].shape[1:]), np.uint8)
      padded[: len(readable)] = batch["pixels"][readable]
      logits, embeddings = self.run.embed(padded, size)
      found = self.run.answer(logits[: len(readable)], embeddings[: len(readable)], self.top_k)
      answers = dict(zip(readable, found))
      vectors = dict(zip(readable, embeddings[: len(readable)]))
    made = []
    for i, (file, relative) in enumerate(zip(batch["file"], batch["relative"])):
      if i in answers:
        vector = vectors[i] if self.embeddings else None
        made.append(rows.answer_row(str(file), str(relative), answers[i], vector))
      else:
        made.append(rows.error_row(str(file), str(relative), errors[i], self.embeddings))
    return rows.to_table(made, self.embeddings)


@dataclasses.dataclass
class Summary:
  """What one `run` did."""

  listed: int  # Image files found under the inputs.
  already_done: int  # Of those, already in the output (answered or reported) before this run.
  answered: int  # Rows written by this run with an answer.
  errors: int  # Rows written by this run for files that could not be read.
  parts: int  # Part files written by this run.
  ray_start_seconds: float  # Starting (or joining) Ray; 0 when nothing was left to answer.
  job_seconds: float  # From the dataset's creation to the last part written.
  # From the dataset's creation to the first part written: actors starting, loading the model
  # and compiling, the first batch decoded and answered.
  first_part_seconds: float
  problems: list[tuple[str, str]]  # (input, why) for inputs that are missing or hold no image.
  steady_rate: float = 0.0  # Pictures/s after the first part (no start-up in it).
  # (file, why) of the first unreadable files of this run (all are in the output's rows).
  unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def connect(address: str | None, num_cpus: int | None = None) -> bool:
  """Joins the Ray cluster at `address`, or starts a small local Ray (no dashboard).

  Returns whether this call started Ray (then the caller shuts it down). A Ray already
  initialised in this process (e.g. a test's) is used as it is.
  """
  import ray  # pylint: disable=g-import-not-at-top

  if ray.is_initialized():
    return False
  if address:
    ray.init(address=address)
    return True
  # Workers import this package from where the driver does (a source checkout too).
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
  ray.init(
    num_cpus=num_cpus or os.cpu_count(),
    include_dashboard=False,
    runtime_env={"env_vars": {"PYTHONPATH": path}},
  )
  return True


def actor_plan(resources: dict[str, float], nodes: int, actors: int | None) -> tuple[int, float]:
  """(actors, GPUs per actor): one per GPU when the cluster has GPUs, else one per node."""
  gpus = int(resources.get("GPU", 0))
  if gpus:
    return (actors or gpus), 1.0
  return (actors or max(1, nodes)), 0.0


def run(
  workdir: str | os.PathLike,
  inputs: Sequence[str],
  output_dir: str | os.PathLike,
  *,
  address: str | None = None,
  top_k: int = 5,
  batch_size: int = 64,
  embeddings: bool = False,
  accept: float | None = None,
  actors: int | None = None,
  compilation_cache_dir: str | None = None,
  num_cpus: int | None = None,
  part_rows: int = PART_ROWS,
  on_part: Callable[[epath.Path, int], None] | None = None,
) -> Summary:
  """Answers every listed picture not yet in `output_dir`, writing Parquet parts there.

  `accept`: the share of known pictures named (default: the calibration's), as predict's.
  `on_part(path, rows)` is called after each part is written.

  Raises:
    FileNotFoundError: `workdir` is not a training run.
    rows.BatchOutputError: `output_dir` holds another run's (or top-k's, embeddings') answers.
  """
  run_path = run_dir.RunDir(workdir)
  image_size = int(run_path.load_config().image_size)
  output = run_dir.resolve(output_dir)
  found, problems = image_files.find_images(list(inputs))
  files = [image_files.ImageFile(rows.local_path(f.path), f.relative) for f in found]
  if not files:
    return Summary(0, 0, 0, 0, 0, 0.0, 0.0, 0.0, problems)
  if accept is not None and not 0.0 < accept <= 1.0:
    raise answering.OpenSetError(f"--accept={accept} must be in (0, 1].")
  info = {"workdir": str(run_path), "top_k": top_k, "embeddings": embeddings, "accept": accept}
  rows.check_info(output, info)
  done = rows.done_files(output)
  todo = rows.pending(files, done)
  summary = Summary(len(files), len(files) - len(todo), 0, 0, 0, 0.0, 0.0, 0.0, problems)
  if not todo:
    return summary
  import ray  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  started = connect(address, num_cpus)
  summary.ray_start_seconds = time.perf_counter() - start
  try:
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    pool, gpus = actor_plan(ray.cluster_resources(), nodes, actors)
    start = time.perf_counter()
    items = [{"file": f.path, "relative": f.relative} for f in todo]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // batch_size))
    # Decoding runs in tasks, at most one per CPU of the cluster, on the CPUs the actors leave
    # (one each), overlapping their answers. Ray Data fuses a task map into the next actor map
    # only when the task pool's size is unset or equal to the actor pool's; with no CPU to spare
    # it is left unset, so that each actor decodes its own batches rather than wait forever.
    cpus = int(ray.cluster_resources().get("CPU", 0))
    decoding = ray.data.TaskPoolStrategy(size=cpus) if cpus > pool else None
    dataset = dataset.map_batches(
      decode_batch, fn_kwargs={"image_size": image_size}, batch_size=batch_size, compute=decoding
    )
    dataset = dataset.map_batches(
      Answering,
      fn_constructor_kwargs={
        "workdir": str(run_path),
        "top_k": top_k,
        "batch_size": batch_size,
        "embeddings": embeddings,
        "accept": accept,
        "compilation_cache_dir": compilation_cache_dir,
      },
      batch_size=batch_size,
      compute=ray.data.ActorPoolStrategy(size=pool),
      num_gpus=gpus or None,
    )
    blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    _write_parts(blocks, output, part_rows, summary, on_part, start)
  finally:
    if started:
      ray.shutdown()
  return summary


def _write_parts(
  blocks: Iterable[pa.Table],
  output: epath.Path,
  part_rows: int,
  summary: Summary,
  on_part: Callable[[epath.Path, int], None] | None,
  start: float,
) -> None:
  """Writes the blocks as parts of at least `part_rows` rows (the last one: what is left)."""
  job = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
  waiting, first_rows = [], 0

  def write() -> None:
    nonlocal first_rows
    table = pa.concat_tables(waiting)
    waiting.clear()
    path = rows.part_path(output, job, summary.parts)
    rows.write_part(table, path)
    files, reasons = table.column("file").to_pylist(), table.column("error").to_pylist()
    failed = [(f, e) for f, e in zip(files, reasons) if e]
    summary.unreadable += failed[: SHOWN_ERRORS - len(summary.unreadable)]
    summary.errors += len(failed)
    summary.answered += table.num_rows - len(failed)
    summary.parts += 1
    if summary.parts == 1:
      summary.first_part_seconds, first_rows = time.perf_counter() - start, table.num_rows
    if on_part is not None:
      on_part(path, table.num_rows)

  for block in blocks:
    if block.num_rows:
      waiting.append(block)
    if sum(t.num_rows for t in waiting) >= part_rows:
      write()
  if waiting:
    write()
  summary.job_seconds = time.perf_counter() - start
  later = summary.job_seconds - summary.first_part_seconds
  summary.steady_rate = (summary.answered + summary.errors - first_rows) / later if later else 0.0


def describe(summary: Summary, output_dir: Any) -> str:
  """The command's last lines: what was answered, what was already there, the timings."""
  lines = [f"Skipping {given}: {why}" for given, why in summary.problems]
  lines += [f"Could not read {file}: {why}" for file, why in summary.unreadable]
  if summary.errors > len(summary.unreadable):
    lines.append(f"... and {summary.errors - len(summary.unreadable)} more (the `error` column).")
  lines.append(
    f"{summary.listed} pictures listed, {summary.already_done} already in {output_dir}; "
    f"answered {summary.answered}, {summary.errors} unreadable, in {summary.parts} parts."
  )
  if summary.parts:
    rate = (summary.answered + summary.errors) / max(summary.job_seconds, 1e-9)
    line = (
      f"Ray start {summary.ray_start_seconds:.1f} s; job {summary.job_seconds:.1f} s "
      f"({rate:.1f} pictures/s)"
    )
    if summary.parts > 1:
      line += (
        f"; first part after {summary.first_part_seconds:.1f} s (actors starting, loading and "
        f"compiling), then {summary.steady_rate:.1f} pictures/s"
      )
    lines.append(line + ".")
  return "\n".join(lines)
