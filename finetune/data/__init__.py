"""Data: the sources, the examples and dialogues built from them, and the splits (what prepare and split use)."""
