"""Reading many small files on a thread pool while keeping their order."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
from typing import TypeVar

_In = TypeVar("_In")
_Out = TypeVar("_Out")


def ordered_map(
  fn: Callable[[_In], _Out],
  items: Iterable[_In],
  num_threads: int,
  max_in_flight: int | None = None,
) -> Iterator[_Out]:
  """Yields `fn(item)` for each item, in input order, computed on threads.

  File reads release the GIL, so threads overlap disk latency with the
  caller's work. At most `max_in_flight` results wait in memory, so a slow
  consumer never makes the pool read the whole dataset ahead.

  Args:
    fn: applied to each item; an exception it raises is re-raised here, at
      that item's position.
    items: the inputs.
    num_threads: worker threads; 1 or less runs `fn` inline.
    max_in_flight: submitted but not yet consumed items; default
      4 * num_threads.
  """
  if num_threads <= 1:
    yield from map(fn, items)
    return
  max_in_flight = max_in_flight or 4 * num_threads
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= max_in_flight:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
