"""GridSearchCV over the Keras MLP head (epochs x hidden sizes) behind the cached image features.

    python examples/grid_search_mlp.py [--workdir DIR]
"""

import argparse

from _digits import EXTRACTOR, digit_images
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classify import KerasMLPClassifier
from pipelines import ImageFeatureExtractor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    paths, y = digit_images(args.workdir)
    pipe = Pipeline([
        ("features", ImageFeatureExtractor(**EXTRACTOR, cache_dir=f"{args.workdir}/cache")),
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=16)),
        ("clf", KerasMLPClassifier(early_stopping=False, learning_rate=0.01, random_state=0)),
    ])
    grid = {"clf__epochs": [5, 20], "clf__hidden_layer_sizes": [(16,), (64, 16)]}
    search = GridSearchCV(pipe, grid, cv=3).fit(paths, y)
    info = search.best_estimator_.named_steps["features"].cache_info()
    print(f"best {search.best_params_}: CV accuracy {search.best_score_:.3f}")
    print(f"extracted {info.n_extracted} rows for {len(paths)} images; {info.n_hits} cache hits")


if __name__ == "__main__":
    main()
