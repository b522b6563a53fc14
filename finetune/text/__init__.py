"""Text: prompts and chat formats as token ids (shared by training, evaluation and prediction)."""
