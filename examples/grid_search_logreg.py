"""GridSearchCV over a logistic-regression head on image paths: each image is extracted once (see the counters).

    python examples/grid_search_logreg.py [--workdir DIR]
"""

import argparse

from _digits import EXTRACTOR, digit_images
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines import ImageFeatureExtractor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    paths, y = digit_images(args.workdir)
    pipe = Pipeline([
        ("features", ImageFeatureExtractor(**EXTRACTOR, cache_dir=f"{args.workdir}/cache")),
        ("scale", StandardScaler()),
        ("pca", PCA()),
        ("clf", LogisticRegression(max_iter=1000)),
    ])
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0], "pca__n_components": [8, 16]}, cv=3)
    search.fit(paths, y)
    info = search.best_estimator_.named_steps["features"].cache_info()
    print(f"best {search.best_params_}: CV accuracy {search.best_score_:.3f}")
    print(f"{len(paths)} images, {3 * 2 * 3 + 1} fits: extracted {info.n_extracted} rows, "
          f"read {info.n_hits} from the cache {info.path}")


if __name__ == "__main__":
    main()
