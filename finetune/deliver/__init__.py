"""Using the trained model: the commands' predict, chat, merge, model card and publish; the export stage's release
(both merges measured, GGUF files)."""
