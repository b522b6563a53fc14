
from finetune.text.prompts import IGNORE_INDEX, answer_ids, encode_example, prompt_ids, render_prompt


def test_labels_are_masked_on_every_prompt_token_and_only_there(tokenizer):
    prompt = render_prompt("Product: {text}\nDepartment:", "Organic Whole Milk")
    answer = answer_ids(tokenizer, " ", "dairy eggs")
    example = encode_example(tokenizer, prompt, answer, max_length=64)

    n_prompt = len(prompt_ids(tokenizer, prompt))
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    tail = example["labels"][n_prompt:]
    assert IGNORE_INDEX not in tail
    assert tail == answer + [tokenizer.eos_token_id]  # the end token is learned, so the model learns to stop
    assert example["input_ids"][n_prompt:] == tail
    assert len(example["input_ids"]) == len(example["labels"]) == len(example["attention_mask"])


def test_long_prompts_lose_their_start_never_the_answer(tokenizer):
    prompt = render_prompt("{text}\nDepartment:", "word " * 200)
    answer = answer_ids(tokenizer, " ", "frozen")
    example = encode_example(tokenizer, prompt, answer, max_length=16)
    assert len(example["input_ids"]) == 16
    assert example["labels"][-len(answer) - 1:] == answer + [tokenizer.eos_token_id]
    assert example["input_ids"][-len(answer) - 2] == prompt_ids(tokenizer, prompt)[-1]
