"""scikit-learn conformance of KerasMLPClassifier (`parametrize_with_checks`)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from classify import KerasMLPClassifier

# Small and quick, yet good enough for the score thresholds of check_classifiers_train and
# check_class_weight_classifiers: one epoch at a higher rate gives >= 0.91 training accuracy on
# check_classifiers_train's blobs where 0.83 is needed, and both checks pass with random_state 0 to 4 (the checks
# use 0); a fit's cost is mostly Keras's tracing and the early-stopping pass, so each epoch saved counts. Early
# stopping stays on (the default): its hold-out runs under every input the checks feed. Seeded, so the idempotence
# and container-invariance checks compare two identical fits.
CHECKED = KerasMLPClassifier(hidden_layer_sizes=(8,), epochs=1, learning_rate=0.1, random_state=0)

EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "minibatch training: repeating a sample changes the batches and steps, weighting it does not"
    ),
}


@parametrize_with_checks([CHECKED], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
