"""Template parity: the prompt a model was trained on is byte for byte the prompt it is served with.

For each conversation, three renderings must be identical:
(a) the HF tokenizer's chat template (the merged model's tokenizer, which went into the GGUF),
(b) the ``tokenizer.chat_template`` stored in the exported GGUF, rendered the way llama-cpp-python
    does (its Jinja2ChatFormatter, built as ``Llama`` builds it from the file's metadata),
(c) the exported Modelfile's TEMPLATE and SYSTEM, parsed and applied with Ollama's semantics
    (tests/ollama_semantics.py, ported from Ollama's parser, chat handler and template code).
Stop tokens must agree with the tokenizer's end of sequence, and conversations with a system
message must render exactly as llama.cpp's official Qwen2.5-7B-Instruct template renders them.
"""
from __future__ import annotations

import json

import pytest

from ollama_semantics import ollama_prompt, parse_modelfile, render_go_template
from smm.chat import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, ENDOFTEXT, IM_END, OLLAMA_TEMPLATE, STOP_TOKENS

SYSTEM_DE = "Du bist ein Social-Media-Experte für kleine Unternehmen. Antworte nur mit JSON."
ANSWER_JSON = json.dumps({"post": "Frische Croissants ab 7 Uhr! 🥐", "hashtags": ["#Bäckerei", "#Frühstück"]}, ensure_ascii=False)

CONVERSATIONS = {
    "user_only_en": [
        {"role": "user", "content": "Write an Instagram post for our bakery's new sourdough bread."},
    ],
    "system_user_de": [
        {"role": "system", "content": SYSTEM_DE},
        {"role": "user", "content": "Schreib einen LinkedIn-Post über unsere neue Filiale in München."},
    ],
    "multi_turn_with_system_fr": [
        {"role": "system", "content": "Tu es un expert des réseaux sociaux. Réponds en JSON."},
        {"role": "user", "content": "Propose trois hashtags pour une crêperie à Rennes."},
        {"role": "assistant", "content": '{"hashtags": ["#crêpes", "#Rennes", "#Bretagne"]}'},
        {"role": "user", "content": "Et une variante A/B du slogan « Le goût de la Bretagne » ?"},
    ],
    "multi_turn_no_system_es": [
        {"role": "user", "content": "¿Cuál es la mejor hora para publicar en TikTok?"},
        {"role": "assistant", "content": '{"best_times": ["19:00", "21:00"]}'},
        {"role": "user", "content": "¿Y para una panadería en Sevilla los domingos?"},
        {"role": "assistant", "content": '{"best_times": ["09:30"]}'},
        {"role": "user", "content": "Gracias. Reescribe esto con un tono más cercano: «Abrimos a las 8»."},
    ],
    "emoji_pt": [
        {"role": "user", "content": "Cria um post para o Facebook sobre pastéis de nata 🥧🔥 — promoção só hoje! 🎉"},
    ],
    "cjk": [
        {"role": "system", "content": "你是一名社交媒体营销专家。"},
        {"role": "user", "content": "为我们的东京咖啡店写一条推文。新しいメニュー:抹茶ラテ🍵"},
    ],
    "rtl_flags_zwj": [
        {"role": "user", "content": "اكتب منشوراً لمتجر الحلويات 🇩🇪🇫🇷 للعائلات 👨‍👩‍👧‍👦 و 🏳️‍🌈"},
    ],
    "template_syntax_in_content": [
        {"role": "system", "content": "Ignore {{ .System }} and {% if x %}literal{% endif %} — they are text."},
        {"role": "user", "content": "Rewrite: {{- range .Messages }} <b>{{ end }}</b> {# not a comment #}"},
        {"role": "assistant", "content": ANSWER_JSON},
        {"role": "user", "content": 'Now escape "quotes", back\\slashes and a \\n literal.'},
    ],
    "whitespace_preserved": [
        {"role": "user", "content": "  Leading spaces,\ttabs,\n\n\nblank lines\r\nand CRLF, trailing spaces   \n"},
        {"role": "assistant", "content": "\n  indented answer\n"},
        {"role": "user", "content": "\n"},
    ],
    "multiline_system_markdown": [
        {"role": "system", "content": "Brand voice:\n- friendly\n- short\n\n# Rules\n1. JSON only\n2. No emojis in B2B"},
        {"role": "user", "content": "## Task\nWrite a **LinkedIn** post about #sustainability for a print shop."},
    ],
    "greek_cyrillic": [
        {"role": "user", "content": "Γράψε μια ανάρτηση για το καφενείο μας. Напиши пост для нашей кофейни."},
    ],
    "long_korean_with_system": [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "서울의 작은 꽃집을 위한 인스타그램 게시물을 써 주세요 🌸"},
        {"role": "assistant", "content": '{"post": "봄맞이 튤립 입고! 🌷", "hashtags": ["#꽃집", "#서울"]}'},
        {"role": "user", "content": "이번에는 해시태그만 5개."},
        {"role": "assistant", "content": '{"hashtags": ["#꽃", "#꽃스타그램", "#튤립", "#서울꽃집", "#봄"]}'},
        {"role": "user", "content": "좋아요! 감성 분석도 해 주세요: '배송이 늦었지만 꽃은 예뻐요'"},
    ],
}
WITH_SYSTEM = [name for name, conv in CONVERSATIONS.items() if conv[0]["role"] == "system"]


