"""Classification metrics from scikit-learn, rounded so reruns compare byte for byte."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

DIGITS = 4


def _r(x: float) -> float:
    return round(float(x), DIGITS)


def classification_metrics(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, macro- and weighted-F1 and per-class precision/recall/F1 over the allowed labels."""
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": _r(accuracy_score(actual, predicted)),
        "macro_f1": _r(f1_score(actual, predicted, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": _r(f1_score(actual, predicted, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            label: {"precision": _r(p), "recall": _r(r), "f1": _r(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
    }
