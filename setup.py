"""Installs animesion_jax: anime character recognition in JAX/Flax."""

import setuptools

# Lower bounds: the versions CI installs and tests (jax 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, tfds 4.9.10, grain 0.2.18, clu 0.0.12); newer releases are accepted
# (the GPU machine runs jax 0.11.2). A cap only where a real incompatibility is known, with why.
# Nothing here pulls in TensorFlow: training, evaluation, prediction, conversion and the benchmark
# run without it (tests/test_no_tensorflow.py); only the `tfds build` command line needs it.
INSTALL_REQUIRES = [
  "jax>=0.10.2",
  "jaxlib>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  # ArrayRecord data sources and DatasetBuilder.download_and_prepare work without TensorFlow.
  "tensorflow-datasets>=4.9.10",
  "grain>=0.2.18",
  "array_record>=0.8",
  "clu>=0.0.12",  # Only clu.metrics and clu.parameter_overview (TF-free) are used.
  "ml-collections>=1.1.0",
  "etils[epath]>=1.9.1",
  "numpy>=2.0",  # jax's own floor; keeps the numpy that Colab ships.
  "tensorboard>=2.21",  # Its TF-free event-file writer writes the summaries.
  "pillow>=11",
  "scipy>=1.13",
  "matplotlib>=3.8",
  "tqdm>=4.60",
  # tfds 4.9.10 imports it to build datasets but declares it only for Python < 3.9.
  "importlib_resources>=5",
  # The head detector's COCO AP (animesion_jax/detection/coco.py): the maintained implementation.
  "pycocotools>=2.0.8",
  # Face detection for `predict --detect_faces`; OpenCV 5.x has no CascadeClassifier.
  "opencv-python-headless>=4.8,<5",
]

# `tfds build` (the command line that builds moeImouto and DAF:re) imports TensorFlow, apache_beam
# and mlcroissant at start-up in tfds 4.9.10 (tensorflow/datasets#5463). The quick start builds its
# synthetic dataset through the Python API, which needs none of them.
BUILD_REQUIRES = [
  "tensorflow-cpu>=2.21; platform_machine == 'x86_64'",
  "tensorflow>=2.21; platform_machine != 'x86_64'",
  "apache-beam>=2.77",
  "mlcroissant>=1.1",
]

# JAX with accelerator plugins, through jax's own extras (the same jax version constraint).
ACCELERATOR_EXTRAS = {
  "cuda12": ["jax[cuda12]>=0.10.2"],
  "cuda13": ["jax[cuda13]>=0.10.2"],
  "tpu": ["jax[tpu]>=0.10.2"],
}

# The web page (`python -m animesion_jax.serve`): a Starlette app served by uvicorn.
DEMO_REQUIRES = [
  "starlette>=1.0,<2",
  "uvicorn>=0.30",
  "python-multipart>=0.0.20",  # Starlette's parser of multipart uploads.
]

# `python -m animesion_jax.export --format=onnx` (jax2onnx's runtime needs) and tools/onnx_predict.py.
# jax2onnx itself is installed apart, without its declared dependencies (docs/export.md):
#   pip install --no-deps jax2onnx==0.17.1
# because every jax2onnx release since 0.15 requires orbax-checkpoint<0.11.37, below this package's
# floor, and Equinox, dm-pix, netron and orbax-export, which it does not import for these models.
# Exporting StableHLO (jax.export) needs nothing more.
EXPORT_REQUIRES = ["onnx>=1.20.1", "onnx-ir>=0.2.1", "onnxruntime>=1.24.1"]

# `python -m animesion_jax.batch` (docs/batch.md): Ray Data lists, decodes and answers a collection
# on a local Ray or a cluster, writing Parquet. ray 2.60 installs beside this stack (pyarrow 25,
# protobuf 6) without a conflict; apache-beam could not (it pins protobuf<7 and pyarrow<26).
RAY_REQUIRES = ["ray[data]>=2.60", "pyarrow>=17"]

TEST_REQUIRES = (
  BUILD_REQUIRES
  + DEMO_REQUIRES
  + EXPORT_REQUIRES
  + RAY_REQUIRES
  + [
    # tests/test_serve.py: HTTP clients and Debian's chromium driven by Selenium.
    "requests>=2.31",
    "selenium>=4.30,<5",
    "pytest>=8",
    "pytest-timeout>=2.3",  # Every test has a time limit (pyproject.toml).
    "pytest-cov>=5",  # The fast tier's line coverage of animesion_jax/ (docs/testing.md).
    "dill>=0.3",  # tfds.testing imports it.
    # PyTorch references for the parity tests and the benchmark's --compare=torch.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pytorch-pretrained-vit==0.0.7",
    "timm==1.0.31",
    # tests/test_notebook.py executes notebooks/quickstart.ipynb with parameters.
    "papermill>=2.6",
    "ipykernel>=6",
    # tests/test_gcs.py: a gs:// run directory against a local Cloud Storage emulator.
    "gcp-storage-emulator>=2024.8",
    "gcsfs>=2024.6",
    # The one formatter and linter (pyproject.toml); pinned, so its output is the same everywhere.
    "ruff==0.17.6",
  ]
)

setuptools.setup(
  name="animesion_jax",
  version="0.1.0",
  description="Anime character recognition (DAF:re, moeImouto) with ViT and ResNet in JAX/Flax.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",  # jax >= 0.10 requires Python >= 3.11 (and numpy >= 2.3 has no 3.10 wheels).
  classifiers=[
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
  ],
  packages=setuptools.find_packages(
    include=["animesion_jax*", "tfds_builders*"]
  ),  # configs/ are files users pass by path.
  package_data={
    "animesion_jax": ["serve/static/*"],
    "tfds_builders": ["*/dummy_data/**/*", "*/paper_split/*", "*/*.txt", "*/*.md"],
  },
  include_package_data=True,
  install_requires=INSTALL_REQUIRES,
  extras_require={
    "test": TEST_REQUIRES,
    "build": BUILD_REQUIRES,
    "demo": DEMO_REQUIRES,
    "export": EXPORT_REQUIRES,
    "ray": RAY_REQUIRES,
    **ACCELERATOR_EXTRAS,
  },
)
