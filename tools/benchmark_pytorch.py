"""tools/benchmark.py's PyTorch side: the models the original Animesion code trained, timed the
same way (train step, eval step under no_grad, predict over a folder). Torch is imported inside
the functions, so the benchmark runs without it when --compare is not torch.
"""

import collections
from collections.abc import Callable
import concurrent.futures
import time
from typing import Any

from benchmark_input import cores
import ml_collections
import numpy as np
from PIL import Image

from animesion_jax.data import preprocess

_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def torch_reference(model: Any, config: ml_collections.ConfigDict) -> tuple[Any, str]:
  """The PyTorch model the original code trained, the same size as the Flax `model`."""
  name = config.model.name
  if name in _TORCHVISION_RESNETS:
    if model.base_width != 64:
      raise ValueError(
        f"--compare=torch needs config.model.base_width=64 (torchvision's); got {model.base_width}."
      )
    import torchvision  # pylint: disable=g-import-not-at-top

    return getattr(torchvision.models, name)(num_classes=model.num_classes), f"torchvision {name}"
  if not name.startswith("vit"):
    raise ValueError(
      f"--compare=torch supports ViTs and {_TORCHVISION_RESNETS}; "
      f"config.model.name={name!r} has no PyTorch reference."
    )
  if model.representation_size:
    raise ValueError(
      "--compare=torch needs config.model.representation_size=0 (the original "
      "fine-tuning models have no pre-logits layer)."
    )
  dims = {
    "patches": (model.patch_size, model.patch_size),
    "dim": model.hidden_size,
    "ff_dim": model.mlp_dim,
    "num_heads": model.num_heads,
    "num_layers": model.num_layers,
  }
  import pytorch_pretrained_vit  # pylint: disable=g-import-not-at-top

  for variant, spec in pytorch_pretrained_vit.configs.PRETRAINED_MODELS.items():
    same = all(spec["config"][key] == value for key, value in dims.items())
    if same and spec["config"]["dropout_rate"] == model.dropout_rate:
      torch_model = pytorch_pretrained_vit.ViT(
        variant, pretrained=False, image_size=config.image_size, num_classes=model.num_classes
      )
      return torch_model, f"pytorch_pretrained_vit.ViT('{variant}')"
  import timm.models.vision_transformer as timm_vit  # pylint: disable=g-import-not-at-top

  torch_model = timm_vit.VisionTransformer(
    img_size=config.image_size,
    patch_size=model.patch_size,
    num_classes=model.num_classes,
    embed_dim=model.hidden_size,
    depth=model.num_layers,
    num_heads=model.num_heads,
    mlp_ratio=model.mlp_dim / model.hidden_size,
    drop_rate=model.dropout_rate,
    proj_drop_rate=model.dropout_rate,
    attn_drop_rate=model.attention_dropout_rate,
  )
  return torch_model, "timm VisionTransformer"


def benchmark_torch(
  model: Any,
  config: ml_collections.ConfigDict,
  images: np.ndarray,
  labels: np.ndarray,
  on_gpu: bool,
  train: bool = True,
) -> tuple[dict[str, Any], Callable]:
  """The PyTorch reference's train step (or, train=False, its evaluation step in inference mode:
  model.eval() under torch.no_grad(), loss and top-5), warmed up; its facts and a window timer.
  """
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(cores())
  device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
  start = time.perf_counter()
  torch.manual_seed(config.seed)
  net, source = torch_reference(model, config)
  net = net.to(device).train(train)
  if not train:
    optimizer = None
  elif config.optimizer == "sgd":
    optimizer = torch.optim.SGD(
      net.parameters(),
      lr=config.learning_rate,
      momentum=config.momentum,
      weight_decay=config.weight_decay,
    )
  else:
    optimizer = torch.optim.AdamW(
      net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
  x_uint8 = torch.from_numpy(images).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  autocast_dtype = torch.bfloat16 if config.dtype == "bfloat16" else None
  normalize = _torch_normalizer(config.normalization, device)

  def forward():
    # Normalised inside the step, as the JAX step does on the device.
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      return net(normalize(x_uint8)).float()

  def step():
    if optimizer is None:
      with torch.no_grad():
        logits = forward()
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss + logits.topk(min(5, logits.shape[-1]))[1][:, 0].sum()
    loss = torch.nn.functional.cross_entropy(forward(), y, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip_norm)
    optimizer.step()
    return loss

  def window(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = step()
    loss.item()  # Waits for the device, like block_until_ready.
    return time.perf_counter() - start

  setup_s = time.perf_counter() - start
  first_step_s = window(1)
  facts = {
    "model": source,
    "device": str(device),
    "threads": torch.get_num_threads(),
    "setup_s": setup_s,
    "first_step_s": first_step_s,
    "torch_version": torch.__version__,
    "params": sum(p.numel() for p in net.parameters()),
    "net": net,
  }
  return facts, window


def _torch_normalizer(normalization: str, device: Any) -> Callable:
  """uint8 NHWC tensor -> normalised float NCHW tensor, as preprocess.normalize does."""
  import torch  # pylint: disable=g-import-not-at-top

  mean, std = (
    torch.tensor(v, device=device).view(1, 3, 1, 1)
    for v in preprocess.NORMALIZATIONS[normalization]
  )
  return lambda x: (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def torch_predict_timer(
  net: Any, config: ml_collections.ConfigDict, files: list[Any], workers: int
) -> Callable[[], float]:
  """Seconds to classify `files` with the PyTorch model as a PyTorch script would.

  Pillow decode and torchvision's Resize (bilinear) in a thread pool of predict's size, the next
  batch decoding while the model runs; model.eval() under torch.no_grad(), softmax, top-5.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional  # pylint: disable=g-import-not-at-top

  size, batch_size = config.image_size, config.batch_size
  device = next(net.parameters()).device
  normalize = _torch_normalizer(config.normalization, device)

  def load(file: Any) -> Any:
    with Image.open(file.path) as image:
      image = functional.resize(image.convert("RGB"), [size, size])
    return functional.pil_to_tensor(image).permute(1, 2, 0)  # uint8 HWC.

  def window() -> float:
    start, classified = time.perf_counter(), 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      queue, pending = iter(files), collections.deque()
      while True:
        while len(pending) < 2 * batch_size and (file := next(queue, None)) is not None:
          pending.append(pool.submit(load, file))
        if not pending:
          break
        batch = torch.stack(
          [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
        )
        with torch.no_grad():
          logits = net(normalize(batch.to(device))).float()
          probabilities, _ = logits.softmax(-1).topk(min(5, logits.shape[-1]))
        classified += len(probabilities.cpu())
    if classified != len(files):
      raise RuntimeError(f"Classified {classified} of {len(files)} images.")
    return time.perf_counter() - start

  return window
