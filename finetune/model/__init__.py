"""The base model and adapters: loading, quantization, the embedded default, how each training method holds them."""
