"""Quick start of the head detector: CenterNet on synthetic scenes, a few minutes on 2 CPU cores.

  python -m animesion_jax.main --config=configs/detector_quickstart.py --workdir=runs/detector
Builds `synthetic_scenes` (config 'small') first if it is missing (no download needed). Then
  python -m animesion_jax.predict --workdir=runs/quickstart --detector=runs/detector PICTURES
names every character in each picture (docs/detector.md).
"""

from animesion_jax import config_schema


def get_config():
  config = config_schema.get_base_config("synthetic_scenes")
  # Pictures -> head boxes (the train command's detector task).
  config.task = "detect"
  # 160-256 px pictures with heads of 28-112 px (the 'default' config has 256-512 px pictures).
  config.dataset_config = "small"
  # The scenes are drawn locally, so build them on first use.
  config.build_dataset_if_missing = True
  # Side of the detector's square input: pictures are letterboxed into it (160 px: test AP50 0.960
  # in twice the time; docs/detector.md).
  config.image_size = 128
  # Anchor-free CenterNet on a 4-stage BasicBlock backbone (models/centernet.py).
  config.model.name = "centernet"
  # Channels of the stem and the 3 stages (strides 2, 4, 8, 16).
  config.model.widths = (16, 32, 48, 64)
  # Channels of the top-down path and of the heads.
  config.model.head_width = 32
  # Flipped pictures and boxes.
  config.horizontal_flip = True
  # Global batch size.
  config.batch_size = 32
  # Epochs over the 3000 training scenes (4: test AP50 0.935 at 160 px).
  config.num_epochs = 6
  # AdamW trains this small detector from scratch faster than SGD.
  config.optimizer = "adamw"
  # Peak learning rate (warm-up then cosine).
  config.learning_rate = 0.004
  # Warm-up then cosine decay to zero.
  config.schedule = "warmup_cosine"
  # Warm-up length.
  config.warmup_epochs = 0.5
  # Decoupled weight decay.
  config.weight_decay = 1e-4
  # Keeps the early steps stable.
  config.grad_clip_norm = 5.0
  # Train metrics every 20 steps.
  config.log_every_steps = 20
  # Validation and test COCO AP at the end of every other epoch (and at the end).
  config.eval_every_epochs = 2
  # Pictures per evaluation batch.
  config.eval_batch_size = 50
  # A detection scoring at least this is a head. Chosen on validation: at 0.3, 82% of its
  # pictures without a character had no box, at 0.4 94% (recall 0.960, precision 0.945).
  config.detection.score_threshold = 0.4
  # Latest checkpoint every 100 steps.
  config.checkpoint_every_steps = 100
  return config
