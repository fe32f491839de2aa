"""The config schema: every field a run has, its default and a comment saying what it does.

Library code validates and fills configs from here; the files under configs/ (the ones the README
names on command lines) start from `get_base_config` and set their model family's fields.
"""

import ml_collections


class ConfigError(ValueError):
  """A config field has a value the run cannot use."""


def get_base_config(dataset: str = "moeimouto") -> ml_collections.ConfigDict:
  """The paper's recipe for `dataset` (Tables 1 and 2): image 128, batch 64, SGD 0.001 momentum 0.9,
  learning rate x1/3 every 20 of 50 epochs on DAF:re, every 50 of 200 epochs on moeImouto."""
  config = ml_collections.ConfigDict()

  # What the run trains: 'classify' (head crops -> characters) or 'detect' (pictures -> head
  # boxes: config.model.name 'centernet' on config.dataset 'synthetic_scenes'; see docs/detector.md).
  config.task = "classify"

  # Data.
  # TFDS name: 'synthetic_characters', 'moeimouto', 'dafre' or (config.task='detect')
  # 'synthetic_scenes'.
  config.dataset = dataset
  # TFDS builder config ('' = the builder's default, e.g. dafre 'faces').
  config.dataset_config = ""
  # TFDS data directory ('' = TFDS default, ~/tensorflow_datasets).
  config.data_dir = ""
  # Build the dataset when absent (only download-free datasets).
  config.build_dataset_if_missing = False
  # Side of the square model input, in pixels.
  config.image_size = 128
  # Train: resize to image_size + margin, then random-crop image_size.
  config.resize_margin = 32
  # Train: random horizontal flip.
  config.horizontal_flip = True
  # Train: torchvision ColorJitter(b, c, s, hue) strength (original: 0.1; 0 = off).
  config.color_jitter = 0.0
  # 'half' (mean 0.5, std 0.5, as the paper's ViTs) or 'imagenet'.
  config.normalization = "half"
  # Decode the train split once into accelerator memory; augment there.
  config.data_on_device = False
  # grain worker processes for decoding (0 = in the main process).
  config.data_workers = 0
  # Splits evaluated; ones the dataset lacks are skipped.
  config.eval_splits = ("validation", "test")
  # Carve this fraction of train (seeded) into 'validation' when the dataset has none.
  config.validation_fraction = 0.0

  # Open set: classes kept out of training, to measure how unknown characters are answered.
  config.open_set = ml_collections.ConfigDict()
  # Comma-separated class names left out of training, validation and the model's classes; their
  # test pictures become the unknown set (animesion_jax/data/holdout.py).
  config.open_set.holdout_classes = ""
  # This many more classes left out the same way, chosen with config.seed.
  config.open_set.holdout_count = 0

  # The head detector (config.task='detect'); config.image_size is the side of its square input.
  config.detection = ml_collections.ConfigDict()
  # Most boxes per training picture (when a picture has more, the largest are kept).
  config.detection.max_boxes = 8
  # Detections decoded per picture (the highest heatmap peaks).
  config.detection.max_detections = 32
  # Operating threshold: a detection with at least this score is a head (predict, recall/precision).
  config.detection.score_threshold = 0.3
  # Train: each picture letterboxed at a random zoom in [min_zoom, 1] at a random place.
  config.detection.min_zoom = 0.6

  # Model.
  config.model = ml_collections.ConfigDict()
  # Key of animesion_jax.models.MODELS.
  config.model.name = "vit_b16"
  # Output layer: 'linear' (the paper's) or 'cosine' (NormFace: L2-normalised features and class
  # weights, times config.model.cosine_scale; the embedding is the normalised feature it reads).
  config.model.head = "linear"
  # 'cosine' head: the scale s of the cosine logits (softmax over s * cos).
  config.model.cosine_scale = 16.0
  # 'cosine' head: a margin on the target class's cosine, in training only: 'none', 'additive'
  # (CosFace: s * (cos - m)) or 'angular' (ArcFace: s * cos(theta + m)).
  config.model.margin_type = "none"
  # The margin m of config.model.margin_type (cosine units, or radians for 'angular').
  config.model.margin = 0.0
  # Compute dtype: 'float32' or 'bfloat16' (params stay float32).
  config.dtype = "float32"

  # Initialisation from a checkpoint (the paper's "pretrained" rows).
  config.init_from = ml_collections.ConfigDict()
  # '' (random init), 'vit_npz', 'pytorch_vit', 'torchvision_resnet', 'animesion'.
  config.init_from.source = ""
  # File (or converted directory) to load.
  config.init_from.path = ""
  # init_from 'run': start the classifier afresh even when the class count is the same
  # (classifier re-training, the second stage of decoupled long-tail training).
  config.init_from.reset_classifier = False
  # Train only the classifier head (the paper's pretrained-ResNet recipe).
  config.freeze_backbone = False

  # Optimisation.
  # Global batch size (all devices and processes together).
  config.batch_size = 64
  # Devices that split parameters and optimizer state (FSDP); 1 = pure data parallel.
  config.fsdp_size = 1
  # Split each batch into this many microbatches (same update, less memory).
  config.grad_accumulation_steps = 1
  # Update the train state in place (donated to the step): True (all of it), False (none), or
  # None for the platform's choice: all on accelerators (one copy of parameters and optimizer
  # state in memory instead of two); the parameters alone on CPU, where XLA would copy every
  # donated momentum buffer each step (see docs/recipe_differences.md).
  config.donate_state = ml_collections.config_dict.placeholder(bool)
  paper_epochs = 200 if dataset == "moeimouto" else 50  # Table 2 (moeImouto) / Table 1 (DAF:re).
  # Training length in epochs (ignored when num_train_steps > 0).
  config.num_epochs = paper_epochs
  # Training length in steps; -1 derives it from num_epochs.
  config.num_train_steps = -1
  # 'sgd' (with momentum) or 'adamw'.
  config.optimizer = "sgd"
  # Peak learning rate.
  config.learning_rate = 0.001
  # SGD momentum.
  config.momentum = 0.9
  # Dtype of the SGD momentum buffer: 'float32' or 'bfloat16' (saves memory).
  config.momentum_dtype = "float32"
  # Decoupled weight decay (adamw) or L2 added to gradients (sgd).
  config.weight_decay = 0.0
  # 'step', 'warmup_cosine' or 'constant'.
  config.schedule = "step"
  # 'step' schedule: epochs between decays (paper: 20 for 50 epochs, 50 for 200).
  config.decay_every_epochs = 20 if paper_epochs == 50 else 50
  # 'step' schedule: multiply the learning rate by this at each decay.
  config.decay_factor = 1.0 / 3.0
  # 'warmup_cosine' (and 'step'): linear warm-up length in epochs.
  config.warmup_epochs = 0.0
  # Clip gradients to this global norm (0 = off).
  config.grad_clip_norm = 0.0
  # Label smoothing of the cross-entropy targets.
  config.label_smoothing = 0.0
  # 'softmax' (the paper's), or for long-tailed data 'balanced_softmax' or 'logit_adjusted'
  # (both add a log class prior from the training counts to the logits; see losses.py).
  config.loss = "softmax"
  # 'logit_adjusted': tau, the weight of the log class prior (1 = balanced_softmax's loss).
  config.logit_adjust_tau = 1.0
  # Draw each training example class-balanced: a class uniformly, then one of its images.
  config.class_balanced_sampling = False
  # The original code's validate() switched the model to eval mode and nothing switched it back,
  # so from epoch 2 on it trained with dropout off and BatchNorm statistics frozen (as in the paper).
  # Reproduce that (paper configs set True).
  config.original_eval_mode_after_first_epoch = False
  # True: skip NaN/Inf steps and go on; False: stop the run.
  config.skip_nonfinite_steps = False

  # Loop, logging and checkpoints.
  # Seed of initialisation, shuffling, augmentation and dropout.
  config.seed = 0
  # Console/TensorBoard train metrics every this many steps.
  config.log_every_steps = 50
  # Evaluate every this many epochs (and always at the end).
  config.eval_every_epochs = 1.0
  # Global batch size for evaluation.
  config.eval_batch_size = 256
  # Inference: classifier weights of each class divided by their norm to this power, bias
  # dropped (tau-normalisation, Kang et al. 2020), wherever the run is loaded (load_run); 0 = off.
  config.tau_norm = 0.0
  # Evaluate: many-shot classes have more training images than this (DAF:re's groups: 100).
  config.many_shot_above = 100
  # Evaluate: few-shot classes have fewer training images than this (DAF:re's groups: 20).
  config.few_shot_below = 20
  # Save the latest checkpoint every this many steps.
  config.checkpoint_every_steps = 1000
  # Also save when this many minutes passed since the last save (0 = off).
  config.checkpoint_every_minutes = 0.0
  # How many latest checkpoints to keep (plus the best one).
  config.keep_checkpoints = 2
  # 'disallow': fail on implicit host<->device transfers in the step loop.
  config.transfer_guard = "allow"
  # Stop this run (after saving) once it has done this many steps; -1 = never.
  config.halt_after_steps = -1
  return config


