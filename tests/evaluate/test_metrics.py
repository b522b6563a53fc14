"""Text metrics: sacrebleu BLEU, rouge-score ROUGE-L, distinct-n and repeated sentences."""

import pytest

from finetune.evaluate.metrics import distinct_n, generation_metrics, repeats_a_sentence


def test_perfect_answers_score_full_marks_and_wrong_ones_do_not():
    refs = ["the cat sat on the mat today", "i like green tea in the morning"]
    perfect = generation_metrics(refs, refs)
    assert perfect["bleu"] == 100.0 and perfect["rouge_l"] == 1.0
    wrong = generation_metrics(["dogs bark loudly", "coffee is hot"], refs)
    assert wrong["bleu"] < 5 and wrong["rouge_l"] == 0.0  # no shared word: only sacrebleu's smoothing, far below 100


def test_repeated_sentences_are_caught_even_without_a_space():
    seed_003 = ("The classic French omelette is made with eggs, milk, salt and pepper."
                "The classic French omelette is made with eggs, milk, salt and pepper.")
    assert repeats_a_sentence(seed_003)
    assert repeats_a_sentence("I'm so excited! I'm so excited!")
    assert not repeats_a_sentence("Pi is about 3.14. It never ends.")


def test_distinct_n_counts_unique_ngrams():
    # exact fractions; approx's default rel=1e-6 absorbs only the float division
    assert distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 2) == 0.0
