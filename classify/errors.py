"""The classifier heads' exceptions (one base, each also deriving from the builtin it refines) and warnings."""


class ClassifyError(Exception):
    """Base class for every error raised by `classify`."""


class BundleIntegrityError(ClassifyError, ValueError):
    """A bundle's model file does not match the sha256 in its manifest."""


class BundleMismatchError(ClassifyError, ValueError):
    """Features given to a bundle come from another extractor than the one it was trained on."""


class BundleNotFoundError(ClassifyError, FileNotFoundError):
    """The bundle directory or one of its files is missing."""


class BundleExistsError(ClassifyError, FileExistsError):
    """The target directory of a bundle is not empty and holds no bundle, so it is not overwritten."""


class BundleBusyError(ClassifyError, RuntimeError):
    """Another process has been saving a bundle into the same folder for longer than the wait allows."""


class BundleFormatError(ClassifyError, ValueError):
    """A bundle's manifest is unreadable, of an unknown format version or kind, or inconsistent."""


class BundleUnsafeError(ClassifyError, ValueError):
    """Loading a bundle's model file would run code from it: a pickle, a type that is not ours, a Keras Lambda."""


class PickleBundleWarning(UserWarning):
    """A head is written or read as a pickle (`model_format="joblib"`): loading a pickle runs any code it holds."""
