"""The one evaluation core: batches in, exact masked metrics and per-example rows out.

Used by the per-epoch evaluation of training (`evaluate_batches`), by `evaluate`
(`predict_split`: metrics plus every example's top-5) and by `predict` and the recognizer
(`lagged` and `host_rows`: device outputs read back, one batch late). Every process feeds its own slice of a split; the metrics are summed on the devices
over the global batch, and per-example rows are gathered from all processes with
`multihost_utils.process_allgather`.
"""

from collections.abc import Callable, Iterable, Iterator
import functools
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from animesion_jax import sharding
from animesion_jax.data import datasets
from animesion_jax.data import pipeline
from animesion_jax.training import steps

# (state or variables, global batch) -> (EvalMetrics, top-5 class ids, or a dict of per-example
# outputs that holds them as 'top5'); see steps.eval_step.
EvalFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, Any]]


def make_eval_fn(model: Any, normalization: str, with_outputs: bool = False) -> EvalFn:
  """steps.eval_step for `model`, jitted (takes a TrainState or the model's variables).

  with_outputs: each example's logits and embedding come back too, from the same forward pass
  (evaluate's open-set section reads them: the split is run through the model once).
  """
  return jax.jit(
    functools.partial(
      steps.eval_step, model=model, normalization=normalization, with_outputs=with_outputs
    )
  )


def host_rows(array: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  if jax.process_count() == 1:
    return np.asarray(array)
  return np.asarray(
    multihost_utils.global_array_to_host_local_array(
      array, mesh, jax.sharding.PartitionSpec(sharding.DATA_AXES)
    )
  )


def gather(array: np.ndarray) -> np.ndarray:
  """Every process's rows, concatenated in process order (all processes pass the same shape)."""
  if jax.process_count() == 1:
    return array
  if 0 in array.shape[1:]:  # Rows of width 0 (open_set_fit's dropped logits): nothing to send.
    return np.zeros((array.shape[0] * jax.process_count(), *array.shape[1:]), array.dtype)
  return np.asarray(multihost_utils.process_allgather(array)).reshape(-1, *array.shape[1:])


def lagged(items: Iterable[tuple[Any, Any]], mesh: jax.sharding.Mesh) -> Iterator[tuple[Any, Any]]:
  """(key, device outputs) -> (key, this process's host rows of the outputs), one item late.

  The next item is dispatched before the previous one is read back, so the device computes
  while the host copies (and decodes the following batch).
  """
  previous = None
  for key, outputs in items:
    if previous is not None:
      yield previous[0], jax.tree.map(lambda a: host_rows(a, mesh), previous[1])
    previous = (key, outputs)
  if previous is not None:
    yield previous[0], jax.tree.map(lambda a: host_rows(a, mesh), previous[1])


def evaluate_batches(
  state: Any,
  eval_fn: EvalFn,
  local_batches: Iterable[dict[str, np.ndarray]],
  mesh: jax.sharding.Mesh,
  *,
  keep_rows: bool = False,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs `eval_fn` over per-process batches ('image', 'label', 'mask', 'index').

  Returns:
    The metrics ({'loss', 'top1', 'top5', 'num_examples'}, exact over the real examples) and,
    with keep_rows, {'index', 'label', 'top5'} (and the eval function's other outputs, e.g.
    'logits' and 'embedding') of every process's real examples in record order ({} otherwise).
  """

  def dispatch():
    for local in local_batches:
      index = local.pop("index")
      batch_metrics, outputs = eval_fn(state, sharding.to_global_batch(local, mesh))
      # Padding rows (index -1) are kept until after the gather, so every process
      # contributes the same shape.
      yield (batch_metrics, index, local["label"]), outputs

  totals, parts = None, {"index": [], "label": []}
  for (batch_metrics, index, label), outputs in (
    lagged(dispatch(), mesh) if keep_rows else dispatch()
  ):
    totals = batch_metrics if totals is None else totals.merge(batch_metrics)
    if keep_rows:
      outputs = outputs if isinstance(outputs, dict) else {"top5": outputs}
      for name, value in {"index": index, "label": label, **outputs}.items():
        parts.setdefault(name, []).append(value)
  if totals is None:
    raise ValueError("No batches to evaluate: the split is empty.")
  metrics = {name: float(value) for name, value in totals.compute().items()}
  metrics["num_examples"] = int(metrics["num_examples"])
  if not keep_rows:
    return metrics, {}
  rows = {name: gather(np.concatenate(values)) for name, values in parts.items()}
  real = rows["index"] >= 0
  order = np.argsort(rows["index"][real], kind="stable")
  return metrics, {name: values[real][order] for name, values in rows.items()}


def predict_split(
  state: Any,
  eval_fn: EvalFn,
  builder: Any,
  split: str,
  *,
  batch_size: int,
  image_size: int,
  workers: int,
  mesh: jax.sharding.Mesh,
  source: Any = None,
) -> dict[str, Any]:
  """Metrics and every example's top-5 over a whole split, with a progress bar on process 0.

  `source` replaces the split's records (e.g. only the known classes of a held-out run).

  Returns {'index', 'label', 'top5'} sorted by record index (one row per example) and 'metrics'.

  Raises:
    RuntimeError: some record was missed or seen twice (a bug in the data pipeline).
  """
  source = datasets.data_source(builder, split) if source is None else source
  batches = tqdm.tqdm(
    pipeline.eval_batches(
      source, global_batch_size=batch_size, image_size=image_size, workers=workers
    ),
    total=pipeline.num_eval_batches(len(source), batch_size),
    desc=split,
    unit="batch",
    disable=None if jax.process_index() == 0 else True,
  )
  metrics, rows = evaluate_batches(state, eval_fn, batches, mesh, keep_rows=True)
  if not np.array_equal(rows["index"], np.arange(len(source))):
    raise RuntimeError(
      f"Evaluation saw {len(rows['index'])} records of the {len(source)} in "
      f"split {split!r} (some missing or repeated); this is a bug."
    )
  return {**rows, "metrics": metrics}
