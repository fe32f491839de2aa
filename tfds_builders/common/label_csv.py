"""Readers for the Animesion split files and class-name files.

Split files have one `class_id,relative_path` row per image and class files
one `class_id,class_name` row per class, with no header. In the wild some
have a header row, and DAF:re label files from before 2021-01-05 have the two
columns swapped; both are detected from the contents rather than configured.
Bad rows are skipped and counted in a `BuildReport`, never fatal; a class file
that cannot define the classes is fatal, with a message that says why.
"""

from __future__ import annotations

from collections.abc import Iterator
import csv
import dataclasses
import gzip

from etils import epath

from tfds_builders.common import build_report

# Reasons a split-file row is skipped.
BLANK_LINE = "blank_line"
MALFORMED_ROW = "malformed_row"
CLASS_ID_OUT_OF_RANGE = "class_id_out_of_range"
DUPLICATE_ROW = "duplicate_row"

# Data rows examined to decide which column holds the class id.
_ROWS_TO_SNIFF = 200


@dataclasses.dataclass(frozen=True)
class LabeledPath:
  """One row of a split file.

  Attributes:
    class_id: the class index (row of the class file).
    path: the image path relative to the image folder, '/'-separated.
    where: 'file.csv:line', to point at the row in reports.
  """

  class_id: int
  path: str
  where: str


def _parse_int(text: str) -> int | None:
  try:
    return int(text.strip())
  except ValueError:
    return None


def _read_rows(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
  """Yields (1-based line number, fields) for every line, blank ones too.

  A file whose name ends in .gz is decompressed first.
  """
  data = path.read_bytes()
  if path.suffix == ".gz":
    data = gzip.decompress(data)
  lines = data.decode("utf-8-sig").splitlines()
  for line_no, fields in enumerate(csv.reader(lines), start=1):
    yield line_no, [field.strip() for field in fields]


def _column_layout(rows: list[tuple[int, list[str]]]) -> tuple[int | None, bool]:
  """Returns (line of a header row or None, whether the id is column 2)."""
  data = [(n, f) for n, f in rows if any(f)]
  header_line = None
  if data and len(data[0][1]) == 2 and all(_parse_int(field) is None for field in data[0][1]):
    header_line = data[0][0]
    data = data[1:]
  votes_first = votes_second = 0
  for _, fields in data[:_ROWS_TO_SNIFF]:
    if len(fields) != 2:
      continue
    first, second = (_parse_int(f) is not None for f in fields)
    votes_first += first and not second
    votes_second += second and not first
  return header_line, votes_second > votes_first


def _normalise_path(path: str) -> str | None:
  path = path.replace("\\", "/")
  while path.startswith("./"):
    path = path[2:]
  parts = path.split("/")
  if not path or path.startswith("/") or ".." in parts or "" in parts:
    return None
  return path


def read_class_names(path: epath.Path) -> list[str]:
  """Reads a `class_id,class_name` file into names indexed by class id.

  Args:
    path: the class file (e.g. classid_classname.csv).

  Returns:
    names[i] is the name of class i.

  Raises:
    ValueError: the ids are not exactly 0..n-1, or a name appears twice; the
      label of every image would be ambiguous, so the build cannot go on.
  """
  rows = list(_read_rows(path))
  header_line, swapped = _column_layout(rows)
  names: dict[int, str] = {}
  for line_no, fields in rows:
    if not any(fields) or line_no == header_line:
      continue
    if len(fields) != 2:
      raise ValueError(f'{path}:{line_no}: expected "class_id,class_name", got {fields}.')
    id_text, name = (fields[1], fields[0]) if swapped else fields
    class_id = _parse_int(id_text)
    if class_id is None or not name:
      raise ValueError(f'{path}:{line_no}: expected "class_id,class_name", got {fields}.')
    if class_id in names:
      raise ValueError(f"{path}:{line_no}: class id {class_id} appears twice.")
    names[class_id] = name
  if not names:
    raise ValueError(f"{path} lists no classes.")
  missing = sorted(set(range(len(names))) - set(names))
  if missing:
    raise ValueError(
      f"{path}: class ids must be 0..{len(names) - 1} without gaps; missing {missing[:10]}."
    )
  ordered = [names[i] for i in range(len(names))]
  if len(set(ordered)) != len(ordered):
    seen = set()
    twice = [n for n in ordered if n in seen or seen.add(n)]
    raise ValueError(f"{path}: class names appear twice: {twice[:10]}.")
  return ordered


def read_split(
  path: epath.Path, num_classes: int, report: build_report.BuildReport
) -> list[LabeledPath]:
  """Reads a `class_id,relative_path` split file, skipping bad rows.

  Blank lines, rows that do not parse, class ids outside [0, num_classes) and
  repeated paths are skipped and counted in `report` (the first occurrence of
  a path is kept). A header row and swapped columns are noted in `report`.

  Args:
    path: the split file (e.g. labels/train.csv).
    num_classes: number of classes in the class file.
    report: receives skipped rows and notes.

  Returns:
    The good rows, in file order.
  """
  rows = list(_read_rows(path))
  header_line, swapped = _column_layout(rows)
  if header_line is not None:
    report.note(f"{path.name} header row", ",".join(rows[header_line - 1][1]))
  if swapped:
    report.note(f"{path.name} columns", "relative_path,class_id (old order)")
  result = []
  seen: set[str] = set()
  for line_no, fields in rows:
    where = f"{path.name}:{line_no}"
    if line_no == header_line:
      continue
    if not any(fields):
      report.skip(BLANK_LINE, where)
      continue
    if len(fields) != 2:
      report.skip(MALFORMED_ROW, f"{where}: {','.join(fields)}")
      continue
    id_text, path_text = (fields[1], fields[0]) if swapped else fields
    class_id = _parse_int(id_text)
    rel_path = _normalise_path(path_text)
    if class_id is None or rel_path is None:
      report.skip(MALFORMED_ROW, f"{where}: {','.join(fields)}")
    elif not 0 <= class_id < num_classes:
      report.skip(CLASS_ID_OUT_OF_RANGE, f"{where}: {class_id},{rel_path}")
    elif rel_path in seen:
      report.skip(DUPLICATE_ROW, f"{where}: {rel_path}")
    else:
      seen.add(rel_path)
      result.append(LabeledPath(class_id, rel_path, where))
  return result
