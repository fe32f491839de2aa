"""Shared ViT fields; the per-variant files (vit_b16.py, ...) pick the variant."""

import ml_collections

from configs import base


def get_vit_config(model_name: str, dataset: str) -> ml_collections.ConfigDict:
  """Paper recipe for a ViT variant on `dataset`."""
  config = base.get_base_config(dataset)
  config.model.name = model_name  # ViT variant (patch size and width come from the name).
  config.model.dropout_rate = 0.1  # Hidden-activation dropout (the original: 0.1).
  # The original's ViT (pytorch_pretrained_vit) put its one rate on the attention probabilities too.
  config.model.attention_dropout_rate = 0.1  # Dropout on the attention probabilities.
  # Where dropout goes: 'pytorch_pretrained_vit' (the original: after the attention projection and
  # after the MLP) or 'vit_jax' (also after the position embedding and inside the MLP).
  config.model.dropout_placement = "pytorch_pretrained_vit"
  # 'class_token' (the paper's ViT) or 'intermediate_features' (the original's later head).
  config.model.head_type = "class_token"
  config.model.representation_size = 0  # Width of the tanh pre-logits layer (0 = none, the fine-tuning recipe).
  config.model.gelu_approximate = True  # tanh GELU (original JAX ViT); False = exact GELU (pytorch_pretrained_vit).
  config.model.layer_norm_epsilon = 1e-6  # LayerNorm epsilon of the original ViT.
  config.normalization = "half"  # The original code normalised ViT inputs with mean 0.5 / std 0.5.
  return config
