"""Internal: organize over a batch output (Parquet parts), in memory linear in the pictures.

Named pictures go to their name's group, as organize sorts them. The unknown ones are clustered
by their embeddings (the batch must have been run with --embeddings) with organize's rule
(grouping.cluster: average linkage on cosine distance, cut at the calibration's distance) when
there are at most `sample` of them: the very groups organize makes. Beyond that, exact average
linkage needs the n^2 / 2 pairwise distances (a million pictures: 4 TB), so the clustering is
bounded (`cluster_bounded`): a random sample of `sample` pictures is clustered exactly, every
other picture joins the nearest sampled cluster whose centroid is within the distance, and the
rest goes round again, at most `rounds` times; what is left then stays alone (one group
each). Memory: the small columns of every row, the unknown pictures' embeddings, and one
`chunk` x clusters block of cosines.
"""

from collections.abc import Sequence
import json
import os
from typing import Any

from etils import epath
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from animesion_jax import run_dir
from animesion_jax.distributed import rows
from animesion_jax.open_set import grouping

COLUMNS = ("file", "relative", "character", "unknown", "enrolled", "confidence", "closest")
SAMPLE = 2000  # Unknown pictures clustered exactly per round (organize's exact rule up to this).
ROUNDS = 20  # Rounds of the bounded clustering before what is left stays alone.
EXAMPLES = 5  # Pictures named per group in groups.json.


def cluster_bounded(
  embeddings: np.ndarray,
  distance: float,
  *,
  sample: int = SAMPLE,
  rounds: int = ROUNDS,
  chunk: int = 8192,
  seed: int = 0,
) -> np.ndarray:
  """Cluster ids 0..C-1 of L2-normalised embeddings; grouping.cluster's when n <= `sample`."""
  n = len(embeddings)
  ids = np.full(n, -1, np.int64)
  remaining, next_id = np.arange(n), 0
  rng = np.random.default_rng(seed)
  for _ in range(rounds):
    if remaining.size <= sample:
      ids[remaining] = grouping.cluster(embeddings[remaining], distance) + next_id
      return ids
    picked = np.sort(rng.choice(remaining, sample, replace=False))
    local = grouping.cluster(embeddings[picked], distance)
    ids[picked] = local + next_id
    count = int(local.max()) + 1
    centroids = np.zeros((count, embeddings.shape[1]), np.float64)
    np.add.at(centroids, local, embeddings[picked])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    rest = np.setdiff1d(remaining, picked, assume_unique=True)
    for start in range(0, rest.size, chunk):
      part = rest[start : start + chunk]
      cosines = np.asarray(embeddings[part], np.float64) @ centroids.T
      best = cosines.argmax(axis=1)
      near = 1.0 - cosines[np.arange(part.size), best] <= distance
      ids[part[near]] = best[near] + next_id
    next_id += count
    remaining = rest[ids[rest] < 0]
  ids[remaining] = next_id + np.arange(remaining.size)  # Left alone after the last round.
  return ids


def read(output_dir: epath.Path) -> tuple[pa.Table, np.ndarray, pa.Table]:
  """(answered rows' small columns, their embeddings where unknown, error rows), each picture once.

  Raises:
    rows.BatchOutputError: no part files, or unknown pictures without embeddings.
  """
  parts = rows.part_files(output_dir)
  if not parts:
    raise rows.BatchOutputError(
      f"{output_dir} holds no batch output (part-*.parquet): run python -m animesion_jax.batch "
      f"--output_dir={output_dir} first."
    )
  answered, vectors, errors = [], [], []
  for table in rows.read_parts(output_dir):
    failed = pc.not_equal(table.column("error"), "")
    errors.append(table.filter(failed).select(["file", "error"]))
    table = table.filter(pc.invert(failed))
    answered.append(table.select(list(COLUMNS)))
    unknown = table.filter(table.column("unknown"))
    if unknown.num_rows:
      if "embedding" not in unknown.column_names:
        raise rows.BatchOutputError(
          f"{output_dir} has no embeddings, which clustering the unknown pictures needs: run "
          "the batch again with --embeddings into a new --output_dir."
        )
      flat = unknown.column("embedding").combine_chunks().flatten().to_numpy()
      vectors.append(np.asarray(flat, np.float32).reshape(unknown.num_rows, -1))
  answered, errors = pa.concat_tables(answered), pa.concat_tables(errors)
  # Each picture once, should two runs have written the same file (the first row kept).
  files = answered.column("file").to_numpy(zero_copy_only=False)
  _, first = np.unique(files, return_index=True)
  embeddings = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
  if first.size < answered.num_rows:
    unknown_rank = np.cumsum(answered.column("unknown").to_numpy(zero_copy_only=False)) - 1
    keep = np.sort(first)
    is_unknown = answered.column("unknown").to_numpy(zero_copy_only=False)[keep]
    embeddings = embeddings[unknown_rank[keep][is_unknown]]
    answered = answered.take(keep)
  return answered, embeddings, errors


