#!/usr/bin/python3
"""Render Jinja templates as Hugging Face transformers does, for the specs.

    /usr/bin/python3 tests/chat/render.py CASES.json OUT.json

CASES.json: a list of {"template": text, "vars": {...}} or, for chat
templates rendered as tokenizer.apply_chat_template renders them,
{"template": text, "chat": {"messages": [...], "add_generation_prompt": bool,
"special": {"bos_token": ...}, "extra": {...}}}. OUT.json: a list of
{"ok": true, "out": text} or {"ok": false, "error": message}.

The environment is the one transformers builds in
utils/chat_template_utils.py (_compile_jinja_template): an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
loopcontrols extension and a {% generation %} block, tojson as json.dumps
with ensure_ascii=False, raise_exception and strftime_now as globals.
apply_chat_template renders with messages, tools=None, documents=None,
add_generation_prompt, the tokenizer's special tokens and the caller's extra
variables.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


class Generation(Extension):
    """transformers' AssistantTracker, less its bookkeeping: the body as it is."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, case):
    template = env.from_string(case["template"])
    if "chat" in case:
        chat = case["chat"]
        variables = dict(chat.get("special", {}))
        variables.update(chat.get("extra", {}))
        return template.render(messages=chat["messages"], tools=chat.get("tools"), documents=None,
                               add_generation_prompt=chat.get("add_generation_prompt", False),
                               **variables)
    return template.render(**case.get("vars", {}))


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    env = environment()
    results = []
    for case in cases:
        try:
            results.append({"ok": True, "out": render(env, case)})
        except Exception as e:  # every failure is a result the spec compares
            results.append({"ok": False, "error": str(e), "type": type(e).__name__})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
