"""scikit-learn's 8x8 digits with a fixed stratified train/test split.

The split does not depend on any RNG: within each class, samples are ordered by the sha256 of
``b"neurosim-digits:<index>"`` and the first ones go to the test set. Per-class test counts are
proportional to class sizes (largest remainder, ties to the lower class), 360 in total, which
leaves 1,437 training samples. The result is the same on every machine and library version.
"""
from __future__ import annotations

import hashlib

import numpy as np

N_TEST = 360


def split_indices(labels: np.ndarray, n_test: int = N_TEST) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``labels``: sorted (train, test) index arrays."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / len(labels)
    per_class = np.floor(quota).astype(int)
    order = np.lexsort((classes, -(quota - per_class)))   # largest remainder first
    per_class[order[: n_test - per_class.sum()]] += 1
    test = []
    for c, k in zip(classes, per_class):
        members = np.flatnonzero(labels == c).tolist()
        members.sort(key=lambda i: hashlib.sha256(b"neurosim-digits:%d" % i).digest())
        test += members[:k]
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): images uint8 (N, 1, 8, 8) in 0..16, labels int64."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train, test = split_indices(labels)
    return images[train], labels[train], images[test], labels[test]
