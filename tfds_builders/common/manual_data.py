"""Finding the user's download in the manual directory, or saying why not.

TFDS's default manual directory (~/tensorflow_datasets/downloads/manual) is
shared by all datasets, and `tfds build --add_name_to_manual_dir` appends the
dataset name, so builders look in the directory itself and in each of its
immediate subdirectories.
"""

from __future__ import annotations

import socket
import urllib.parse

from etils import epath
import tensorflow_datasets as tfds


class MissingDataError(FileNotFoundError):
  """No usable copy of the dataset was found where the builder looked."""


def missing_data_error(
  dataset: str,
  looked_in: str,
  where_to_get: str,
  expected_layout: str,
  detail: str = "",
  config: str = "",
) -> MissingDataError:
  """Builds the error raised when a dataset's files cannot be found.

  Args:
    dataset: the TFDS dataset name.
    looked_in: the directory the builder searched.
    where_to_get: where the files can be downloaded.
    expected_layout: the directory tree the builder expects, several lines.
    detail: what exactly was missing or wrong, if known.
    config: the builder config to name in the suggested command, if any.
  """
  lines = [f"{dataset}: the dataset files were not found."]
  if detail:
    lines.append(detail)
  lines += [
    f"Looked in: {looked_in} (and its immediate subdirectories).",
    f"Download: {where_to_get}",
    "Expected layout:",
    expected_layout.rstrip("\n"),
    f"Then run: tfds build tfds_builders/{dataset}"
    + (f" --config={config}" if config else "")
    + " --manual_dir=DIR",
  ]
  return MissingDataError("\n".join(lines))


def manual_dir(dl_manager: tfds.download.DownloadManager) -> tuple[epath.Path | None, str]:
  """Returns (the manual dir if it exists and is not empty, its path).

  `dl_manager.manual_dir` raises when the directory is missing or empty; its
  path is still needed to tell the user where the builder looked.
  """
  # pylint: disable-next=protected-access
  configured = str(getattr(dl_manager, "_manual_dir", None) or "(not set)")
  try:
    path = dl_manager.manual_dir
  except AssertionError:
    return None, configured
  return epath.Path(path), str(path)


def candidate_roots(root: epath.Path) -> list[epath.Path]:
  """`root` and its immediate subdirectories, in name order."""
  children = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
  return [root, *children]


def unreachable_reason(url: str, timeout_s: float = 10.0) -> str | None:
  """Why `url`'s host cannot be reached, or None if a connection opens.

  TFDS retries a failed download 10 times with exponential backoff, which
  keeps an offline user waiting for minutes before the real message; one
  short connection attempt first lets the builder say at once where to put
  the files instead.
  """
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
      return None
  except OSError as e:
    return f"cannot connect to {parts.hostname}:{port} ({e})"
