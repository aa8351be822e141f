"""The Ollama and OpenAI-compatible clients against a local stub server (Ollama's documented
shapes), and the OpenAI client against llama.cpp's real server on the tiny GGUF."""
from __future__ import annotations

import json
import time

import pytest
from fixtures_llama_server import free_port

from smm.backends import GenerationSettings, generate_all
from smm.backends.ollama import OllamaBackend
from smm.backends.openai_compat import OpenAIBackend
from smm.errors import SmmError

MODEL = "social-media-marketer:latest"
MESSAGES = [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "hello"}]
FAST = GenerationSettings(temperature=0.0, max_tokens=64, seed=7, timeout_s=1.0, retries=2)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr("smm.backends.http.BACKOFF_S", 0.01)


def echo(messages) -> str:
    return json.dumps({"echo": messages[-1]["content"]})


def ollama(server, model="social-media-marketer", settings=FAST, concurrency=4) -> OllamaBackend:
    return OllamaBackend(server.url, model, settings, concurrency)


# ---- Ollama -------------------------------------------------------------------------------------

def test_ollama_chat_request_and_reply(stub_server):
    server = stub_server({MODEL: echo})
    gen = ollama(server).generate(MESSAGES)
    assert gen.error is None and gen.text == '{"echo": "hello"}'
    assert gen.output_tokens == 2 and gen.tokens_per_s == pytest.approx(4.0)  # eval_count / eval_duration
    body = server.chat_requests()[0]["body"]
    assert body == {"model": "social-media-marketer", "messages": MESSAGES, "stream": False,
                    "options": {"temperature": 0.0, "seed": 7, "num_predict": 64}}
    assert "format" not in body  # the model's own JSON skill is measured


def test_ollama_sends_a_repeat_penalty_only_when_one_is_set(stub_server):
    from dataclasses import replace

    server = stub_server({MODEL: echo})
    ollama(server, settings=replace(FAST, repeat_penalty=1.1)).generate(MESSAGES)
    assert server.chat_requests()[0]["body"]["options"] == {"temperature": 0.0, "seed": 7, "num_predict": 64, "repeat_penalty": 1.1}


def test_ollama_model_name_with_or_without_tag(stub_server):
    server = stub_server({MODEL: echo, "qwen2.5:7b": echo})
    assert ollama(server, "social-media-marketer:latest").label == "ollama:social-media-marketer:latest"
    ollama(server, "qwen2.5:7b")
    with pytest.raises(SmmError) as err:
        ollama(server, "qwen2.5")
    assert "model 'qwen2.5' is not on the Ollama server" in str(err.value)
    assert "qwen2.5:7b" in str(err.value) and "ollama list" in str(err.value) and "ollama create qwen2.5 -f output/gguf/Modelfile" in str(err.value)


def test_ollama_server_down_is_one_line_with_hint():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(SmmError) as err:
        OllamaBackend(url, "m", GenerationSettings(retries=1, timeout_s=2))
    message = str(err.value)
    assert message.startswith(f"cannot reach {url}: connection failed")
    assert "after 2 attempts" in message and "`ollama serve`" in message and "\n" not in message
    assert time.monotonic() - start < 5


def test_ollama_not_an_ollama_server(stub_server):
    server = stub_server({MODEL: echo})
    with pytest.raises(SmmError, match="does not answer like Ollama .*use eval.backend=openai"):
        OllamaBackend(server.url + "/v1", "m", FAST)


def test_ollama_timeout_is_a_failed_case_after_the_retries(stub_server):
    server = stub_server({MODEL: echo})
    server.script = ["hang", "hang"]
    server.hang_s = 1.5
    backend = ollama(server, settings=GenerationSettings(timeout_s=0.3, retries=1))
    gen = backend.generate(MESSAGES)
    assert gen.text is None and gen.error == "no answer within 0.3 s (2 attempts)"
    assert len(server.chat_requests()) == 2


def test_ollama_5xx_then_ok_is_retried(stub_server):
    server = stub_server({MODEL: echo})
    server.script = [500, 500]
    gen = ollama(server).generate(MESSAGES)
    assert gen.error is None and gen.text == '{"echo": "hello"}'
    assert len(server.chat_requests()) == 3


def test_ollama_5xx_until_retries_run_out(stub_server):
    server = stub_server({MODEL: echo})
    server.script = [500, 500, 500]
    gen = ollama(server).generate(MESSAGES)
    assert gen.error == "HTTP 500: model runner has unexpectedly stopped (3 attempts)"


@pytest.mark.parametrize("behaviour,reason", [
    ("malformed", "malformed reply from Ollama (no message.content): '<html>proxy error</html>'"),
    ("no_content", "malformed reply from Ollama (no message.content)"),
])
def test_ollama_malformed_reply_is_a_failed_case(stub_server, behaviour, reason):
    server = stub_server({MODEL: echo})
    server.script = [behaviour]
    gen = ollama(server).generate(MESSAGES)
    assert gen.text is None and gen.error.startswith(reason)
    assert len(server.chat_requests()) == 1  # not retried


