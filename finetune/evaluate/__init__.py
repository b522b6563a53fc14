"""Evaluation on the test split: label scoring, generation, metrics, the classic baseline, models side by side."""
