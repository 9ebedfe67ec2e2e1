"""A ColumnTransformer joining image features (from a path column) with ordinary tabular columns.

    python examples/column_transformer.py [--workdir DIR]
"""

import argparse

import numpy as np
import pandas as pd
from _digits import EXTRACTOR, digit_images
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines import ImageFeatureExtractor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="featurehead-examples")
    args = parser.parse_args()
    paths, y = digit_images(args.workdir)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"path": paths, "ink": rng.normal(size=len(paths)), "scanner": rng.choice(["x", "y"], len(paths))})
    columns = ColumnTransformer([
        ("image", Pipeline([("features", ImageFeatureExtractor(**EXTRACTOR, cache_dir=f"{args.workdir}/cache")),
                            ("scale", StandardScaler())]), ["path"]),
        ("ink", StandardScaler(), ["ink"]),
        ("scanner", OneHotEncoder(), ["scanner"]),
    ])
    model = Pipeline([("columns", columns), ("clf", LogisticRegression(max_iter=1000))])
    scores = cross_val_score(model, frame, y, cv=3)
    print(f"CV accuracy {scores.mean():.3f} ± {scores.std():.3f}")
    names = model.fit(frame, y).named_steps["columns"].get_feature_names_out()
    print(f"{len(names)} columns: {names[0]} ... {names[-3:].tolist()}")


if __name__ == "__main__":
    main()
