#!/usr/bin/env python3
"""Writes tests/data/tokenizer/chat/cases.json: the conversations the chat-template test renders.

Hand-written cases (system message or not, several turns, empty content, unicode, text that
looks like template syntax or special tokens, tools for Phi-4-mini) plus seeded random ones.
Deterministic: re-running it rewrites the same file. Usage: make_chat_cases.py OUT.json
"""
import json
import random
import sys

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731

CONTENTS = [
    "Hello!", "", " ", "\n", "  leading and trailing spaces  ", "line one\nline two\n\nline four",
    "Tabs\tand\r\nCRLF", "Unicode: café, naïve, 日本語, 한국어, العربية, עברית, emoji 😀👍🏽 👨‍👩‍👧",
    "Looks like Jinja: {{ messages }} {% if %} {# comment #}", "Special tokens: <|end|> <|user|> <s> </s> <|im_end|>",
    "Quotes ' \" and backslashes \\ \\n", "Code:\n```python\ndef f(x):\n    return x * 2\n```",
    "x" * 500, "What is 2 + 2?", "Thanks, that's all.", "\u00a0non-breaking\u2003spaces\u3000", "ends with newline\n",
]


def hand_written():
    cases = [
        {"name": "single_user", "messages": [U("Hello!")]},
        {"name": "system_user", "messages": [SYSTEM, U("What is the capital of France?")]},
        {"name": "multi_turn", "messages": [SYSTEM, U("Hi"), A("Hello! How can I help?"), U("Tell me a joke."),
                                            A("Why did the chicken cross the road?"), U("Why?")]},
        {"name": "no_system_multi_turn", "messages": [U("a"), A("b"), U("c")]},
        {"name": "ends_with_assistant", "messages": [U("Hi"), A("Hello")]},
        {"name": "empty_contents", "messages": [{"role": "system", "content": ""}, U(""), A(""), U("")]},
        {"name": "empty_conversation", "messages": []},
        {"name": "unicode", "messages": [U(CONTENTS[7]), A("Réponse: ça va ✓")]},
        {"name": "template_lookalike", "messages": [U(CONTENTS[8]), A(CONTENTS[9])]},
        {"name": "whitespace", "messages": [U(CONTENTS[4]), A(CONTENTS[5]), U(CONTENTS[6])]},
        {"name": "quotes_and_code", "messages": [U(CONTENTS[10]), A(CONTENTS[11])]},
        {"name": "long_content", "messages": [U("x" * 2000)]},
        {"name": "system_only", "messages": [SYSTEM]},
        {"name": "other_role", "messages": [U("run it"), {"role": "tool", "content": "42"}, A("The answer is 42.")]},
        {"name": "tools_in_system", "messages": [
            {"role": "system", "content": "You are a helpful assistant with some tools.",
             "tools": "[{\"name\": \"get_weather\", \"description\": \"Weather\", \"parameters\": {\"city\": {\"type\": \"str\"}}}]"},
            U("Weather in Paris?")]},
        {"name": "tools_none", "messages": [{"role": "system", "content": "No tools.", "tools": None}, U("Hi")]},
        {"name": "extra_keys", "messages": [{"role": "user", "content": "Hi", "name": "bob", "id": 7}]},
        {"name": "alternation_broken", "messages": [U("a"), U("b")]},
    ]
    out = []
    for c in cases:
        for agp in (True, False):
            out.append({"name": f"{c['name']}/{'gen' if agp else 'nogen'}", "messages": c["messages"],
                        "add_generation_prompt": agp, "bos_token": "<s>", "eos_token": "<|endoftext|>"})
    return out


def random_cases(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msgs = []
        if rng.random() < 0.5:
            msgs.append({"role": "system", "content": rng.choice(CONTENTS)})
        turns = rng.randint(0, 6)
        alternate = rng.random() < 0.8
        for t in range(turns):
            role = ("user" if t % 2 == 0 else "assistant") if alternate else rng.choice(["user", "assistant", "system"])
            msgs.append({"role": role, "content": rng.choice(CONTENTS)})
        out.append({"name": f"random_{i}", "messages": msgs, "add_generation_prompt": rng.random() < 0.5,
                    "bos_token": rng.choice(["<s>", "<|endoftext|>", ""]),
                    "eos_token": rng.choice(["</s>", "<|endoftext|>", "<|im_end|>", ""])})
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_chat_cases.py OUT.json")
    cases = hand_written() + random_cases(200)
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
