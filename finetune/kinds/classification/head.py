"""A classification head: a linear layer on the prompt's last token gives every label a score (finetune/model/head.py),
trained with the adapter or with every weight. One forward pass a text, whatever the number of labels; the model
cannot write text any more, and its answer is always one of the labels."""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm.auto import tqdm

from finetune.errors import PipelineError
from finetune.kinds.classification.objective import Objective
from finetune.text.prompts import prompt_ids, render_prompt


def text_ids(tokenizer, template: str, text: str, max_length: int) -> list[int]:
    """A text's prompt as token ids, cut to its last `max_length` (the head reads the prompt's end)."""
    return prompt_ids(tokenizer, render_prompt(template, text))[-max_length:]


class Head(Objective):
    name = "head"
    has_head = True
    auto_class = "AutoModelForSequenceClassification"

    def encode(self, tokenizer, rows, task, labels):
        number = {label: i for i, label in enumerate(labels)}
        unknown = sorted({row["label"] for row in rows} - set(number))
        if unknown:
            raise PipelineError(f"labels {unknown[:3]} are not among the training split's, so the head has no output "
                                "for them; raise the task's split.max_train or drop them (data.drop_labels)")
        examples = [{"input_ids": text_ids(tokenizer, task.prompt.template, row["text"], task.train.max_length),
                     "label": number[row["label"]]} for row in rows]
        ends_in_pad = next((row for row, ex in zip(rows, examples) if ex["input_ids"][-1] == tokenizer.pad_token_id),
                           None)
        if ends_in_pad is not None:
            raise PipelineError(f"tasks.{task.name}.prompt.template: the prompt of example {ends_in_pad['id']} ends in "
                                "the pad token, where the head cannot find the text's end; put text after {text} in "
                                "the template (e.g. '\\nLabel:')")
        return examples

    def head(self, labels, tokenizer):
        from finetune.model.head import head_config

        return head_config(labels, tokenizer)

    def side_by_side(self, folder, load_base, labels, tokenizer):
        from finetune.model.methods import load_trained

        base = load_base()
        yield "base", base
        del base
        yield "finetuned", load_trained(folder, lambda: load_base(head=self.head(labels, tokenizer)))

    def scores(self, model, tokenizer, texts, labels, prompt, max_length, batch_size, memory_gib, desc="scoring",
               on_batch=None):
        """Log-probabilities of the labels from one forward pass a text, in batches of similar length (`memory_gib`
        does not apply: a pass holds one row of label scores a text)."""
        from finetune.model.head import labels_of
        from finetune.train import distributed
        from finetune.train.batching import any_length_attention, length_batches, right_pad

        if labels_of(model) != list(labels):
            raise PipelineError(f"the model's head has the labels {labels_of(model)[:5]}..., not the run's; retrain it "
                                "(`dvc repro train_qlora`)")
        encoded = [text_ids(tokenizer, prompt.template, t, max_length) for t in texts]
        batches = length_batches([len(e) for e in encoded], batch_size)
        model.eval()

        @torch.no_grad()
        @any_length_attention()
        def score(idx: list[int]) -> np.ndarray:
            ids, mask = right_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            if on_batch is not None:
                on_batch(len(idx))
            return torch.log_softmax(logits.float(), dim=-1).double().cpu().numpy()

        bar = lambda ks: tqdm(ks, desc=desc, unit="batch", disable=on_batch is not None or not distributed.is_main())  # noqa: E731
        scores = np.zeros((len(texts), len(labels)), dtype=np.float64)
        for idx, batch_scores in zip(batches, distributed.map_batches(score, batches, bar)):
            scores[idx] = batch_scores
        return scores

    def card_what_it_does(self, prompt, field):
        return [f"It reads a prompt made from this template, with `{{text}}` replaced by the input{field}, and its "
                "classification head scores every label at the prompt's last token (one forward pass a text):", "",
                "```text", prompt["template"], "```", ""]

    def card_code(self, run_info, example):
        prompt = run_info["task"]["prompt"]
        return [
            "import torch",
            "",
            f"TEMPLATE = {json.dumps(prompt['template'])}",
            "",
            "",
            "@torch.no_grad()",
            "def label_probabilities(text: str) -> dict[str, float]:",
            '    """Probability of each label, from the head at the prompt\'s last token, as the evaluation scored them."""',
            "    inputs = tokenizer(TEMPLATE.replace(\"{text}\", text), return_tensors=\"pt\").to(model.device)",
            "    probabilities = model(**inputs).logits[0].float().softmax(-1)",
            "    return {model.config.id2label[i]: p.item() for i, p in enumerate(probabilities)}",
            "",
            "",
            f"probabilities = label_probabilities({json.dumps(example, ensure_ascii=False)})",
            "print(max(probabilities, key=probabilities.get))",
        ]
