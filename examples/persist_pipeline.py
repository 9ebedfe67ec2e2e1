"""joblib.dump a fitted image pipeline, joblib.load it in a fresh process, and get the same predictions.

    python examples/persist_pipeline.py [--workdir DIR]
"""

import argparse
import subprocess
import sys

import joblib
import numpy as np
from _digits import EXTRACTOR, digit_images
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines import ImageFeatureExtractor

LOAD = "import sys, joblib, numpy as np; np.save(sys.argv[2], joblib.load(sys.argv[1]).predict_proba(sys.argv[3:]))"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    paths, y = digit_images(args.workdir, n=90)
    train, new = paths[:60], paths[60:]
    model = Pipeline([("features", ImageFeatureExtractor(**EXTRACTOR)), ("scale", StandardScaler()),
                      ("clf", LogisticRegression(max_iter=1000))]).fit(train, y[:60])
    path = f"{args.workdir}/pipeline.joblib"
    joblib.dump(model, path)  # no Keras weights inside: the extractor rebuilds its model from its config
    subprocess.run([sys.executable, "-c", LOAD, path, f"{args.workdir}/p.npy", *new], check=True)
    same = np.allclose(np.load(f"{args.workdir}/p.npy"), model.predict_proba(new), atol=1e-6)
    print(f"fresh-process predictions on {len(new)} new images identical: {same}")
    print(path)


if __name__ == "__main__":
    main()
