"""The timeline: one answer per track, unknown tracks grouped, screen time; JSON, CSV and HTML.

  appearances = timeline.answer_tracks(run, indexes)
  record = timeline.assemble(indexes, appearances, errors, run)
  timeline.write(record, thumbnails, output_dir)   # timeline.json, timeline.csv, index.html

Each track's answer is the recognizer's (`Recognizer.answer`, the one decision rule) for the mean
of its frames' logits and of their embeddings (re-normalised): a known name, an enrolled name or
unknown. Unknown tracks are clustered by their mean embeddings (open_set.grouping, as organize
does) into unknown-1..N, largest first. A track is on screen from its first frame to the end
of its last (indexer.py finds both to the frame), within its shot's picture (a fade's dark
frames left out); a character's screen time is the union of its
tracks' intervals.
"""

import csv
import html
import io
import json
import os

import numpy as np
from PIL import Image

from animesion_jax.open_set import grouping


def answer_tracks(run, indexes) -> list[dict]:
  """One appearance per track of every video (in `indexes` order), answered by `run`."""
  tracks = [(v, t) for v, index in enumerate(indexes) for t in index.tracks]
  if not tracks:
    return []
  outputs = [t.mean_outputs() for _, t in tracks]
  logits = np.stack([o[0] for o in outputs])
  embeddings = np.stack([o[1] for o in outputs])
  answers = run.answer(logits, embeddings, top_k=3)
  distance = grouping.cluster_distance_of(run.answerer.calibration)
  groups = grouping.group_names(answers, embeddings, distance)
  appearances = []
  for (v, track), answer, group in zip(tracks, answers, groups):
    start, end = on_screen(track, indexes[v])
    appearances.append(
      {
        "video": v,
        "file": indexes[v].path,
        "group": group,
        "character": answer.character,
        "unknown": answer.unknown,
        "enrolled": answer.enrolled,
        "confidence": round(answer.confidence, 4),
        "closest": answer.closest,
        "start": round(start, 3),
        "end": round(end, 3),
        "shot": track.shot,
        "track": track.id,
        "frames": track.frames,
        "best_time": round(track.best_time, 3),
        "box": track.best_box,
      }
    )
  return appearances


def on_screen(track, index) -> tuple[float, float]:
  """(start, end) seconds of a track: from its first frame to the end of its last, within its
  shot's picture (the shot without a fade's dark frames)."""
  shot = index.shots[track.shot]
  low, high = index.pictures.get(track.shot, (shot.start, shot.end))
  low, high = max(low, shot.start), min(high, shot.end)
  step = 1.0 / index.report.fps if index.report.fps else 0.0
  return max(track.first, low), min(track.last + step, high)


def union_seconds(intervals) -> float:
  """Length of the union of (start, end) intervals."""
  total, reach = 0.0, -np.inf
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


def screen_time(appearances, indexes) -> list[dict]:
  """Per video and group: seconds on screen and share of the video, longest first."""
  rows = []
  for v, index in enumerate(indexes):
    duration = index.shots[-1].end if index.shots else 0.0
    by_group: dict[str, list] = {}
    for a in appearances:
      if a["video"] == v:
        by_group.setdefault(a["group"], []).append((a["start"], a["end"]))
    for group, intervals in by_group.items():
      seconds = union_seconds(intervals)
      rows.append(
        {
          "file": index.path,
          "group": group,
          "unknown": group.startswith("unknown-")
          and all(a["unknown"] for a in appearances if a["group"] == group),
          "seconds": round(seconds, 3),
          "share": round(seconds / duration, 4) if duration else 0.0,
          "appearances": len(intervals),
        }
      )
  return sorted(rows, key=lambda r: (r["file"], -r["seconds"], r["group"]))


def assemble(indexes, appearances, errors, run, settings) -> dict:
  """The timeline.json record."""
  return {
    "workdir": run.description,
    "step": run.step,
    "calibration": run.answerer.note or "calibrated",
    "sample_every": settings.sample_every,
    "videos": [
      {**index.report.to_json(), "shots": len(index.shots), **index.stats} for index in indexes
    ],
    "errors": errors,
    "shots": [{"file": index.path, **s.to_json()} for index in indexes for s in index.shots],
    "appearances": appearances,
    "screen_time": screen_time(appearances, indexes),
  }