def vit_config(model_name: str, dataset: str) -> ml_collections.ConfigDict:
  """Paper recipe for a ViT variant on `dataset`."""
  config = get_base_config(dataset)
  # ViT variant (patch size and width come from the name).
  config.model.name = model_name
  # Hidden-activation dropout (the original: 0.1).
  config.model.dropout_rate = 0.1
  # The original's ViT (pytorch_pretrained_vit) put its one rate on the attention probabilities too.
  # Dropout on the attention probabilities.
  config.model.attention_dropout_rate = 0.1
  # Where dropout goes: 'pytorch_pretrained_vit' (the original: after the attention projection and
  # after the MLP) or 'vit_jax' (also after the position embedding and inside the MLP).
  config.model.dropout_placement = "pytorch_pretrained_vit"
  # 'class_token' (the paper's ViT) or 'intermediate_features' (the original's later head).
  config.model.head_type = "class_token"
  # Width of the tanh pre-logits layer (0 = none, the fine-tuning recipe).
  config.model.representation_size = 0
  # False: exact GELU, as the original Animesion (pytorch_pretrained_vit), also when fine-tuning the
  # .npz weights (trained with tanh GELU); True: tanh GELU, as google-research's JAX ViT.
  config.model.gelu_approximate = False
  # Patch-embedding init from scratch: 'torch_default' (the original's) or 'vit_jax'.
  config.model.patch_embedding_init = "torch_default"
  # LayerNorm epsilon of the original ViT.
  config.model.layer_norm_epsilon = 1e-6
  # The original code normalised ViT inputs with mean 0.5 / std 0.5.
  config.normalization = "half"
  return config


def resnet_config(model_name: str, dataset: str) -> ml_collections.ConfigDict:
  """Paper recipe for a torchvision-layout ResNet on `dataset`."""
  config = get_base_config(dataset)
  # ResNet depth (block type and stage sizes come from the name).
  config.model.name = model_name
  # Channels of the stem and first stage (torchvision: 64).
  config.model.base_width = 64
  # From scratch: xavier-uniform convs, as the original code.
  config.model.init_scheme = "animesion"
  # The original code normalised ResNet inputs with ImageNet mean/std.
  config.normalization = "imagenet"
  return config
