"""Vision Transformer (ViT) in Flax Linen.

The parameter tree reproduces the names of the original google-research
`vision_transformer` checkpoints, which were written with the pre-Linen Flax
API. That API numbered auto-named submodules with one counter shared by all
module types (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), whereas Linen counts per type; the names are therefore given
explicitly so that released `.npz` files load without renaming.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from animesion_jax.models import embedding
from animesion_jax.models import heads
from animesion_jax.models import initializers

Dtype = Any

# Where dropout goes. 'vit_jax' (google-research): after the position embedding, inside and after
# the MLP, after the attention projection. 'pytorch_pretrained_vit' (the ViT the original Animesion
# code trained): after the attention projection and after the MLP only. Both put
# `attention_dropout_rate` on the attention probabilities.
DROPOUT_PLACEMENTS = ("vit_jax", "pytorch_pretrained_vit")
# 'class_token': LayerNorm of the last layer's class token -> Dense (the original ViT).
# 'intermediate_features': the class token of every layer (no final LayerNorm), mixed across layers
# by a learned Dense(num_layers -> 1), then ReLU -> LayerNorm -> Dense (the original Animesion's
# later work, `interm_features_fc`).
HEAD_TYPES = ("class_token", "intermediate_features")
# Initialisation of the patch-embedding convolution. 'vit_jax' (google-research): lecun-normal
# kernel, zero bias. 'torch_default' (the original Animesion's pytorch_pretrained_vit left it at
# torch's Conv2d default): kernel U(+-1/sqrt(fan_in)), i.e. std 1/sqrt(3 fan_in), and bias
# U(+-1/sqrt(fan_in)), fan_in = patch * patch * 3.
PATCH_EMBEDDING_INITS = ("vit_jax", "torch_default")

# Initialisers of the original implementation, so that training from scratch
# behaves like it.
_DENSE_KERNEL_INIT = nn.initializers.xavier_uniform()
_DENSE_BIAS_INIT = nn.initializers.normal(stddev=1e-6)
_POS_EMBEDDING_INIT = nn.initializers.normal(stddev=0.02)


class MlpBlock(nn.Module):
  """Feed-forward block: Dense -> GELU -> [Dropout] -> Dense -> Dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  inner_dropout: bool = True  # Dropout between the two Dense layers (vit_jax placement).
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_dim = x.shape[-1]
    x = nn.Dense(
      self.mlp_dim,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_DENSE_KERNEL_INIT,
      bias_init=_DENSE_BIAS_INIT,
      name="Dense_0",
    )(x)
    x = nn.gelu(x, approximate=self.gelu_approximate)
    if self.inner_dropout:
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(
      out_dim,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_DENSE_KERNEL_INIT,
      bias_init=_DENSE_BIAS_INIT,
      name="Dense_1",
    )(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)).

  The attention probabilities are sown into 'intermediates' (as
  `MultiHeadDotProductAttention_1/attention_weights`, [N, heads, T, T]) when that collection is
  mutable; otherwise sowing costs nothing.
  """

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  mlp_inner_dropout: bool = True
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.LayerNorm(
      epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name="LayerNorm_0"
    )(x)
    # Flax's attention scales the logits by 1/sqrt(head_dim), as the original.
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_DENSE_KERNEL_INIT,
      broadcast_dropout=False,
      dropout_rate=self.attention_dropout_rate,
      name="MultiHeadDotProductAttention_1",
    )(y, y, deterministic=not train, sow_weights=True)
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(
      epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name="LayerNorm_2"
    )(x)
    y = MlpBlock(
      mlp_dim=self.mlp_dim,
      dropout_rate=self.dropout_rate,
      inner_dropout=self.mlp_inner_dropout,
      gelu_approximate=self.gelu_approximate,
      dtype=self.dtype,
      name="MlpBlock_3",
    )(y, train=train)
    return x + y


class AddPositionEmbedding(nn.Module):
  """Adds a learned position embedding whose length is fixed at init."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1,) + x.shape[1:]
    if self.has_variable("params", "pos_embedding"):
      stored = self.get_variable("params", "pos_embedding").shape
      if tuple(stored) != shape:
        raise ValueError(
          f"Position embedding has shape {tuple(stored)} but the input has "
          f"{x.shape[1]} tokens (expected shape {shape}); the image size "
          "differs from the one the parameters were created for. Resize the "
          "position embedding (see animesion_jax.convert) or use the "
          "original image size."
        )
    pos_embedding = self.param("pos_embedding", _POS_EMBEDDING_INIT, shape, jnp.float32)
    return x + pos_embedding.astype(x.dtype)


