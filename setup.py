"""Installs animesion_jax: anime character recognition in JAX/Flax."""

import setuptools

# Versions seen installing and working together (jax 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, tfds 4.9.10, grain 0.2.18, clu 0.0.12, tensorflow-cpu 2.21).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2.18,<0.3",
    "array_record>=0.8",
    "clu==0.0.12",
    "ml-collections>=1.1.0,<2",
    "numpy>=2.4,<3",
    "protobuf>=6.33,<7",
    # clu's metric writers need TensorFlow and TensorBoard.
    "tensorflow-cpu>=2.21,<2.22",
    "tensorboard>=2.21,<2.22",
    "pillow>=12,<13",
    "importlib_resources",
    "scipy>=1.13",
    "matplotlib>=3.8",
    "tqdm>=4.60",
    # The `tfds build` CLI of tfds 4.9.10 imports these at start-up (tensorflow/datasets#5463).
    "apache-beam>=2.77,<3",
    "mlcroissant>=1.1,<2",
    # Face detection for `predict --detect_faces`; 5.x has no CascadeClassifier.
    "opencv-python-headless>=4.8,<5",
]

TEST_REQUIRES = [
    "pytest>=8",
    "dill>=0.3",  # tfds.testing imports it.
    # PyTorch references for the parity tests and the benchmark's --compare=torch.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pytorch-pretrained-vit==0.0.7",
    "timm==1.0.31",
]

setuptools.setup(
    name="animesion_jax",
    version="0.1.0",
    description="Anime character recognition (DAF:re, moeImouto) with ViT and ResNet in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["animesion_jax*", "tfds_builders*", "configs"]),
    package_data={"tfds_builders": ["*/dummy_data/**/*", "*/*.txt", "*/*.md"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
