"""Counting and listing what a dataset build skipped, dropped or ignored.

Every builder keeps one `BuildReport` per phase (the scan of the image
folders, then one per split). Problems are counted by reason with the first
few file names kept, so that the build log and the dataset's metadata say
exactly what was left out and why, without flooding either.
"""

from __future__ import annotations

import collections
from typing import Any

from absl import logging

# File names listed per reason; the counts are always complete.
MAX_LISTED = 10


class BuildReport:
  """Counts of kept and skipped items, with the first few names per reason.

  Attributes:
    title: what this report covers, e.g. 'moeimouto/train'.
    kept: number of examples written.
  """

  def __init__(self, title: str, max_listed: int = MAX_LISTED):
    self.title = title
    self.kept = 0
    self._max_listed = max_listed
    self._skipped: dict[str, int] = collections.Counter()
    self._listed: dict[str, list[str]] = collections.defaultdict(list)
    self._ignored: dict[str, int] = collections.Counter()
    self._notes: dict[str, Any] = {}

  def skip(self, reason: str, name: str) -> None:
    """Records an item (file or CSV row) left out of the dataset."""
    self._skipped[reason] += 1
    if len(self._listed[reason]) < self._max_listed:
      self._listed[reason].append(name)

  def ignore(self, what: str, count: int = 1) -> None:
    """Counts things that are expected to be passed over (e.g. color.csv)."""
    self._ignored[what] += count

  def note(self, key: str, value: Any) -> None:
    """Attaches a fact about the build (layout found, header row seen...)."""
    self._notes[key] = value

  @property
  def num_skipped(self) -> int:
    return sum(self._skipped.values())

  def skipped(self) -> dict[str, int]:
    """Number of skipped items per reason."""
    return dict(self._skipped)

  def listed(self, reason: str) -> list[str]:
    """The first few names skipped for `reason`."""
    return list(self._listed.get(reason, []))

  def as_dict(self) -> dict[str, Any]:
    """A JSON-serialisable form, stored in the dataset's metadata.json."""
    return {
      "kept": self.kept,
      "skipped": {
        reason: {"count": count, "first": self._listed[reason]}
        for reason, count in sorted(self._skipped.items())
      },
      "ignored": dict(sorted(self._ignored.items())),
      "notes": dict(self._notes),
    }

  def summary(self) -> str:
    """A few human-readable lines for the build log."""
    lines = [f"{self.title}: kept {self.kept}, skipped {self.num_skipped}"]
    for reason, count in sorted(self._skipped.items()):
      names = self._listed[reason]
      more = f", ... ({count - len(names)} more)" if count > len(names) else ""
      lines.append(f"  skipped {count} ({reason}): {', '.join(names)}{more}")
    for what, count in sorted(self._ignored.items()):
      lines.append(f"  ignored {count} ({what})")
    for key, value in self._notes.items():
      lines.append(f"  {key}: {value}")
    return "\n".join(lines)

  def log(self) -> None:
    """Logs the summary; as a warning when anything was skipped."""
    if self.num_skipped:
      logging.warning("%s", self.summary())
    else:
      logging.info("%s", self.summary())
