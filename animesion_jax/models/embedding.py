"""The picture embedding every model family exposes: the features its classifier reads.

Each model sows the input of its output layer (ViT: the normalised class token, or the
pre-logits / intermediate-features head's output; ResNet: the pooled features; ShallowNet: the
hidden layer after ReLU) into the `COLLECTION` collection. Sowing into a collection the caller
does not make mutable is a no-op, so training and plain inference pay nothing; nothing is sown
while initialising, so `model.init` returns the same variable trees as before;
`animesion_jax.models.logits_and_embedding` asks for it.
"""

import flax.linen as nn
import jax

COLLECTION = "embeddings"
NAME = "features"


def sow(module: nn.Module, features: jax.Array) -> None:
  """Records `features` [N, D] as the module's embedding (when the collection is mutable)."""
  if not module.is_initializing():
    module.sow(COLLECTION, NAME, features)