@pytest.fixture(scope="module")
def renderers(tiny_export, tmp_path_factory):
    """The three renderers, each built from the exported artifacts."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_export.merged_dir)
    llm = Llama(str(tiny_export.gguf), n_ctx=256, verbose=False, vocab_only=True)
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    eos = llm._model.token_get_text(eos_id)
    bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos,
                                    bos_token=bos, stop_token_ids=[eos_id])
    commands = parse_modelfile(tiny_export.modelfile.read_text(encoding="utf-8"))
    return {"tokenizer": tokenizer, "llm": llm, "formatter": formatter, "commands": commands}


def _modelfile(renderers, name: str) -> list[str]:
    return [value for command, value in renderers["commands"] if command == name]


def _hf(renderers, messages, **kwargs) -> str:
    return renderers["tokenizer"].apply_chat_template(messages, tokenize=False, **kwargs)


def _ollama(renderers, messages) -> str:
    (template,), (system,) = _modelfile(renderers, "template"), _modelfile(renderers, "system")
    return ollama_prompt(template, system, messages)


def test_there_are_enough_conversations():
    assert len(CONVERSATIONS) >= 10
    assert 0 < len(WITH_SYSTEM) < len(CONVERSATIONS)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_hf_gguf_and_ollama_prompts_are_identical(renderers, name):
    messages = CONVERSATIONS[name]
    hf = _hf(renderers, messages, add_generation_prompt=True)
    gguf = renderers["formatter"](messages=messages).prompt
    ollama = _ollama(renderers, messages)
    assert hf.encode("utf-8") == gguf.encode("utf-8")
    assert hf.encode("utf-8") == ollama.encode("utf-8")
    assert hf.endswith("<|im_start|>assistant\n")
    for message in messages:  # content reaches the prompt untouched
        assert message["content"] in hf


@pytest.mark.parametrize("name", [n for n in CONVERSATIONS if CONVERSATIONS[n][-1]["role"] == "user" and len(CONVERSATIONS[n]) > 2])
def test_prefilled_assistant_turn_matches(renderers, name):
    """A request ending with a partial assistant message: Ollama continues it; HF's
    continue_final_message renders the same prefix."""
    messages = [*CONVERSATIONS[name], {"role": "assistant", "content": '{"post": "'}]
    assert _hf(renderers, messages, continue_final_message=True) == _ollama(renderers, messages)


def test_prompt_token_ids_agree(renderers):
    """The HF tokenizer and llama.cpp's tokenizer turn the same prompt into the same ids."""
    for messages in CONVERSATIONS.values():
        prompt = _hf(renderers, messages, add_generation_prompt=True)
        hf_ids = renderers["tokenizer"](prompt, add_special_tokens=False)["input_ids"]
        assert renderers["llm"].tokenize(prompt.encode("utf-8"), add_bos=False, special=True) == hf_ids


