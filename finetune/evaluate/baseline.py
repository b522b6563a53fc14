"""The classic baseline every LLM result is compared against: TF-IDF + logistic regression."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline

from finetune.param_schemas import BaselineParams


def fit_predict(train_texts: list[str], train_labels: list[str], test_texts: list[str],
                params: BaselineParams) -> list[str]:
    """Fit on the training split and predict the test split."""
    features = [("words", TfidfVectorizer(ngram_range=(1, params.ngram_max), sublinear_tf=True))]
    if params.char_ngrams:
        features.append(("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)))
    model = make_pipeline(FeatureUnion(features), LogisticRegression(C=params.C, max_iter=2000))
    model.fit(train_texts, train_labels)
    return list(model.predict(test_texts))
