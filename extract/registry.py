"""The extractor registry: extractors are looked up by name, and their config rebuilds them."""

from __future__ import annotations

from .errors import UnknownExtractorError

_REGISTRY: dict[str, type] = {}


def register_extractor(name: str):
    """Class decorator that registers an extractor class under `name` (also set as `cls.name`)."""

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"an extractor named {name!r} is already registered: {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def known_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor_class(name: str) -> type:
    """The class registered as `name`, in any case (`ResNet50`, Keras's own spelling, is `resnet50`)."""
    found = _REGISTRY.get(name) or (_REGISTRY.get(name.lower()) if isinstance(name, str) else None)
    if found is not None:
        return found
    raise UnknownExtractorError(
        f"`model` must be one of {', '.join(repr(n) for n in known_extractors())}. Received: model={name!r}"
        + did_you_mean(name, known_extractors())
    )


def did_you_mean(name, choices) -> str:
    """" (did you mean 'resnet50'?)" for a misspelt name among `choices` (compared in lower case), else ""."""
    import difflib

    close = difflib.get_close_matches(str(name).lower(), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def get_extractor(name: str, **config):
    """Build the extractor registered as `name` with `config` (no model is built yet)."""
    return get_extractor_class(name)(**config)


def extractor_from_spec(spec: dict):
    """Rebuild an extractor from the spec stored in a feature store or a head bundle."""
    cls = get_extractor_class(spec["name"])
    if spec.get("version") != cls.VERSION:
        raise UnknownExtractorError(
            f"the features were made by {spec['name']} version {spec.get('version')}, but this featurehead has "
            f"version {cls.VERSION}; re-extract with this version (a store), and retrain a head on the new store (a "
            "head bundle)"
        )
    return cls.from_config(spec["config"])
