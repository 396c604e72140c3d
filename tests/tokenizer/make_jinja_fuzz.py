#!/usr/bin/env python3
"""Random templates over the Jinja subset, rendered by Jinja2 in HF's chat-template environment:
writes tests/data/tokenizer/chat/fuzz.json, [{"template", "context", "output" | "error"}], which
tests/unit/chat_template_fuzz_test.cpp renders with philora and compares. Deterministic.

Usage (needs Debian's python3-jinja2): /usr/bin/python3 make_jinja_fuzz.py OUT.json [N]
"""
import json
import random
import sys
import warnings

warnings.simplefilter("ignore")  # Jinja2's "object is not subscriptable" hints about random code

from render_chat import environment

R = random.Random(20261127)

CONTEXT = {
    "messages": [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi, café 😀"},
        {"role": "assistant", "content": "Hello!\nHow can I help?"},
        {"role": "user", "content": ""},
    ],
    "name": "Ada Lovelace",
    "n": 7,
    "f": 2.5,
    "flag": True,
    "nothing": None,
    "words": ["beta", "Alpha", "gamma", "alpha", "beta"],
    "nums": [3, 1, 2, 10, -4],
    "d": {"k": "v", "a": 1, "z": [1, 2]},
    "add_generation_prompt": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
}

STRINGS = ["'x'", "'a,b,,c'", "'  pad  '", "\"q'uote\"", "'tab\\tnl\\n'", "'héllo'", "''", "'Hello World'", "'user'"]
NAMES = ["name", "n", "f", "flag", "nothing", "words", "nums", "d", "messages", "messages[0]", "name", "words",
         "missing", "ns.count", "ns.text"]
STRINGISH = ["name", "'Hello World'", "words[0]", "messages[1].content", "'  pad  '", "ns.text", "'a,b,,c'"]
# Filters that return generators in Jinja2 (printing one shows an address) are followed by
# `| list`, as templates do; philora returns lists for them.
FILTERS = ["trim", "upper", "lower", "length", "default('dflt')", "join(', ')", "join", "first", "last", "tojson",
           "string", "int", "list", "reverse | list", "capitalize", "title", "replace('a', 'A')", "unique | list",
           "sort", "map(attribute='role') | list", "selectattr('role', 'equalto', 'user') | list",
           "rejectattr('content') | list", "select('odd') | list", "items | list", "dictsort", "count", "abs", "sum",
           "min", "max", "float", "round", "tojson(indent=2)", "indent(2)", "e", "safe", "default(none, true)"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "odd", "even", "mapping", "iterable",
         "sequence", "in ['x', 7]", "eq 7", "divisibleby 2", "boolean", "true", "lower"]
METHODS = ["strip()", "upper()", "split(',')", "split()", "startswith('H')", "endswith('!')", "replace('l', 'L')",
           "title()", "lower()", "items()", "keys()", "values()", "get('k')", "get('nope', 'dflt')", "find('l')",
           "count('a')", "lstrip()", "rstrip('! ')", "capitalize()"]
SUBSCRIPTABLE = ["words", "nums", "name", "messages", "d", "'abcdef'"]
DICT_METHODS = ["items()", "keys()", "values()", "get('k')", "get('nope', 'dflt')"]
SUBSCRIPTS = ["0", "1", "-1", "'role'", "'k'", "1:", ":2", "::-1", "1:3"]
BINOPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "and", "or", "in", "not in"]


def literal():
    c = R.random()
    if c < 0.35:
        return R.choice(STRINGS)
    if c < 0.6:
        return str(R.randint(-3, 12))
    if c < 0.68:
        return R.choice(["0.5", "1.0", "2.25", "1e3"])
    if c < 0.78:
        return R.choice(["true", "false", "none", "True", "None"])
    if c < 0.9:
        return "[" + ", ".join(literal() for _ in range(R.randint(0, 3))) + "]"
    return "{" + ", ".join(f"'{k}': {literal()}" for k in R.sample("abcz", R.randint(0, 3))) + "}"


def atom(depth):
    c = R.random()
    if c < 0.35 or depth > 2:
        return R.choice(NAMES) if R.random() < 0.7 else literal()
    if c < 0.5:
        return R.choice(SUBSCRIPTABLE) + "[" + R.choice(SUBSCRIPTS) + "]"
    if c < 0.6:
        return f"{R.choice(['messages[0]', 'messages[-1]', 'd', 'ns', 'nothing'])}.{R.choice(['role', 'content', 'k', 'a', 'missing', 'count'])}"
    if c < 0.72:
        if R.random() < 0.8:
            return f"{R.choice(STRINGISH)}.{R.choice(METHODS[:6] + METHODS[7:9] + METHODS[14:])}"
        return "d." + R.choice(DICT_METHODS)
    if c < 0.8:
        return f"({expr(depth + 1)})"
    if c < 0.85:
        return f"range({R.randint(0, 4)})"
    return literal()


