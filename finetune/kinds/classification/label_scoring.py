"""Label scoring: the model learns to write the label after the prompt; a text's label is the one whose tokens are
likeliest after the prompt (finetune/evaluate/scoring.py), so an answer is always one of the labels. Its cost grows
with the number of labels; the seeds classified this way."""

from __future__ import annotations

import json

from finetune.kinds.classification.objective import Objective
from finetune.param_schemas import Task
from finetune.text.prompts import answer_ids, check_room, encode_example, render_prompt


class LabelScoring(Objective):
    name = "label_scoring"
    has_head = False
    auto_class = "AutoModelForCausalLM"

    def encode(self, tokenizer, rows, task, labels):
        max_length = task.train.max_length
        check_room(tokenizer, task.prompt.template, task.prompt.answer_prefix, labels, max_length,
                   f"tasks.{task.name}.train.max_length")
        return [encode_example(tokenizer, render_prompt(task.prompt.template, row["text"]),
                               answer_ids(tokenizer, task.prompt.answer_prefix, row["label"]), max_length)
                for row in rows]

    def side_by_side(self, folder, load_base, labels, tokenizer):
        from finetune.model.methods import models_side_by_side

        yield from models_side_by_side(folder, load_base)

    def scores(self, model, tokenizer, texts, labels, prompt, max_length, batch_size, memory_gib, desc="scoring",
               on_batch=None):
        from finetune.evaluate import scoring

        prompts = [render_prompt(prompt.template, t) for t in texts]
        return scoring.label_scores(model, tokenizer, prompts, labels, prompt.answer_prefix, batch_size, desc=desc,
                                    memory_gib=memory_gib, on_batch=on_batch)

    def classify(self, model, tokenizer, texts, labels, task: Task, batch_size, name, memory_gib):
        """By the task's evaluate.method: label scoring, or greedy generation matched to a label."""
        from finetune.evaluate import scoring

        if task.evaluate.method == "label_scoring":
            return super().classify(model, tokenizer, texts, labels, task, batch_size, name, memory_gib)
        prompts = [render_prompt(task.prompt.template, t) for t in texts]
        answers = scoring.generate_answers(model, tokenizer, prompts, batch_size, task.evaluate.max_new_tokens,
                                           desc=f"{name}: generating")
        return scoring.match_labels(answers, labels)

    def card_what_it_does(self, prompt, field):
        return [f"It reads a prompt made from this template, with `{{text}}` replaced by the input{field}, and answers "
                f"with `answer_prefix` ({json.dumps(prompt['answer_prefix'])}) + one label + the end-of-sequence token:",
                "", "```text", prompt["template"], "```", ""]

    def card_code(self, run_info, example):
        prompt = run_info["task"]["prompt"]
        return [
            "import torch",
            "",
            f"LABELS = {json.dumps(run_info['labels'], ensure_ascii=False)}",
            f"TEMPLATE, ANSWER_PREFIX = {json.dumps(prompt['template'])}, {json.dumps(prompt['answer_prefix'])}",
            "ANSWERS = {label: tokenizer(ANSWER_PREFIX + label, add_special_tokens=False)[\"input_ids\"] for label in LABELS}",
            "if any(a != b and b[:len(a)] == a for a in ANSWERS.values() for b in ANSWERS.values()):",
            "    ANSWERS = {label: ids + [tokenizer.eos_token_id] for label, ids in ANSWERS.items()}  # 'dairy' vs 'dairy eggs'",
            "",
            "",
            "@torch.no_grad()",
            "def label_scores(text: str) -> dict[str, float]:",
            '    """Log-likelihood of each label after the prompt, as the evaluation scored them."""',
            "    prompt = tokenizer(TEMPLATE.replace(\"{text}\", text))[\"input_ids\"]",
            "    scores = {}",
            "    for label, answer in ANSWERS.items():",
            "        logits = model(torch.tensor([prompt + answer], device=model.device)).logits[0, len(prompt) - 1:-1]",
            "        scores[label] = logits.float().log_softmax(-1)[torch.arange(len(answer)), answer].sum().item()",
            "    return scores",
            "",
            "",
            f"scores = label_scores({json.dumps(example, ensure_ascii=False)})",
            "print(max(scores, key=scores.get))",
        ]
