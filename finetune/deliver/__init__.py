"""Using the trained model: predict, chat, merge, export to GGUF, model card, publish."""
