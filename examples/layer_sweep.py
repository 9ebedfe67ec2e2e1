"""The layer sweep from Python: three VGG16 layers in one forward pass, a CV logistic-regression probe each.
(The CLI: `featurehead sweep INDEX --model vgg16 --layers block3_pool,block4_pool,block5_pool`.)

    python examples/layer_sweep.py [--workdir DIR]
"""

import argparse

from _digits import EXTRACTOR, digit_images

from extract import get_extractor, read_index
from pipelines.workflows.sweep import run_sweep


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    digit_images(args.workdir)
    index = read_index(f"{args.workdir}/digits")
    config = {k: v for k, v in EXTRACTOR.items() if k != "model"}
    result = run_sweep(index, get_extractor("vgg16", **config), ["block3_pool", "block4_pool", "block5_pool"],
                       f"{args.workdir}/sweep", cv=3)
    print(result.table.to_string(index=False))
    print(result.csv)


if __name__ == "__main__":
    main()
