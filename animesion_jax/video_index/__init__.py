"""Internal: the video indexer's library (the `video` command's logic).

decoding.py   frames streamed from a file with OpenCV, gaps in what decodes reported
shots.py      shot boundaries (cuts, and fades through black) from every decoded frame
detectors.py  the per-frame box finders (a callable: RGB frame -> boxes) by name
tracking.py   boxes linked into tracks within a shot (IoU)
indexer.py    decode -> shots -> sampled frames -> boxes -> embeddings -> tracks, streamed
timeline.py   one answer per track (Recognizer.answer), screen time, JSON / CSV / HTML
"""
