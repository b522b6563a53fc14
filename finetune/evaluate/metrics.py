"""Metrics, rounded so reruns compare byte for byte: classification from scikit-learn, text from sacrebleu and rouge-score."""

from __future__ import annotations

import re

import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

DIGITS = 4
SENTENCE_END = re.compile(r"[.!?]+(?:\s+|(?=[A-Z])|$)|\n+")  # also ".The": answers that run sentences together


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


def _sentences(text: str) -> list[str]:
    return [s for s in (re.sub(r"\s+", " ", x).strip().casefold() for x in SENTENCE_END.split(text)) if s]


def repeats_a_sentence(text: str) -> bool:
    """True when an answer says the same sentence twice (small models' answers often do)."""
    sentences = _sentences(text)
    return len(sentences) != len(set(sentences))


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all answers (lower-cased words): low means repetitive, generic text."""
    grams = [tuple(words[i:i + n]) for words in (t.casefold().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def generation_metrics(answers: list[str], references: list[str]) -> dict:
    """Corpus BLEU (sacrebleu, 0-100), mean ROUGE-L F1 (rouge-score, 0-1), distinct-1/2, repeated-sentence share."""
    rouge_l = rouge_l_per_answer(answers, references)
    return {
        "bleu": _r(sacrebleu.corpus_bleu(answers, [references]).score),
        "rouge_l": _r(sum(rouge_l) / len(rouge_l)),
        "distinct_1": _r(distinct_n(answers, 1)),
        "distinct_2": _r(distinct_n(answers, 2)),
        "repeated_sentence_rate": _r(sum(map(repeats_a_sentence, answers)) / len(answers)),
        "empty_rate": _r(sum(not a.strip() for a in answers) / len(answers)),
        "mean_words": round(sum(len(a.split()) for a in answers) / len(answers), 2),
    }


def rouge_l_per_answer(answers: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each answer against its reference."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [_r(scorer.score(ref, ans)["rougeL"].fmeasure) for ref, ans in zip(references, answers)]
