"""The extraction stage's exceptions: one base, each also deriving from the builtin it refines."""


class ExtractError(Exception):
    """Base class for every error raised by `extract`."""


class IndexValidationError(ExtractError, ValueError):
    """The image index (CSV or folder) is malformed; the message names the row."""


class ImageReadError(ExtractError, OSError):
    """One image could not be read or decoded; extraction records it as a failed row."""


class ImageChangedError(ExtractError, RuntimeError):
    """An image file changed or vanished between its hashing and its decoding: the run stops (its features would be
    stored under the old content's key) and a re-run resumes; never a failed row."""


class WeightsUnavailableError(ExtractError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, missing file)."""


class UnknownExtractorError(ExtractError, KeyError):
    """No extractor is registered under that name."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ExtractorConfigError(ExtractError, ValueError):
    """An extractor argument is out of range (pooling, input size, layer name...)."""


class PrecisionOverflowError(ExtractError, FloatingPointError):
    """The network overflowed under `precision="float16"`: features at float16's largest value, inf or NaN.

    `what` (the message without its advice, which is extract's) is set where it is raised, for a caller whose advice
    differs (predict: its head fixes the precision); an attribute, so that the error pickles as it is (from a Dask
    worker)."""

    what: str | None = None


def not_a_file(path) -> str:
    """Why `path`, which is not a regular file, cannot be read as one: the end of a one-line error."""
    import os

    if os.path.isdir(path):
        return "is a folder, not a file"
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a symbolic link that leads to no file ({os.readlink(path)})"
    return "does not exist" if not os.path.lexists(path) else "is not a regular file"