def expr(depth=0):
    e = atom(depth)
    c = R.random()
    if c < 0.3 and depth < 3:
        e = f"{e} | {R.choice(FILTERS)}"
    elif c < 0.42:
        e = f"{e} is {'not ' if R.random() < 0.3 else ''}{R.choice(TESTS)}"
    elif c < 0.7 and depth < 3:
        e = f"{e} {R.choice(BINOPS)} {atom(depth + 1)}"
    elif c < 0.78 and depth < 2:
        e = f"{atom(depth + 1)} if {expr(depth + 1)} else {atom(depth + 1)}"
    elif c < 0.83:
        e = f"not {e}"
    elif c < 0.86:
        e = f"-{R.choice(['n', 'f', '3', '(n - 10)'])}"
    return e


def ws():
    return R.choice(["", "", " ", "\n", "\n  ", "  ", "\t", "\n\n"])


def tag(body, kind="%"):
    left = R.choice(["", "", "-", "+"]) if kind == "%" else R.choice(["", "", "-"])
    right = R.choice(["", "", "-"]) if kind != "%" else R.choice(["", "", "-", "+"])
    close = "%}" if kind == "%" else "}}"
    return "{" + kind + left + " " + body + " " + right + close


def block(depth=0):
    parts = []
    for _ in range(R.randint(1, 4)):
        c = R.random()
        if c < 0.25:
            parts.append(R.choice(["text", "Hello, ", "[", "]", "a b", "é", "|"]) + ws())
        elif c < 0.5:
            parts.append(tag(expr(), "{") + ws())
        elif c < 0.62 and depth < 2:
            body = block(depth + 1)
            alt = f"{tag('else')}{block(depth + 1)}" if R.random() < 0.4 else ""
            elif_ = f"{tag('elif ' + expr())}{block(depth + 1)}" if R.random() < 0.3 else ""
            parts.append(f"{tag('if ' + expr())}{ws()}{body}{elif_}{alt}{tag('endif')}{ws()}")
        elif c < 0.74 and depth < 2:
            target = R.choice(["m in messages", "w in words", "i in range(3)", "k, v in d.items()", "x in nums",
                               "c in 'abc'", "m in messages if m.content", "w in missing", "x in nums | sort"])
            inner = R.choice(["{{ loop.index }}:", "{{ loop.first }}", "{{ loop.last }}", "{{ loop.length }}",
                              "{{ loop.revindex }}", "{% if loop.index0 == 1 %}{% continue %}{% endif %}",
                              "{% if loop.index > 2 %}{% break %}{% endif %}", "{{ loop.cycle('o', 'e') }}", ""])
            var = target.split(" in ")[0].split(",")[0].strip()
            body = f"{inner}{{{{ {var} }}}}{ws()}{block(depth + 1)}"
            alt = f"{tag('else')}empty" if R.random() < 0.3 else ""
            parts.append(f"{tag('for ' + target)}{ws()}{body}{alt}{tag('endfor')}{ws()}")
        elif c < 0.84:
            target = R.choice(["x", "y", "ns.count", "ns.text"])
            parts.append(f"{tag('set ' + target + ' = ' + expr())}{ws()}")
        elif c < 0.9:
            parts.append("{# a comment #}" + ws())
        elif c < 0.95:
            parts.append(f"{{% set ns = namespace(count=0, text='') %}}{ws()}")
        else:
            parts.append(f"{{% macro mac(a, b='B') %}}<{{{{ a }}}}|{{{{ b }}}}>{{% endmacro %}}{{{{ mac({literal()}) }}}}{ws()}")
    return "".join(parts)


def main():
    out_path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
    env = environment()
    cases = []
    context_json = json.dumps(CONTEXT)
    while len(cases) < n:
        prefix = "{% set ns = namespace(count=0, text='') %}"
        template = prefix + ws() + block() + ws()
        case = {"template": template}
        try:
            # A fresh copy each time: Jinja2's indent filter extends a list given to it in place.
            case["output"] = env.from_string(template).render(**json.loads(context_json))
        except Exception as e:  # noqa: BLE001 - an error is a result to compare
            case["error"] = f"{type(e).__name__}: {e}"
        cases.append(case)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"context": CONTEXT, "cases": cases}, f, ensure_ascii=False, indent=0)
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"wrote {len(cases)} random templates ({errors} raise in Jinja2) to {out_path}")


if __name__ == "__main__":
    main()
