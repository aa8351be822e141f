"""The chat format, in one place: Qwen2.5's ChatML.

The same definitions feed the tokenizer's chat template (train), the GGUF's
``tokenizer.chat_template`` metadata and the Ollama Modelfile (export), so the prompt a model is
trained on is byte-for-byte the prompt it is served with.

The Jinja template is Qwen2.5-Instruct's ChatML without tool calling; where a conversation has no
system message it inserts :data:`DEFAULT_SYSTEM_PROMPT`, which the Modelfile's ``SYSTEM`` carries
so that Ollama does the same.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from jinja2.sandbox import ImmutableSandboxedEnvironment

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
STOP_TOKENS = (IM_END, ENDOFTEXT)
# Text shaped like a control token (<|im_start|>, <|endoftext|>, <|fim_pad|>, ...): in a message's
# content it could end the turn or open a new one (a system turn written by an end user).
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")
_NEUTRAL_BAR = "\uff5c"  # FULLWIDTH VERTICAL LINE: looks like "|", never part of a control token


def find_control_token(text: str) -> str | None:
    """The first control-token-like string in ``text`` (e.g. ``<|im_end|>``), or None."""
    found = CONTROL_TOKEN.search(text)
    return found[0] if found else None


def neutralize_control_tokens(text: str) -> str:
    """``text`` with every control-token-like string defused: ``<|im_end|>`` → ``<｜im_end｜>``."""
    return CONTROL_TOKEN.sub(lambda m: m[0].replace("|", _NEUTRAL_BAR), text)

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert social media marketer for small businesses. You write posts, hashtags, "
    "A/B variations, sentiment analyses, posting-time recommendations and brand-voice rewrites in "
    "German, English, French, Spanish and Portuguese, and you answer with JSON only."
)

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Ollama's Go template (the subset of text/template it uses): .System holds the system messages
# (or the Modelfile's SYSTEM when the request has none); .Messages the conversation, in which
# system messages also appear and are skipped here.
OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Sampling defaults written into the Modelfile: low temperature keeps the JSON well-formed.
MODELFILE_PARAMETERS: tuple[tuple[str, object], ...] = (
    ("temperature", 0.3),
    ("top_p", 0.9),
    ("top_k", 40),
    ("repeat_penalty", 1.05),
    ("num_ctx", 4096),
)

_jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_compiled = _jinja.from_string(CHAT_TEMPLATE)


def render(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The prompt string for ``messages``, exactly as the tokenizer's chat template renders it."""
    return _compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt)


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('Modelfile text must not contain """')
    return f'"""{text}"""'


def render_modelfile(gguf: str, model_name: str = "social-media-marketer", system: str = DEFAULT_SYSTEM_PROMPT,
                     repeat_penalty: float | None = None) -> str:
    """An Ollama Modelfile for the GGUF at ``gguf`` (a path relative to the Modelfile); ``repeat_penalty``
    replaces the default one (the value the model was evaluated with)."""
    lines = [
        "# Ollama Modelfile for smm's social-media model (Qwen2.5 ChatML), rendered by smm/chat.py.",
        "# Register it with:",
        f"#   ollama create {model_name} -f Modelfile",
        f"FROM {gguf}",
        "",
        f"TEMPLATE {_quote(OLLAMA_TEMPLATE)}",
        "",
        f"SYSTEM {_quote(system)}",
        "",
    ]
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    chosen = {"repeat_penalty": repeat_penalty} if repeat_penalty is not None else {}
    lines += [f"PARAMETER {name} {chosen.get(name, value)}" for name, value in MODELFILE_PARAMETERS]
    return "\n".join(lines) + "\n"


# The repository's root Modelfile points at the default export, relative to the repository root.
ROOT_MODELFILE_GGUF = "./output/gguf/social-media-marketer-q4_k_m.gguf"
