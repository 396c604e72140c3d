#!/usr/bin/env python3
"""Renders every chat template under CHAT_DIR/templates with every case of CHAT_DIR/cases.json,
using Jinja2 configured exactly as HF transformers' apply_chat_template configures it
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
strftime_now, transformers' tojson, tools=None and documents=None unless the case sets them).

Writes OUT.json: {template_name: [{"name": case, "output": text} or {"name": case, "error": msg}]}.
Needs Debian's python3-jinja2 (run with /usr/bin/python3). Usage: render_chat.py CHAT_DIR OUT.json
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides Jinja's tojson (which escapes HTML characters) with this.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: render_chat.py CHAT_DIR OUT.json")
    chat_dir, out_path = sys.argv[1], sys.argv[2]
    with open(os.path.join(chat_dir, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    env = environment()
    results = {}
    tdir = os.path.join(chat_dir, "templates")
    for fname in sorted(os.listdir(tdir)):
        if not fname.endswith(".jinja"):
            continue
        with open(os.path.join(tdir, fname), encoding="utf-8", newline="") as f:
            template = env.from_string(f.read())
        rendered = []
        for case in cases:
            variables = {"messages": case["messages"], "tools": None, "documents": None,
                         "add_generation_prompt": case["add_generation_prompt"],
                         "bos_token": case["bos_token"], "eos_token": case["eos_token"]}
            variables.update(case.get("extra", {}))
            try:
                rendered.append({"name": case["name"], "output": template.render(**variables)})
            except Exception as e:  # noqa: BLE001 - any template error is a result to compare
                rendered.append({"name": case["name"], "error": f"{type(e).__name__}: {e}"})
        results[fname[: -len(".jinja")]] = rendered
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"rendered {len(results)} templates x {len(cases)} cases with Jinja2 {jinja2.__version__} into {out_path}")


if __name__ == "__main__":
    main()