def sort(
  answered: pa.Table, embeddings: np.ndarray, distance: float, **bounded: Any
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """(group index per row, the row order by group, [{'name', 'kind', 'count'}] largest first,
  named groups before unknown ones) as organize orders them."""
  unknown = answered.column("unknown").to_numpy(zero_copy_only=False)
  enrolled = answered.column("enrolled").to_numpy(zero_copy_only=False)
  names = np.asarray(answered.column("character").to_pylist(), object)
  kinds = np.where(unknown, "unknown", np.where(enrolled, "enrolled", "known")).astype(object)
  if unknown.any():
    ids = cluster_bounded(embeddings, distance, **bounded)
    sizes = np.bincount(ids)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(1, sizes.size + 1)
    names[unknown] = np.char.add("unknown-", rank[ids].astype(str)).astype(object)
  keys, group_of, counts = np.unique(
    np.char.add(kinds.astype(str), np.char.add("\x1f", names.astype(str))),
    return_inverse=True,
    return_counts=True,
  )
  groups = [
    {"name": key.split("\x1f", 1)[1], "kind": key.split("\x1f", 1)[0], "count": int(c)}
    for key, c in zip(keys, counts)
  ]
  order_of = sorted(
    range(len(groups)),
    key=lambda g: (groups[g]["kind"] == "unknown", -groups[g]["count"], groups[g]["name"]),
  )
  position = np.empty(len(groups), np.int64)
  position[order_of] = np.arange(len(groups))
  group_of = position[group_of.reshape(-1)]
  return group_of, np.argsort(group_of, kind="stable"), [groups[g] for g in order_of]


def cluster_distance(output_dir: epath.Path) -> float:
  """The calibration's cluster distance of the run the batch answered with (else the default)."""
  try:
    info = json.loads((output_dir / rows.INFO_FILE).read_text(encoding="utf-8"))
    record = run_dir.resolve(info["workdir"]) / run_dir.CALIBRATION_FILE
    return float(json.loads(record.read_text(encoding="utf-8"))["cluster_distance"])
  except (OSError, ValueError, KeyError, TypeError):
    return grouping.DEFAULT_CLUSTER_DISTANCE


def organize(
  batch_dir: str | os.PathLike,
  output_dir: str | os.PathLike,
  distance: float | None = None,
  **bounded: Any,
) -> tuple[list[dict[str, Any]], int]:
  """Writes groups.csv (every picture, by group) and groups.json; returns (groups, errors).

  Raises:
    rows.BatchOutputError: see `read`.
  """
  source, output = run_dir.resolve(batch_dir), run_dir.resolve(output_dir)
  answered, embeddings, errors = read(source)
  if distance is None:
    distance = cluster_distance(source)
  group_of, order, groups = sort(answered, embeddings, distance, **bounded)
  names = pa.array([g["name"] for g in groups])
  kinds = pa.array([g["kind"] for g in groups])
  ordered = answered.take(order)
  index = pa.array(group_of[order])
  table = pa.table(
    {
      "group": names.take(index),
      "kind": kinds.take(index),
      "file": ordered.column("file"),
      "confidence": ordered.column("confidence"),
      "closest": ordered.column("closest"),
    }
  )
  output.mkdir(parents=True, exist_ok=True)
  with (output / "groups.csv").open("wb") as f:
    pa_csv.write_csv(table, f)
  starts = np.searchsorted(group_of[order], np.arange(len(groups)))
  relative = ordered.column("relative")
  for g, start in zip(groups, starts):
    g["examples"] = relative.slice(int(start), min(EXAMPLES, g["count"])).to_pylist()
  record = {
    "batch": os.fspath(source),
    "cluster_distance": distance,
    "pictures": answered.num_rows,
    "groups": groups,
    "errors": errors.to_pylist(),
  }
  text = json.dumps(record, indent=1, ensure_ascii=False)
  (output / "groups.json").write_text(text, encoding="utf-8")
  return groups, errors.num_rows


def describe(groups: Sequence[dict[str, Any]], errors: int, output_dir: Any, limit: int = 50):
  lines = [f"{g['name']:30} {g['kind']:9} {g['count']:>7}" for g in groups[:limit]]
  if len(groups) > limit:
    lines.append(f"... and {len(groups) - limit} more groups (see groups.json).")
  pictures = sum(g["count"] for g in groups)
  lines.append(
    f"{pictures} pictures in {len(groups)} groups ({errors} unreadable); wrote {output_dir}"
  )
  return "\n".join(lines)
