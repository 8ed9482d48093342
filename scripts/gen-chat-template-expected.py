#!/usr/bin/python3
# Renders every chat template in tests/chat/data/templates on every conversation in tests/chat/data/conversations
# with Python's jinja2, configured as Hugging Face transformers configures it for apply_chat_template, and writes
# the results to tests/chat/data/expected. The C++ tests compare our interpreter with these files byte for byte.
#
# Run with Debian's interpreter and python3-jinja2 (apt-get install python3-jinja2):
#     /usr/bin/python3 scripts/gen-chat-template-expected.py
#
# Output per template T and conversation C:
#   T__C.txt          the prompt with add_generation_prompt=True
#   T__C__no_gen.txt  the same with add_generation_prompt=False (the conversations in NO_GENERATION_PROMPT)
#   T__C.error        instead of .txt when rendering fails: "raise_exception\n<message>" for the template's own
#                     raise_exception, "error\n<message>" for any other jinja2 error
#
# It also renders the small feature templates in tests/chat/data/snippets (one construct each: whitespace
# control, scoping, filters, ...) on the system_multi_turn conversation, into snippets/expected/S.txt or S.error.
import datetime
import json
import pathlib
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "chat" / "data"
# strftime_now renders this moment, so the expected files do not depend on the day they were made.
FIXED_NOW = datetime.datetime(2025, 1, 7, 9, 5, 3)
NO_GENERATION_PROMPT = {"multi_turn", "ends_with_assistant"}
SNIPPET_CONVERSATION = "system_multi_turn"
SNIPPET_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


# transformers' tojson: no HTML escaping, no ASCII escaping, and its keyword arguments.
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def environment():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(template, messages, tokens, add_generation_prompt):
    # transformers passes tools and documents as None when the caller gives none.
    return template.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt, **tokens)


def write(path, text):
    path.write_bytes(text.encode("utf-8"))


def render_to(out, stem, template, messages, tokens, add_generation_prompt):
    try:
        text = render(template, messages, tokens, add_generation_prompt)
        write(out / f"{stem}.txt", text)
    except Raised as e:
        write(out / f"{stem}.error", f"raise_exception\n{e}")
    except Exception as e:  # jinja2 errors and Python errors inside the template (e.g. iterating None)
        write(out / f"{stem}.error", f"error\n{e}")


def clear(folder):
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()


def main():
    env = environment()
    tokens = json.loads((DATA / "special_tokens.json").read_text(encoding="utf-8"))
    conversations = {p.stem: json.loads(p.read_text(encoding="utf-8"))
                     for p in sorted((DATA / "conversations").glob("*.json"))}
    out = DATA / "expected"
    clear(out)
    for path in sorted((DATA / "templates").glob("*.jinja")):
        name = path.stem
        if name not in tokens:
            sys.exit(f"{name}: no entry in special_tokens.json")
        template = env.from_string(path.read_text(encoding="utf-8"))
        for conv_name, messages in conversations.items():
            variants = [(True, "")]
            if conv_name in NO_GENERATION_PROMPT:
                variants.append((False, "__no_gen"))
            for add_generation_prompt, suffix in variants:
                render_to(out, f"{name}__{conv_name}{suffix}", template, messages, tokens[name], add_generation_prompt)
    snippets = DATA / "snippets"
    clear(snippets / "expected")
    for path in sorted(snippets.glob("*.jinja")):
        template = env.from_string(path.read_text(encoding="utf-8"))
        render_to(snippets / "expected", path.stem, template, conversations[SNIPPET_CONVERSATION], SNIPPET_TOKENS, True)


if __name__ == "__main__":
    main()
