"""Vision Transformer (ViT) in Flax Linen.

The parameter tree reproduces the names of the original google-research
`vision_transformer` checkpoints, which were written with the pre-Linen Flax
API. That API numbered auto-named submodules with one counter shared by all
module types (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), whereas Linen counts per type; the names are therefore given
explicitly so that released `.npz` files load without renaming.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Initialisers of the original implementation, so that training from scratch
# behaves like it.
_DENSE_KERNEL_INIT = nn.initializers.xavier_uniform()
_DENSE_BIAS_INIT = nn.initializers.normal(stddev=1e-6)
_POS_EMBEDDING_INIT = nn.initializers.normal(stddev=0.02)


class MlpBlock(nn.Module):
  """Feed-forward block: Dense -> GELU -> Dropout -> Dense -> Dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_DENSE_KERNEL_INIT, bias_init=_DENSE_BIAS_INIT,
                 name='Dense_0')(x)
    x = nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(out_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_DENSE_KERNEL_INIT, bias_init=_DENSE_BIAS_INIT,
                 name='Dense_1')(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name='LayerNorm_0')(x)
    # Flax's attention scales the logits by 1/sqrt(head_dim), as the original.
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_DENSE_KERNEL_INIT,
        broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        name='MultiHeadDotProductAttention_1',
    )(y, y, deterministic=not train)
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name='LayerNorm_2')(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                 gelu_approximate=self.gelu_approximate, dtype=self.dtype,
                 name='MlpBlock_3')(y, train=train)
    return x + y


class AddPositionEmbedding(nn.Module):
  """Adds a learned position embedding whose length is fixed at init."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1,) + x.shape[1:]
    if self.has_variable('params', 'pos_embedding'):
      stored = self.get_variable('params', 'pos_embedding').shape
      if tuple(stored) != shape:
        raise ValueError(
            f'Position embedding has shape {tuple(stored)} but the input has '
            f'{x.shape[1]} tokens (expected shape {shape}); the image size '
            'differs from the one the parameters were created for. Resize the '
            'position embedding (see animesion_jax.convert) or use the '
            'original image size.')
    pos_embedding = self.param('pos_embedding', _POS_EMBEDDING_INIT, shape,
                               jnp.float32)
    return x + pos_embedding.astype(x.dtype)


class Encoder(nn.Module):
  """Stack of encoder blocks followed by a final LayerNorm."""

  mlp_dim: int
  num_heads: int
  num_layers: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = AddPositionEmbedding(name='posembed_input')(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = EncoderBlock(
          mlp_dim=self.mlp_dim,
          num_heads=self.num_heads,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          gelu_approximate=self.gelu_approximate,
          layer_norm_epsilon=self.layer_norm_epsilon,
          dtype=self.dtype,
          name=f'encoderblock_{i}',
      )(x, train=train)
    return nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                        param_dtype=jnp.float32, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT classifier with a class token.

  Attributes:
    num_classes: Number of output classes.
    patch_size: Side of the square patches; image sides must be multiples.
    hidden_size: Token width D.
    mlp_dim: Hidden width of the feed-forward blocks.
    num_heads: Attention heads; must divide hidden_size.
    num_layers: Number of encoder blocks.
    representation_size: Width of the optional pre-logits (dense + tanh) layer.
    dropout_rate: Dropout after the position embedding, attention and MLPs.
    attention_dropout_rate: Dropout on the attention weights.
    gelu_approximate: True for tanh GELU (original `.npz` checkpoints), False
      for exact erf GELU (`pytorch_pretrained_vit` checkpoints).
    layer_norm_epsilon: Epsilon of every LayerNorm.
    dtype: Compute dtype; parameters stay float32 and logits are float32.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits [N, num_classes] for NHWC `images`."""
    if images.ndim != 4:
      raise ValueError(
          f'Expected NHWC images of rank 4, got shape {images.shape}.')
    _, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(
          f'Image size {height}x{width} is not divisible by the patch size '
          f'{p}; use an image size that is a multiple of {p}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f'hidden_size {self.hidden_size} is not divisible by num_heads '
          f'{self.num_heads}.')

    x = images.astype(self.dtype)
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID',
                dtype=self.dtype, param_dtype=jnp.float32,
                name='embedding')(x)
    n, gh, gw, d = x.shape
    x = x.reshape(n, gh * gw, d)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d))
    x = jnp.concatenate([cls, x], axis=1)

    x = Encoder(
        mlp_dim=self.mlp_dim,
        num_heads=self.num_heads,
        num_layers=self.num_layers,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate,
        layer_norm_epsilon=self.layer_norm_epsilon,
        dtype=self.dtype,
        name='Transformer',
    )(x, train=train)
    x = x[:, 0]

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=jnp.float32, name='pre_logits')(x)
      x = jnp.tanh(x)
    # A zero head makes fine-tuning start from uniform predictions.
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.zeros, name='head')(x)
    return x.astype(jnp.float32)
