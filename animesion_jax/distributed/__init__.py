"""Internal: the library of `python -m animesion_jax.batch` (recognising a collection on Ray).

  rows.py    the Parquet output: row building, part files written atomically, the done set
  job.py     the Ray Data job: list, decode in tasks, answer in an actor pool, write parts
  sorting.py organize over a batch output: named groups and unknown clusters, bounded memory

Only job.py imports Ray (the `ray` extra); rows.py and sorting.py need pyarrow alone.
"""
