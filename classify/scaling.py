"""A StandardScaler whose `fit` reads X in row slabs, so a float32 X never gets a float64 twin."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler


class SlabStandardScaler(StandardScaler):
    """`StandardScaler` that fits dense 2-D arrays slab by slab with `partial_fit`.

    scikit-learn's `StandardScaler.fit` accumulates its float64 mean and variance over a float64 temporary as
    large as X (2.3x a float32 X at its peak). Fitting in slabs of about `slab_bytes` gives the same statistics
    (the same incremental formula scikit-learn uses) with a temporary of one slab. Everything else is
    scikit-learn's.
    """

    slab_bytes = 16 << 20  # of the float64 temporary

    def fit(self, X, y=None, sample_weight=None):
        if not isinstance(X, np.ndarray) or X.ndim != 2 or sample_weight is not None:
            return super().fit(X, y, sample_weight)
        rows = max(1, self.slab_bytes // (8 * max(1, X.shape[1])))
        if len(X) <= rows:
            return super().fit(X, y, sample_weight)
        self._reset()
        for lo in range(0, len(X), rows):
            self.partial_fit(X[lo : lo + rows], y)
        return self
