"""harmonax: image harmonization in JAX/Flax, from a laptop CPU to TPU pods."""

import setuptools

# CPU-complete core: everything needed to build datasets, train, evaluate and
# harmonize. No TensorFlow: datasets are ArrayRecord files read with grain.
INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "array_record>=0.8.1",
    "dm-pix>=0.4.3",
    "etils[epath]>=1.7",
    "flax>=0.12.0",
    "grain>=0.2.12",
    "importlib_resources>=6.0",  # TFDS needs it to generate without TensorFlow.
    "jax>=0.7.0",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11.0",
    "pillow>=10.0",
    "pycocotools>=2.0.7",
    "scikit-image>=0.22",  # reference implementations in tests, sample photos' source.
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow.
    "tensorflow-datasets>=4.9.7",
    "tqdm>=4.66",
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8.0", "pytest-xdist>=3.5", "imageio>=2.30", "imageio-ffmpeg>=0.4",
             "ruff>=0.6", "onnx>=1.20", "onnxruntime>=1.24", "onnx-ir>=0.2"],
    # ONNX export (harmonax.export): the runtime and format. The converter, jax2onnx, is
    # installed with --no-deps (README): its orbax-checkpoint<0.11.37 pin would downgrade
    # orbax, and its hub/netron/equinox dependencies serve only its own extras.
    "export": ["onnx>=1.20", "onnxruntime>=1.24", "onnx-ir>=0.2"],
    # Harmonizer on video files (frame folders need only Pillow).
    "video": ["imageio>=2.30", "imageio-ffmpeg>=0.4"],
    # Apache Beam pins protobuf/pyarrow back, so it is optional.
    "beam": ["apache-beam>=2.60"],
    # On a TPU VM: pip install -e .[tpu]. gcsfs/google-cloud-storage let etils write
    # config.json, metrics.jsonl and TensorBoard files to gs:// workdirs without TensorFlow.
    "tpu": ["jax[tpu]>=0.7.0", "gcsfs>=2024.2", "google-cloud-storage>=2.14"],
    # Importing the official PyTorch checkpoints.
    "convert": ["torch>=2.0"],
    # The `tensorboard --logdir WORKDIR` viewer (the event files need only tensorboardX).
    "tensorboard": ["tensorboard>=2.14"],
}

setuptools.setup(
    name="harmonax",
    version="0.1.0",
    description="Image harmonization models in JAX/Flax: DoveNet, BargainNet, "
    "iDIH, iS2AM, Harmonizer, CDTNet, PCT-Net.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["harmonax*", "data_builders*", "configs*"]),
    package_data={"data_builders": ["**/*.json", "**/*.jpg", "**/*.png", "**/*.txt", "**/*.tsv", "**/*.bib", "**/*.md"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
