#!/usr/bin/env python3
"""Reference prompts for llava-pipe's Jinja renderer (coordinator/jinja.cpp), from transformers.

Run from the project root (no network, no GPU needed; transformers 5.x, the machine that has it):
    python3 tests/gpu/make_chat_template_refs.py tests/data/chat_template_refs.json
Renders four chat templates (llava-1.5's hub template, a llava-interleave-style one, a
Vicuna-style one and a Mistral-style one, written below) with `apply_chat_template` over
multi-turn, multi-image conversations, with and without the generation prompt, and writes
(template, messages, add_generation_prompt, expected text or expected error) as JSON.
tests/coordinator/jinja_test.cpp renders the same cases and compares.
"""
import json
import os
import sys

import transformers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "data", "tiny-llava")  # bos "<s>", eos "</s>"

# llava-hf/llava-1.5-7b-hf's chat_template.json: images first, then text, roles upper-cased.
LLAVA_15 = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-interleave-style (ChatML): images where their parts are, string or list content.
INTERLEAVE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Vicuna-style, written over several lines: exercises trim_blocks / lstrip_blocks, `~`,
# attribute access, `trim`, conditional expressions and loop.first / loop.last.
VICUNA = """{% for message in messages %}
    {% if message['role'] == 'system' %}
{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}{{ '\\n\\n' }}
    {% elif message['role'] == 'user' %}
{{ 'USER: ' }}{% for part in message['content'] %}{% if part.type == 'image' %}{{ '<image>\\n' }}{% else %}{{ part.text | trim }}{% if not loop.last %}{{ ' ' }}{% endif %}{% endif %}{% endfor %}{{ ' ' }}
    {% else %}
{{ 'ASSISTANT: ' ~ message['content'][0]['text'] ~ eos_token }}{% if not loop.last %}{{ '\\n' }}{% endif %}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"""

# Mistral-style ([INST]): alternation enforced with raise_exception, bos/eos tokens.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] | trim }}{% if not loop.last %}{{ ' ' }}{% endif %}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)


def text(t):
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}

CONVERSATIONS = {
    "one_image": [{"role": "user", "content": [IMAGE, text("What is shown here?")]}],
    "multi_turn_multi_image": [
        {"role": "user", "content": [IMAGE, IMAGE, text("Compare these two pictures.")]},
        {"role": "assistant", "content": [text("The first is red; the second is blue.")]},
        {"role": "user", "content": [text("And this one?"), IMAGE]},
    ],
    "interleaved_text_and_images": [
        {"role": "user", "content": [text("Left:"), IMAGE, text(" right:"), IMAGE, text(" differ how?")]},
    ],
    "system_and_text_only": [
        {"role": "system", "content": [text("You are a careful assistant.")]},
        {"role": "user", "content": [text("  Hello there  ")]},
        {"role": "assistant", "content": [text("Hi! How can I help?")]},
        {"role": "user", "content": [IMAGE, text("Describe it, in \"quotes\" & <tags>.")]},
    ],
    "string_contents": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Sky colour?"},
    ],
    "not_alternating": [
        {"role": "user", "content": [text("one")]},
        {"role": "user", "content": [text("two")]},
    ],
}

# Which conversations each template is written for (a template may assume list contents).
CASES = [
    ("llava-1.5", LLAVA_15, ["one_image", "multi_turn_multi_image", "interleaved_text_and_images",
                             "system_and_text_only"]),
    ("llava-interleave", INTERLEAVE, ["one_image", "multi_turn_multi_image",
                                      "interleaved_text_and_images", "system_and_text_only",
                                      "string_contents"]),
    ("vicuna", VICUNA, ["one_image", "multi_turn_multi_image", "interleaved_text_and_images",
                        "system_and_text_only"]),
    ("mistral", MISTRAL, ["one_image", "multi_turn_multi_image", "interleaved_text_and_images",
                          "not_alternating"]),
]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_chat_template_refs.py OUT.json")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    cases = []
    for name, template, conversation_names in CASES:
        for conversation in conversation_names:
            messages = CONVERSATIONS[conversation]
            for add_generation_prompt in (True, False):
                case = {
                    "name": f"{name}/{conversation}/{'gen' if add_generation_prompt else 'nogen'}",
                    "template": template,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                }
                try:
                    case["expected"] = tokenizer.apply_chat_template(
                        messages, chat_template=template, tokenize=False,
                        add_generation_prompt=add_generation_prompt)
                except Exception as e:  # raise_exception(...): the renderer must refuse alike
                    case["error"] = str(e)
                cases.append(case)
    out = {
        "generated_by": f"tests/gpu/make_chat_template_refs.py, transformers {transformers.__version__}",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "cases": cases,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