def test_ollama_model_removed_during_the_run(stub_server):
    server = stub_server({MODEL: echo})
    backend = ollama(server)
    del server.answers[MODEL]
    with pytest.raises(SmmError, match="model 'social-media-marketer' is not on the Ollama server"):
        backend.generate(MESSAGES)


def test_requests_run_concurrently(stub_server):
    server = stub_server({MODEL: echo}, delay_s=0.2)
    backend = ollama(server, concurrency=4)
    start = time.perf_counter()
    gens = generate_all(backend, [MESSAGES] * 8)
    elapsed = time.perf_counter() - start
    assert [g.text for g in gens] == ['{"echo": "hello"}'] * 8
    assert server.max_in_flight == 4
    assert elapsed < 0.2 * 8 / 2


# ---- OpenAI-compatible --------------------------------------------------------------------------

def test_openai_request_reply_and_api_key(stub_server, monkeypatch):
    server = stub_server({"smm": echo}, api_key="sk-test-secret")
    monkeypatch.setenv("MY_KEY", "sk-test-secret")
    backend = OpenAIBackend(server.url, "smm", FAST, api_key_env="MY_KEY")
    gen = backend.generate(MESSAGES)
    assert gen.error is None and gen.text == '{"echo": "hello"}' and gen.output_tokens == 2
    request = server.chat_requests()[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-secret"
    assert request["body"] == {"model": "smm", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 64,
                               "seed": 7, "stream": False}
    OpenAIBackend(server.url + "/v1/", "smm", FAST, api_key_env="MY_KEY").generate(MESSAGES)  # /v1 given or not
    assert server.chat_requests()[1]["path"] == "/v1/chat/completions"


def test_openai_rejected_key_names_the_variable_not_the_key(stub_server, monkeypatch):
    server = stub_server({"smm": echo}, api_key="sk-right")
    monkeypatch.setenv("MY_KEY", "sk-wrong-secret")
    with pytest.raises(SmmError) as err:
        OpenAIBackend(server.url, "smm", FAST, api_key_env="MY_KEY")
    assert "HTTP 401" in str(err.value) and "$MY_KEY" in str(err.value)
    assert "sk-wrong-secret" not in str(err.value)
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(SmmError, match=r"with no key in \$MY_KEY"):
        OpenAIBackend(server.url, "smm", FAST, api_key_env="MY_KEY")


def test_openai_unknown_model_and_server_down(stub_server):
    server = stub_server({"smm": echo})
    with pytest.raises(SmmError, match=r"model 'other' is not served at .* \(it serves: smm\); set eval.model"):
        OpenAIBackend(server.url, "other", FAST)
    with pytest.raises(SmmError, match="is the server running"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}", "smm", GenerationSettings(retries=0))


def test_openai_malformed_and_retried_replies(stub_server):
    server = stub_server({"smm": echo})
    backend = OpenAIBackend(server.url, "smm", FAST)
    server.script = ["no_content", 500]
    assert backend.generate(MESSAGES).error.startswith("malformed reply (no choices[0].message.content)")
    assert backend.generate(MESSAGES).text == '{"echo": "hello"}'


def test_urls_with_credentials_are_masked_in_messages(stub_server):
    server = stub_server({"smm": echo})
    with_password = server.url.replace("http://", "http://bob:s3cret@")
    with pytest.raises(SmmError) as err:
        OpenAIBackend(with_password, "other", FAST)
    assert "s3cret" not in str(err.value) and "bob:***@" in str(err.value)
    assert OllamaBackend(server.url, "smm", FAST).client.shown_url == server.url


def test_openai_through_ollamas_v1_accepts_the_untagged_name(stub_server):
    server = stub_server({MODEL: echo})  # Ollama's /v1/models lists social-media-marketer:latest
    backend = OpenAIBackend(server.url + "/v1", "social-media-marketer", FAST)
    assert backend.generate(MESSAGES).text == '{"echo": "hello"}'
    with pytest.raises(SmmError, match="it serves: social-media-marketer:latest"):
        OpenAIBackend(server.url + "/v1", "social-media-marketer:v2", FAST)


def test_openai_against_llama_cpp_server(llama_server):
    backend = OpenAIBackend(llama_server.url, llama_server.model, GenerationSettings(max_tokens=16, timeout_s=60))
    gen = backend.generate(MESSAGES)
    assert gen.error is None and isinstance(gen.text, str)
    assert 1 <= gen.output_tokens <= 16 and gen.tokens_per_s > 0
    with pytest.raises(SmmError, match=f"it serves: {llama_server.model}"):
        OpenAIBackend(llama_server.url, "social-media-marketer", FAST)