class Encoder(nn.Module):
  """Stack of encoder blocks, optionally followed by a final LayerNorm.

  Returns the encoded tokens and the class token after every block, [N, num_layers, D].
  """

  mlp_dim: int
  num_heads: int
  num_layers: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dropout_placement: str = "vit_jax"
  final_norm: bool = True
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    vit_jax = self.dropout_placement == "vit_jax"
    x = AddPositionEmbedding(name="posembed_input")(x)
    if vit_jax:
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    class_tokens = []
    for i in range(self.num_layers):
      x = EncoderBlock(
        mlp_dim=self.mlp_dim,
        num_heads=self.num_heads,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        mlp_inner_dropout=vit_jax,
        gelu_approximate=self.gelu_approximate,
        layer_norm_epsilon=self.layer_norm_epsilon,
        dtype=self.dtype,
        name=f"encoderblock_{i}",
      )(x, train=train)
      class_tokens.append(x[:, 0])
    if self.final_norm:
      x = nn.LayerNorm(
        epsilon=self.layer_norm_epsilon,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="encoder_norm",
      )(x)
    return x, jnp.stack(class_tokens, axis=1)


def exclusion_loss(class_tokens: jax.Array, distance: int, temperature: float) -> jax.Array:
  """Per example [N]: the sum over layers i of KL(softmax(t[i + d] / T) || softmax(t[i] / T)).

  `class_tokens` is [N, num_layers, D]; the softmax runs over the D features. The original's
  `KLDivLoss(reduction='batchmean')(log_softmax(t_i / T), softmax(t_{i+d} / T))` is the mean of
  this over its batch (the train step takes it over the real rows, as the main loss).
  """
  t = class_tokens.astype(jnp.float32) / temperature
  log_p = jax.nn.log_softmax(t, axis=-1)
  layers = t.shape[1]
  log_input, log_target = log_p[:, : layers - distance], log_p[:, distance:]
  return jnp.sum(jnp.exp(log_target) * (log_target - log_input), axis=(1, 2))


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
    dropout_rate: Dropout rate of the hidden activations (where: `dropout_placement`).
    attention_dropout_rate: Dropout on the attention probabilities.
    dropout_placement: One of DROPOUT_PLACEMENTS.
    head_type: One of HEAD_TYPES.
    exclusion_loss_weight: With the 'intermediate_features' head, > 0 adds
      -weight * T^2 * `exclusion_loss` to the training loss (sown per example into the 'losses'
      collection), as the original; 0 turns it off.
    exclusion_temperature: Softmax temperature T of the exclusion loss.
    exclusion_layer_distance: Layers d between the compared class tokens.
    gelu_approximate: True for tanh GELU (how the original `.npz` checkpoints were trained),
      False for exact erf GELU (`pytorch_pretrained_vit`, which the original Animesion trained).
    patch_embedding_init: One of PATCH_EMBEDDING_INITS (training from scratch).
    layer_norm_epsilon: Epsilon of every LayerNorm.
    dtype: Compute dtype; parameters stay float32 and logits are float32.
    head: One of models.heads.HEADS: 'linear' (the paper's) or 'cosine' (NormFace).
    cosine_scale: The cosine head's logit scale s.
    margin_type: One of models.heads.MARGIN_TYPES, on the target logit in training only.
    margin: The margin m ('additive': cosine units; 'angular': radians).
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  representation_size: int | None = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dropout_placement: str = "vit_jax"
  head_type: str = "class_token"
  exclusion_loss_weight: float = 0.0
  exclusion_temperature: float = 1.0
  exclusion_layer_distance: int = 2
  gelu_approximate: bool = True
  patch_embedding_init: str = "vit_jax"
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  head: str = "linear"
  cosine_scale: float = 16.0
  margin_type: str = "none"
  margin: float = 0.0

  def check_fields(self) -> None:
    """Raises ValueError for field values the model cannot be built with."""
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}."
      )
    if self.dropout_placement not in DROPOUT_PLACEMENTS:
      raise ValueError(
        f"dropout_placement={self.dropout_placement!r}: choose one of {list(DROPOUT_PLACEMENTS)}."
      )
    if self.patch_embedding_init not in PATCH_EMBEDDING_INITS:
      raise ValueError(
        f"patch_embedding_init={self.patch_embedding_init!r}: choose one of "
        f"{list(PATCH_EMBEDDING_INITS)}."
      )
    if self.head_type not in HEAD_TYPES:
      raise ValueError(f"head_type={self.head_type!r}: choose one of {list(HEAD_TYPES)}.")
    intermediate = self.head_type == "intermediate_features"
    if intermediate and self.representation_size:
      raise ValueError(
        "head_type='intermediate_features' has no pre-logits layer; set "
        "representation_size to None (0 in configs)."
      )
    if self.exclusion_loss_weight < 0:
      raise ValueError(f"exclusion_loss_weight={self.exclusion_loss_weight} must be >= 0.")
    if self.exclusion_loss_weight > 0:
      if not intermediate:
        raise ValueError(
          "exclusion_loss_weight > 0 needs head_type='intermediate_features' (the "
          "loss compares the class tokens of different layers)."
        )
      if not 0 < self.exclusion_layer_distance < self.num_layers:
        raise ValueError(
          f"exclusion_layer_distance={self.exclusion_layer_distance} must be "
          f"between 1 and num_layers - 1 = {self.num_layers - 1}."
        )
      if self.exclusion_temperature <= 0:
        raise ValueError(f"exclusion_temperature={self.exclusion_temperature} must be > 0.")
    heads.check_fields(self)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits [N, num_classes] for NHWC `images`."""
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    _, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(
        f"Image size {height}x{width} is not divisible by the patch size "
        f"{p}; use an image size that is a multiple of {p}."
      )
    self.check_fields()
    intermediate = self.head_type == "intermediate_features"

    x = images.astype(self.dtype)
    inits = {}
    if self.patch_embedding_init == "torch_default":
      inits = {
        "kernel_init": initializers.TORCH_DEFAULT_KERNEL,
        "bias_init": initializers.torch_default_bias(p * p * images.shape[-1]),
      }
    x = nn.Conv(
      self.hidden_size,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="embedding",
      **inits,
    )(x)
    n, gh, gw, d = x.shape
    x = x.reshape(n, gh * gw, d)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d))
    x = jnp.concatenate([cls, x], axis=1)

    x, class_tokens = Encoder(
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      num_layers=self.num_layers,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      dropout_placement=self.dropout_placement,
      final_norm=not intermediate,
      gelu_approximate=self.gelu_approximate,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      name="Transformer",
    )(x, train=train)

    if intermediate:
      return self._intermediate_head(class_tokens)
    x = x[:, 0]
    if self.representation_size is not None:
      x = nn.Dense(
        self.representation_size, dtype=self.dtype, param_dtype=jnp.float32, name="pre_logits"
      )(x)
      x = jnp.tanh(x)
    embedding.sow(self, x)
    # A zero linear head makes fine-tuning start from uniform predictions.
    zeros = nn.initializers.zeros
    return heads.output_layer(self, x, "head", kernel_init=zeros, bias_init=zeros)

  def _intermediate_head(self, class_tokens: jax.Array) -> jax.Array:
    """Dense(layers -> 1) across layers -> ReLU -> LayerNorm -> Dense; torch-default inits."""
    if self.exclusion_loss_weight > 0:
      term = exclusion_loss(class_tokens, self.exclusion_layer_distance, self.exclusion_temperature)
      # The original subtracts it: the class tokens of distant layers are pushed apart. Sown per
      # example: the train step averages it over the real rows, like the main loss.
      self.sow(
        "losses", "exclusion", -self.exclusion_loss_weight * self.exclusion_temperature**2 * term
      )
    x = jnp.swapaxes(class_tokens, 1, 2)  # [N, D, layers]
    x = nn.Dense(
      1,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=initializers.TORCH_DEFAULT_KERNEL,
      bias_init=initializers.torch_default_bias(self.num_layers),
      name="interm_aggregate",
    )(x)[..., 0]
    x = nn.relu(x)
    x = nn.LayerNorm(
      epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name="interm_norm"
    )(x)
    embedding.sow(self, x)
    return heads.output_layer(
      self,
      x,
      "head",
      kernel_init=initializers.TORCH_DEFAULT_KERNEL,
      bias_init=initializers.torch_default_bias(self.hidden_size),
    )
