"""Internal: the batch output, a folder of Parquet part files, one row per picture.

  OUT/_batch.json                      what made it: run, top-k, embeddings, accept (the "_" keeps
                                       Parquet readers of the folder off it)
  OUT/part-<job>-<n>.parquet           rows, each file written atomically (never half a file)

Each row: `file` (the absolute path or gs:// URI read), `relative` (its name as predict writes
it), the answer (`character` or null, `unknown`, `confidence`, `closest`, `enrolled`,
`calibrated`), the top-k (`names`, `class_ids`, `probabilities`, best first), `note`, `error`
(empty when answered; the reason when the file could not be read, the answer fields then null)
and, on request, `embedding`. A re-run reads back the `file` column of the parts (`done_files`)
and answers only the others, so the parts together hold each picture once.
"""

from collections.abc import Iterable, Iterator, Sequence
import io
import json
import os
from typing import Any

from etils import epath
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from animesion_jax import run_dir

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
INFO_FILE = "_batch.json"


class BatchOutputError(ValueError):
  """An output folder that cannot be continued or read (another run's output, no parts)."""


def schema(embeddings: bool) -> pa.Schema:
  """The columns of every part file (the embedding column only when asked for)."""
  fields = [
    pa.field("file", pa.string()),
    pa.field("relative", pa.string()),
    pa.field("character", pa.string()),
    pa.field("unknown", pa.bool_()),
    pa.field("confidence", pa.float64()),
    pa.field("closest", pa.string()),
    pa.field("enrolled", pa.bool_()),
    pa.field("calibrated", pa.bool_()),
    pa.field("names", pa.list_(pa.string())),
    pa.field("class_ids", pa.list_(pa.int32())),
    pa.field("probabilities", pa.list_(pa.float64())),
    pa.field("note", pa.string()),
    pa.field("error", pa.string()),
  ]
  if embeddings:
    fields.append(pa.field("embedding", pa.list_(pa.float32())))
  return pa.schema(fields)


def answer_row(file: str, relative: str, answer: Any, embedding: np.ndarray | None) -> dict:
  """One answered picture's row (`answer` is an animesion_jax.Answer)."""
  row = {
    "file": file,
    "relative": relative,
    "character": answer.character,
    "unknown": answer.unknown,
    "confidence": answer.confidence,
    "closest": answer.closest,
    "enrolled": answer.enrolled,
    "calibrated": answer.calibrated,
    "names": answer.names,
    "class_ids": answer.class_ids,
    "probabilities": answer.probabilities,
    "note": answer.note,
    "error": "",
  }
  if embedding is not None:
    row["embedding"] = np.asarray(embedding, np.float32).tolist()
  return row


def error_row(file: str, relative: str, error: str, embeddings: bool) -> dict:
  """The row of a file that could not be read or decoded: the reason, no answer."""
  row = dict.fromkeys(schema(embeddings).names)
  row.update(file=file, relative=relative, note="", error=error)
  return row


def to_table(rows: Sequence[dict], embeddings: bool) -> pa.Table:
  return pa.Table.from_pylist(list(rows), schema=schema(embeddings))


def part_path(output_dir: epath.Path, job: str, index: int) -> epath.Path:
  return output_dir / f"{PART_PREFIX}{job}-{index:06d}{PART_SUFFIX}"


def write_part(table: pa.Table, path: epath.Path) -> None:
  """One part file, atomically: a crash leaves the whole file or none (run_dir.write_atomic)."""
  buffer = io.BytesIO()
  pq.write_table(table, buffer)
  run_dir.write_atomic(path, buffer.getvalue())


def part_files(output_dir: epath.Path) -> list[epath.Path]:
  """The finished part files, sorted (temporary files of a write cut short are not listed)."""
  if not output_dir.is_dir():
    return []
  return sorted(
    p
    for p in output_dir.iterdir()
    if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX)
  )


def read_parts(output_dir: epath.Path, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
  """Each part's table (only `columns`, when given), one part in memory at a time."""
  for path in part_files(output_dir):
    with path.open("rb") as f:
      yield pq.read_table(f, columns=list(columns) if columns else None)


def done_files(output_dir: epath.Path) -> set[str]:
  """The files already in the output (answered or reported unreadable)."""
  done = set()
  for table in read_parts(output_dir, ["file"]):
    done.update(table.column("file").to_pylist())
  return done


def pending(files: Iterable[Any], done: set[str]) -> list[Any]:
  """The files (with a `.path`) not yet in the output, in order, each once."""
  seen, left = set(done), []
  for file in files:
    if file.path not in seen:
      seen.add(file.path)
      left.append(file)
  return left


def check_info(output_dir: epath.Path, info: dict[str, Any]) -> None:
  """Writes OUT/_batch.json, or checks that the output being continued was made the same way.

  Raises:
    BatchOutputError: OUT holds another run's (or checkpoint's, top-k's, embeddings') answers.
  """
  path = output_dir / INFO_FILE
  if path.exists():
    found = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k in info if found.get(k) != info[k]]
    if differ:
      raise BatchOutputError(
        f"{output_dir} holds answers made with "
        + ", ".join(f"{k}={found.get(k)!r}" for k in differ)
        + ", but this command has "
        + ", ".join(f"{k}={info[k]!r}" for k in differ)
        + ": give another --output_dir (or delete that one to start over)."
      )
    return
  run_dir.write_atomic(path, json.dumps(info, indent=1).encode("utf-8"))


def local_path(file: str) -> str:
  """An absolute path (a gs:// URI unchanged): what the rows name and the done set matches."""
  return file if "://" in file else os.path.abspath(os.path.expanduser(file))
