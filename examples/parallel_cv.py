"""cross_val_score with n_jobs=2: each worker unpickles the pipeline and rebuilds the Keras model itself;
both share the feature cache file through its lock.

    python examples/parallel_cv.py [--workdir DIR]
"""

import argparse

from _digits import EXTRACTOR, digit_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines import ImageFeatureExtractor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    paths, y = digit_images(args.workdir)
    features = ImageFeatureExtractor(**EXTRACTOR, cache_dir=f"{args.workdir}/cache")
    model = Pipeline([("features", features), ("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    scores = cross_val_score(model, paths, y, cv=3, n_jobs=2)
    info = features.fit(paths).cache_info()  # the file's counters (hits are counted in the process that read them)
    print(f"CV accuracy {scores.mean():.3f} ± {scores.std():.3f}; cache holds {info.n_rows} rows for {len(paths)} "
          f"images, {info.n_extracted} extracted (an image both workers miss at the same time is extracted by each)")


if __name__ == "__main__":
    main()