def test_stop_tokens_agree_with_eos(renderers, tiny_export):
    tokenizer, llm = renderers["tokenizer"], renderers["llm"]
    stops = _modelfile(renderers, "stop")
    assert stops == list(STOP_TOKENS) == [IM_END, ENDOFTEXT]
    assert tokenizer.eos_token == IM_END == renderers["formatter"].eos_token
    assert tokenizer.eos_token in stops
    assert llm.token_eos() == tokenizer.convert_tokens_to_ids(IM_END)
    for stop in stops:  # each stop is one special token, and llama.cpp ends generation on it
        ids = llm.tokenize(stop.encode(), add_bos=False, special=True)
        assert ids == [tokenizer.convert_tokens_to_ids(stop)]
        import llama_cpp

        assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, ids[0])
    assert renderers["formatter"](messages=CONVERSATIONS["user_only_en"]).stop == [IM_END]
    assert tiny_export.manifest["gguf"]["eos_token"] == IM_END


def test_exported_artifacts_carry_the_one_template(renderers):
    assert renderers["llm"].metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert renderers["tokenizer"].chat_template == CHAT_TEMPLATE
    assert _modelfile(renderers, "template") == [OLLAMA_TEMPLATE]
    assert _modelfile(renderers, "system") == [DEFAULT_SYSTEM_PROMPT]


@pytest.fixture(scope="module")
def official_qwen25(tmp_path_factory):
    """llama.cpp's copy of Qwen2.5-7B-Instruct's own chat template, rendered as llama-cpp-python does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from smm.models.tiny import extract_from_sdist

    path = extract_from_sdist("models/templates/Qwen-Qwen2.5-7B-Instruct.jinja", tmp_path_factory.mktemp("qwen") / "qwen25.jinja")
    return Jinja2ChatFormatter(template=path.read_text(encoding="utf-8"), eos_token=IM_END, bos_token="")


@pytest.mark.parametrize("name", WITH_SYSTEM)
def test_matches_llama_cpp_official_qwen25_template(renderers, official_qwen25, name):
    messages = CONVERSATIONS[name]
    assert official_qwen25(messages=messages).prompt == _hf(renderers, messages, add_generation_prompt=True)


# ---- the Ollama re-implementation itself, against expectations written out by hand


def test_go_template_subset_semantics():
    template = '{{- if .A }}a{{ else if eq .B "x" }}b{{ else }}c{{ end -}}  \n {{ range $i, $m := .L }}{{ $i }}={{ $m.V }}{{ if not (eq (len (slice $.L $i)) 1) }},{{ end }}{{ end }}'
    assert render_go_template(template, {"A": "", "B": "x", "L": [{"V": 1}, {"V": "two"}]}) == "b0=1,1=two"
    assert render_go_template(template, {"A": "yes", "B": "", "L": []}) == "a"
    assert render_go_template("{{ and 1 0 }}|{{ and 1 2 }}|{{ ne 1 2 }}", {}) == "0|2|true"
    with pytest.raises(ValueError, match="not in the subset"):
        render_go_template("{{ with .A }}x{{ end }}", {"A": 1})


def test_ollama_semantics_by_hand():
    system = "S"
    assert ollama_prompt(OLLAMA_TEMPLATE, system, [{"role": "user", "content": "hi"}]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # the request's own system message replaces SYSTEM; two are joined by a blank line
    two = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "u"}]
    assert ollama_prompt(OLLAMA_TEMPLATE, system, two).startswith("<|im_start|>system\nA\n\nB<|im_end|>\n<|im_start|>user\nu")


def test_modelfile_parser_by_hand():
    text = '# comment\nFROM ./m.gguf\nTEMPLATE """a\n  {{ .X }}\tb"""\nSYSTEM plain words\nPARAMETER stop "<|im_end|>"\nPARAMETER num_ctx 4096\n'
    assert parse_modelfile(text) == [
        ("model", "./m.gguf"), ("template", "a\n  {{ .X }}\tb"), ("system", "plain words"),
        ("stop", "<|im_end|>"), ("num_ctx", "4096"),
    ]
