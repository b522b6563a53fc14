"""Generation: a conversation in, the assistant's next turn out (dialogue, instructions, a domain chatbot).

Examples are conversations of {role, content} messages ending with the assistant's turn; training learns every
assistant turn. Evaluation generates an answer to each test conversation and to the probe prompts, scored against the
reference with BLEU and ROUGE-L, with the references' perplexity beside them.
"""

from __future__ import annotations

import json
import time

from finetune import kinds
from finetune.data.dialogues import build_dialogues
from finetune.data.splits import split_conversations
from finetune.param_schemas import GenerationTask
from finetune.tables import cell, metrics_table, table
from finetune.text.chat import conversation_prompt_ids, encode_conversation, last_response_only


def answer_conversations(model, tokenizer, conversations: list[list[dict]], prompt, max_length: int, batch_size: int,
                         max_new_tokens: int, no_repeat_ngram_size: int, desc: str = "generating",
                         on_batch=None) -> list[str]:
    """Greedy answers to conversations that end with a user turn, formatted as in training (`prompt`: its system
    message and chat format)."""
    from finetune.evaluate.generation import generate

    ids = [conversation_prompt_ids(tokenizer, c, prompt.system, prompt.chat_template, max_length)
           for c in conversations]
    return generate(model, tokenizer, ids, batch_size, max_new_tokens, desc=desc,
                    no_repeat_ngram_size=no_repeat_ngram_size, on_batch=on_batch)