def _thumbnail_name(appearance) -> str:
  return f"thumbnails/{appearance['video']}-{appearance['track']}.jpg"


def write(record, indexes, output_dir: str) -> None:
  """timeline.json, timeline.csv, index.html and thumbnails/ in `output_dir`."""
  os.makedirs(os.path.join(output_dir, "thumbnails"), exist_ok=True)
  tracks = {(v, t.id): t for v, index in enumerate(indexes) for t in index.tracks}
  for a in record["appearances"]:
    thumbnail = tracks[(a["video"], a["track"])].thumbnail
    Image.fromarray(thumbnail).save(os.path.join(output_dir, _thumbnail_name(a)), quality=90)
  with open(os.path.join(output_dir, "timeline.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, ensure_ascii=False)
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  columns = [
    "file",
    "group",
    "character",
    "unknown",
    "enrolled",
    "confidence",
    "closest",
    "start",
    "end",
    "shot",
    "track",
    "frames",
    "best_time",
    "box",
  ]
  writer.writerow(columns)
  for a in record["appearances"]:
    writer.writerow(
      ["" if a[c] is None else " ".join(map(str, a[c])) if c == "box" else a[c] for c in columns]
    )
  with open(os.path.join(output_dir, "timeline.csv"), "w", encoding="utf-8") as f:
    f.write(text.getvalue())
  with open(os.path.join(output_dir, "index.html"), "w", encoding="utf-8") as f:
    f.write(page(record, output_dir))


def _clock(seconds: float) -> str:
  minutes, rest = divmod(seconds, 60)
  return f"{int(minutes)}:{rest:04.1f}"


def page(record, output_dir: str) -> str:
  """An HTML page: a row per character (unknown-N rows last), a thumbnail per appearance whose
  timestamp opens the video there (a media fragment, #t=seconds). Names are escaped: data."""
  seconds = {}
  for row in record["screen_time"]:
    seconds[row["group"]] = seconds.get(row["group"], 0.0) + row["seconds"]
  groups: dict[str, list] = {}
  for a in record["appearances"]:
    groups.setdefault(a["group"], []).append(a)
  order = sorted(groups, key=lambda g: (g.startswith("unknown-"), -seconds.get(g, 0), g))
  rows = []
  for group in order:
    cells = []
    for a in groups[group]:
      target = os.path.relpath(os.path.abspath(a["file"]), os.path.abspath(output_dir))
      link = html.escape(f"{target.replace(os.sep, '/')}#t={a['start']:.2f}", quote=True)
      title = html.escape(
        f"{os.path.basename(a['file'])} shot {a['shot']}, "
        f"{100 * a['confidence']:.0f}% {a['closest']}",
        quote=True,
      )
      cells.append(
        f'<figure><img src="{_thumbnail_name(a)}" alt="{html.escape(group)}" title="{title}">'
        f'<figcaption><a href="{link}">{_clock(a["start"])}-{_clock(a["end"])}</a></figcaption>'
        "</figure>"
      )
    kind = "unknown" if group.startswith("unknown-") else "named"
    rows.append(
      f'<section class="{kind}"><h2>{html.escape(group)} <small>'
      f"{seconds.get(group, 0):.1f} s, {len(groups[group])} appearances</small></h2>"
      f'<div class="row">{"".join(cells)}</div></section>'
    )
  errors = "".join(
    f"<li>{html.escape(e['file'])}: {html.escape(e['error'])}</li>" for e in record["errors"]
  )
  gaps = "".join(
    f"<li>{html.escape(v['file'])}: {g['start']:.1f}-{g['end']:.1f} s not decoded "
    f"({html.escape(g['why'])})</li>"
    for v in record["videos"]
    for g in v["gaps"]
  )
  problems = f"<ul class='problems'>{errors}{gaps}</ul>" if errors or gaps else ""
  style = (
    "body{font-family:sans-serif;margin:1em}.row{display:flex;flex-wrap:wrap;gap:6px}"
    "figure{margin:0;text-align:center;font-size:small}img{width:96px;height:96px}"
    ".unknown h2{color:#a40}.problems{color:#a00}"
  )
  note = (
    "" if record["calibration"] == "calibrated" else f"<p>{html.escape(record['calibration'])}</p>"
  )
  return (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Who appears when</title>"
    f"<style>{style}</style></head><body><h1>Who appears when</h1>{note}{problems}"
    + "".join(rows)
    + "</body></html>"
  )
