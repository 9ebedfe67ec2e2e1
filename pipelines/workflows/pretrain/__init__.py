"""Pre-training runners: a CAE without labels (`cae`), the small CNN on chosen classes, from scratch or on a
frozen base (`cnn`); `common` streams the images and holds the result type, `plots` draws the CAE's figures.

Images stream from the index in decoded batches (a `keras.utils.PyDataset`), so memory stays bounded.
"""

from .cae import CAEConfig, run_pretrain_cae
from .cnn import CNNConfig, class_rows, run_pretrain_cnn
from .common import PretrainResult, image_batches, progress_callback

__all__ = [
    "CAEConfig",
    "CNNConfig",
    "PretrainResult",
    "class_rows",
    "image_batches",
    "progress_callback",
    "run_pretrain_cae",
    "run_pretrain_cnn",
]
