"""What loading a bundle trusts: only our own head types in a skops file (`trusted_types`), Keras files only in
safe mode, and a pickle only on explicit request (loading one runs whatever code it names)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib

from classify.errors import BundleFormatError, BundleUnsafeError, PickleBundleWarning
from classify.heads import head_types

PICKLE_RISK = "loading a pickle runs any code it holds: load only a file you wrote yourself"


def trusted_types(types=None) -> list[str]:
    """The types a skops head file may hold beyond skops's own defaults: the classes our heads are made of.

    Computed from `classify.heads.head_types` (what `make_head` and `fit_out_of_core` build; or `types`, that
    set computed once by the caller), never from what a file reports.
    """
    return sorted(f"{t.__module__}.{t.__qualname__}" for t in (types or head_types()))


def load_skops(target: Path, data: bytes) -> Any:
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    types = head_types()
    try:
        head = skops.io.loads(data, trusted=trusted_types(types))
    except UntrustedTypesFoundException as err:
        raise BundleUnsafeError(f"{target} holds types that are not featurehead head types, so it is not loaded: "
                                f"{err}") from err
    except Exception as err:  # a damaged or foreign file: skops raises zip, JSON and type errors alike
        raise BundleFormatError(f"{target} is not a readable skops head file ({type(err).__name__}: {err})") from err
    check_head_types(target, head, types)
    return head


def check_head_types(target: Path, head: Any, types=None) -> None:
    """skops also trusts its own defaults (scikit-learn's estimators, ~200 types: none runs code when loaded); a
    head made of any but ours is refused here, in one line, not left to fail later as a bug (and `save_bundle`
    refuses to save one in skops format: it would not load)."""
    from sklearn.base import BaseEstimator

    parts = [head]
    if isinstance(head, BaseEstimator):
        parts += [v for v in head.get_params(deep=True).values() if isinstance(v, BaseEstimator)]
    allowed = types or head_types()
    foreign = sorted({f"{type(p).__module__}.{type(p).__qualname__}" for p in parts if type(p) not in allowed})
    if foreign:
        raise BundleUnsafeError(f"{target} holds types that are not featurehead head types, so it is not loaded: "
                                f"{', '.join(foreign)}")


def load_keras(target: Path, data: bytes, loader) -> Any:
    try:
        return loader(data)
    except Exception as err:  # Keras raises ValueError, TypeError and zip errors alike; safe_mode's refusal too
        raise BundleUnsafeError(f"{target} is not a Keras model that loads with safe_mode=True (no code) "
                                f"({type(err).__name__}: {err})") from err


def load_pickle(target: Path, data: bytes, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise BundleUnsafeError(
            f"{target} is a pickle, and {PICKLE_RISK}; it is not loaded. Retrain the head (`featurehead train`) "
            "for a skops bundle, or, for a bundle you wrote yourself, load_bundle(path, trust_pickle=True)"
        )
    warnings.warn(f"loading {target}: {PICKLE_RISK}", PickleBundleWarning, stacklevel=3)
    import io

    return joblib.load(io.BytesIO(data))
