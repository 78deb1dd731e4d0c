"""Build ``digits.npz``, the bundled copy of the UCI handwritten-digits test set (maintainers only).

Run once, from the repository root, by a maintainer::

    python -m numpy_densenet.data._build_digits

It needs scikit-learn, which is *not* a dependency of ``numpy_densenet``: it is only the convenient,
checksummed source of the 1,797 8x8 images that ``sklearn.datasets.load_digits`` ships (the test part of
Alpaydin & Kaynak's "Optical Recognition of Handwritten Digits", UCI Machine Learning Repository,
https://doi.org/10.24432/C50P49, CC BY 4.0; see ``LICENSE-digits.txt``).

The file it writes holds four uint8/int arrays, written with ``np.savez_compressed`` and no pickled objects:

``images``     (1797, 8, 8) uint8, grey levels 0..16 as in the source;
``labels``     (1797,) uint8, digit 0..9;
``train_idx``  (n_train,) int32, sorted indices into ``images`` of the fixed training split;
``test_idx``   (n_test,) int32, sorted indices of the fixed test split.

The split is stratified: within each class the indices are permuted by ``np.random.default_rng(0)``
(classes visited in order 0..9, one generator shared by all) and the first ``round(0.2 * n_class)`` go to the test
split. The indices are stored, so the split never depends on NumPy's generator again.
"""
from __future__ import annotations

import os

import numpy as np

TEST_FRACTION = 0.2
SEED = 0


def stratified_split(labels, test_fraction=TEST_FRACTION, seed=SEED):
    """Return ``(train_idx, test_idx)``, sorted int32 arrays, splitting each class ``1 - f : f``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return (np.sort(np.concatenate(train)).astype(np.int32),
            np.sort(np.concatenate(test)).astype(np.int32))


def main(out_path=None):
    from sklearn.datasets import load_digits  # maintainer-only dependency

    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16
    assert set(np.unique(labels)) == set(range(10))
    images = images.astype(np.uint8)
    labels = labels.astype(np.uint8)
    train_idx, test_idx = stratified_split(labels)
    if out_path is None:
        out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")
    np.savez_compressed(out_path, images=images, labels=labels, train_idx=train_idx, test_idx=test_idx)
    print(f"wrote {out_path}: {images.shape[0]} images, {train_idx.size} train / {test_idx.size} test, "
          f"{os.path.getsize(out_path)} bytes")


if __name__ == "__main__":
    main()