class Generation(kinds.TaskKind):
    name = "generation"
    entry = GenerationTask
    hub_tag = "text-generation"
    models = ("base", "finetuned")
    metrics = (("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("perplexity", "perplexity"), ("distinct_1", "distinct-1"),
               ("distinct_2", "distinct-2"), ("repeated_sentence_rate", "repeats a sentence"))
    metrics_note = ("BLEU (sacrebleu, 0-100) and ROUGE-L F1 (rouge-score, 0-1) of greedy answers against the test "
                    "references; perplexity of the reference answers (lower is better); distinct-n: share of unique "
                    "word n-grams; repeats a sentence: share of answers that say a sentence twice.")
    predict_fields = ("answer",)
    can_chat = True

    def examples(self, table, origin, data):
        return build_dialogues(table, origin, data)

    def split(self, examples, split, caps):
        return split_conversations(examples, split.validation_fraction, split.test_fraction, caps, split.seed), {}

    def encode(self, tokenizer, rows, task, labels=None):
        return [encode_conversation(tokenizer, row["messages"], task.prompt.system, task.prompt.chat_template,
                                    task.train.max_length) for row in rows]

    def evaluate(self, trained_folder, load_base, tokenizer, train_rows, test_rows, task, batch_size, evaluate,
                 baseline, clock=None):
        """Both models answer every test prompt and every probe; text metrics and the perplexity of the references."""
        import pandas as pd

        from finetune.evaluate.generation import perplexity
        from finetune.evaluate.metrics import generation_metrics, rouge_l_per_answer
        from finetune.model.methods import models_side_by_side

        prompt, settings, max_length = task.prompt, task.evaluate, task.train.max_length
        encoded = [last_response_only(encode_conversation(tokenizer, row["messages"], prompt.system,
                                                          prompt.chat_template, max_length)) for row in test_rows]
        # Prompts are cut to max_length on their own: a long reference must not crowd its prompt out.
        conversations = ([row["messages"][:-1] for row in test_rows]
                         + [[{"role": "user", "content": p}] for p in settings.probes])
        references = [row["messages"][-1]["content"] for row in test_rows]
        results, answers = {}, {}
        n = len(test_rows)
        clock, start = {} if clock is None else clock, time.perf_counter()
        for name, model in models_side_by_side(trained_folder, load_base):
            answers[name] = answer_conversations(model, tokenizer, conversations, prompt, max_length, batch_size,
                                                 settings.max_new_tokens, settings.no_repeat_ngram_size,
                                                 desc=f"{name}: generating")
            ppl = perplexity(model, tokenizer, encoded, batch_size, desc=f"{name}: perplexity")
            del model  # a whole base model is freed before the fine-tuned one loads
            results[name] = {**generation_metrics(answers[name][:n], references), "perplexity": round(ppl, 4)}
            clock[name], start = round(time.perf_counter() - start, 1), time.perf_counter()
        predictions = pd.DataFrame({
            "id": [row["id"] for row in test_rows],
            "prompt": [next(m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user")
                       for row in test_rows],
            "reference": references,
            **{name: answers[name][:n] for name in self.models},
            **{f"{name}_rouge_l": rouge_l_per_answer(answers[name][:n], references) for name in self.models},
        })
        probe_answers = [{"prompt": p, **{name: answers[name][n + i] for name in self.models}}
                         for i, p in enumerate(settings.probes)]
        return results, {"metrics": results, "probes": probe_answers}, predictions

    def test_answers(self, run, model, tokenizer, test_rows, batch_size, memory_gib, task):
        from finetune.evaluate.metrics import generation_metrics

        answers = answer_conversations(model, tokenizer, [row["messages"][:-1] for row in test_rows], run.prompt,
                                       run.max_length, batch_size, task.evaluate.max_new_tokens,
                                       task.evaluate.no_repeat_ngram_size)
        references = [row["messages"][-1]["content"] for row in test_rows]
        quality = generation_metrics(answers, references)
        return answers, {k: quality[k] for k in ("bleu", "rouge_l")}

    def predict(self, run, model, tokenizer, texts, options, on_batch):
        """An answer to each text (a user turn), or to each conversation (messages ending with a user turn)."""
        conversations = [[{"role": "user", "content": t}] if isinstance(t, str) else t for t in texts]
        answers = answer_conversations(model, tokenizer, conversations, run.prompt,
                                       run.max_length, options["batch_size"], options["max_new_tokens"],
                                       options["no_repeat_ngram_size"], on_batch=on_batch)
        return [{"answer": a} for a in answers]

    def report_sections(self, evaluation, details, predictions, names, image_dir, samples):
        probes = details["probes"]
        probes_md = table(["prompt", "base model", "fine-tuned"],
                          [[cell(p["prompt"]), cell(p["base"]), cell(p["finetuned"])] for p in probes])
        rows = predictions.sample(n=min(samples, len(predictions)), random_state=0).sort_index()
        answers_md = table(["last user turn", "reference", "base model", "fine-tuned"],
                           [[cell(r.prompt), cell(r.reference), cell(r.base), cell(r.finetuned)]
                            for r in rows.itertuples()])
        return ["## Test results", "", metrics_table(evaluation, self.metrics, names), "", self.metrics_note, "",
                "## Probe prompts", "", probes_md if probes else "(none in params)", "",
                "## Sample test answers", "", answers_md, ""]

    def review_sections(self, base, old, new, images, link):
        before = {p["prompt"]: p["finetuned"] for p in old["details"].get("probes", [])}
        rows = [[cell(p["prompt"]), cell(before.get(p["prompt"], "(not asked)")), cell(p["finetuned"])]
                for p in new["details"].get("probes", [])]
        return ["## Probe answers", "", table(["prompt", f"fine-tuned at `{base}`", "fine-tuned now"], rows), ""]

    def card_job(self, run_info):
        return "write the next assistant turn of a conversation"

    def card_what_it_does(self, run_info):
        prompt = run_info["task"]["prompt"]
        system = prompt["system"]
        fmt = ("the tokenizer's chat template (saved with the model), or, if it has none, the plain format"
               if prompt["chat_template"] == "auto" else "the plain format")
        return ["## What it does", "",
                f"It answers the last user turn of a conversation. Conversations are written in {fmt}:", "",
                "```text", "{system message, if any}", "", "### Human: {user turn}",
                "### Assistant: {assistant turn}{end-of-sequence token}", "```", "",
                f"System message it was trained with: {json.dumps(system) if system else '(none)'}.", ""]

    def card_code(self, run_info, example):
        prompt = run_info["task"]["prompt"]
        plain = ['ids = tokenizer(f"{SYSTEM}\\n\\n")["input_ids"] if SYSTEM else []  # each part on its own, as in training',
                 'ids += tokenizer(f"### Human: {messages[-1][\'content\']}\\n### Assistant:", add_special_tokens=not ids)["input_ids"]',
                 'inputs = BatchEncoding({"input_ids": [ids], "attention_mask": [[1] * len(ids)]}, tensor_type="pt")']
        lines = ["from transformers import BatchEncoding  # the plain format's prompt", "",
                 f"SYSTEM = {json.dumps(prompt['system'], ensure_ascii=False)}  # the system message it was trained with",
                 "messages = ([{\"role\": \"system\", \"content\": SYSTEM}] if SYSTEM else []) + "
                 f"[{{\"role\": \"user\", \"content\": {json.dumps(example, ensure_ascii=False)}}}]"]
        if prompt["chat_template"] == "auto":
            lines += ["if tokenizer.chat_template:",
                      '    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",'
                      " return_dict=True)",
                      "else:  # the plain format", *(f"    {line}" for line in plain)]
        else:
            lines += ["# the plain format", *plain]
        return lines + ["output = model.generate(**inputs.to(model.device), max_new_tokens=64, do_sample=False)",
                        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']

    def card_gguf_command(self, run_info, example):
        prompt = run_info["task"]["prompt"]
        system = prompt["system"]
        if prompt["chat_template"] == "plain":
            plain = (f"{system}\n\n" if system else "") + f"### Human: {example}\n### Assistant:"
            return f"llama-cli -m MODEL.gguf -p {json.dumps(plain)} -n 64 --temp 0"
        # conversation mode, with the chat template the converter embedded
        return "llama-cli -m MODEL.gguf -cnv" + (f" -sys {json.dumps(system)}" if system else "")

    def card_limits(self, run_info):
        return ["- It can write false, biased or unsafe text with confidence; review its answers before acting on them."]


kinds.register(Generation())
