"""clu metric collections for training and evaluation.

Eval metrics are masked sums, so a padded last batch counts nothing and the result is exact
over the whole split (float32 counts are exact up to 2**24 examples).
"""

from clu import metrics
import flax
import jax.numpy as jnp


def top_k_correct(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
  """1.0 where the label is among the k highest logits, else 0.0."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # The label's position in a stable descending sort (ties: lower class id first, as
  # argmax and lax.top_k), so an all-equal output (a zero-initialised head) is not "correct".
  class_ids = jnp.arange(logits.shape[-1])
  ahead = (logits > label_logit) | ((logits == label_logit) & (class_ids < labels[:, None]))
  return (jnp.sum(ahead, axis=-1) < k).astype(jnp.float32)


@flax.struct.dataclass
class Top1(metrics.Average):
  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    return super().from_model_output(values=top_k_correct(logits, labels, 1), mask=mask)


@flax.struct.dataclass
class Top5(metrics.Average):
  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    return super().from_model_output(values=top_k_correct(logits, labels, 5), mask=mask)


@flax.struct.dataclass
class NumExamples(metrics.Metric):
  """How many (unmasked) examples were seen."""

  count: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, labels, mask=None, **_):
    if mask is None:
      return cls(count=jnp.asarray(labels.shape[0], jnp.float32))
    return cls(count=jnp.sum(mask.astype(jnp.float32)))

  def merge(self, other):
    return type(self)(count=self.count + other.count)

  def compute(self):
    return self.count


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  top1: metrics.Average.from_output("top1_hits")
  learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class DetectionTrainMetrics(metrics.Collection):
  """The detector's loss and its terms (detection/heads.py)."""

  loss: metrics.Average.from_output("loss")
  heatmap: metrics.Average.from_output("heatmap")
  size: metrics.Average.from_output("size")
  offset: metrics.Average.from_output("offset")
  learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  top1: Top1
  top5: Top5
  num_examples: NumExamples
