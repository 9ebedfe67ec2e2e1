"""scikit-learn composition: `ImageFeatureExtractor` (`transformers`), a transformer from images to frozen-CNN
features that reaches the path-keyed feature cache."""
