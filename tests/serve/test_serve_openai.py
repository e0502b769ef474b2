"""``sparsifyctl serve --task text-generation``: the CPU export of the tiny random Llama (written by
the exporter) served through the real entry point in a subprocess and spoken to with the
``openai`` client: greedy answers equal ``OnnxCausalLM.generate_ids``, streaming equals not
streaming, stop strings, max_tokens, usage, seeded sampling, OpenAI-shaped refusals,
``/metrics`` counting tokens, concurrent requests, s3:// and bad command lines (exit 2)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from llm.conftest import build_tiny_llama

from .conftest import metric, run_main

NAME = "tiny-chat"
TEMPLATE = (
    "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant:{% endif %}"
)
PROMPT = "the model reads"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the weight keeps"}]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A text-generation run folder (report.json + onnx/, with a chat template) and an export
    folder of the same model whose tokenizer has no chat template."""
    from sparsify_runner.llm.onnx_export import export_onnx
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("openai")
    hf = build_tiny_llama(root / "tiny-llama")
    plain = export_onnx(hf, root / "plain" / "onnx").folder
    tokenizer = AutoTokenizer.from_pretrained(hf)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(hf)
    run = root / "run"
    export_onnx(hf, run / "onnx")
    (run / "report.json").write_text(json.dumps({"experiment": {"name": NAME}}), encoding="utf-8")
    return {"run": run, "plain": plain}


@pytest.fixture(scope="module")
def reference(exports):
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM

    return OnnxCausalLM(exports["run"] / "onnx", threads=1)


@pytest.fixture(scope="module")
def server(exports) -> Iterator[str]:
    """``sparsifyctl serve --task text-generation RUN_DIR`` in a subprocess; its base URL."""
    cmd = [sys.executable, "-c", "from sparsifyctl.cli import main; main()", "serve", "--task"]
    cmd += ["text-generation", str(exports["run"]), "--port", "0", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stderr.readline()
    found = re.search(r"model '(\S+)' on (http://127\.0\.0\.1:\d+)/v1 ", line)
    if not found:
        proc.kill()
        pytest.fail(f"server did not start: {line}{proc.stderr.read()}")
    log: list[str] = []
    drain = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    drain.start()
    assert found.group(1) == NAME  # the experiment's name from report.json
    try:
        yield found.group(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        drain.join(timeout=10)
    assert code == 0, "".join(log)
    assert "Traceback" not in "".join(log), "".join(log)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return _client(server)


def _greedy(reference, ids: list[int], max_new: int) -> tuple[list[int], str]:
    tokens = list(reference.generate_ids(ids, max_new))
    return tokens, reference.tokenizer.decode(tokens, skip_special_tokens=True)


def _chat_ids(reference, messages) -> list[int]:
    text = reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return reference.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def test_completion_greedy_is_generate_ids_with_usage_and_length(client, reference):
    ids = reference.tokenizer(PROMPT)["input_ids"]
    tokens, text = _greedy(reference, ids, 24)
    assert len(tokens) == 24 and not set(tokens) & set(reference.eos_token_ids)  # ends by length
    answer = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    assert answer.choices[0].text == text and answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens == 24
    assert answer.usage.total_tokens == len(ids) + 24
    # token ids as the prompt, several prompts: one choice each
    both = client.completions.create(model=NAME, prompt=[ids, [ids[0]]], max_tokens=5, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == _greedy(reference, ids, 5)[1]
    assert both.choices[1].text == _greedy(reference, [ids[0]], 5)[1]
    assert both.usage.prompt_tokens == len(ids) + 1 and both.usage.completion_tokens == 10


def test_streamed_completion_equals_the_answer(client, reference):
    ids = reference.tokenizer(PROMPT)["input_ids"]
    _, text = _greedy(reference, ids, 24)
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c for c in chunks if c.choices]
    assert len(pieces) > 5  # token by token, not one block
    assert "".join(c.choices[0].text for c in pieces) == text
    assert [c.choices[0].finish_reason for c in pieces][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in pieces[:-1])
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].usage.prompt_tokens == len(ids)


def test_stop_strings_cut_the_text_and_finish_with_stop(client, reference):
    ids = reference.tokenizer(PROMPT)["input_ids"]
    tokens, text = _greedy(reference, ids, 40)
    stop = text[6:10]  # a string the greedy text reaches after a few tokens
    assert stop.strip() and text.find(stop) == 6
    plain = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "zzz"]
    )
    assert plain.choices[0].text == text[:6] and plain.choices[0].finish_reason == "stop"
    assert plain.usage.completion_tokens < 40
    streamed = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == text[:6]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert stop not in "".join(c.choices[0].text for c in chunks)


def test_chat_completion_goes_through_the_chat_template(client, reference):
    ids = _chat_ids(reference, MESSAGES)
    assert ids[0] == reference.tokenizer.bos_token_id  # the template's own bos, none added twice
    _, text = _greedy(reference, ids, 12)
    answer = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == text and answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_completion_tokens=12, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed(client, reference):
    def sample(seed: int, stream: bool = False) -> str:
        answer = client.completions.create(
            model=NAME, prompt=PROMPT, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed, stream=stream
        )
        if stream:
            return "".join(c.choices[0].text for c in answer)
        return answer.choices[0].text

    first = sample(7)
    assert sample(7) == first and sample(7, stream=True) == first
    _, greedy = _greedy(reference, reference.tokenizer(PROMPT)["input_ids"], 24)
    assert len({greedy, *(sample(seed) for seed in range(4))}) > 1  # sampling, not argmax


def test_refusals_have_openais_shape(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="other", prompt=PROMPT, max_tokens=2)
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found" and NAME in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=1000)
    assert "maximum context length is 256 tokens" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=MESSAGES, n=2)
    assert err.value.body["message"] == "n must be 1 (one choice per prompt)"
    missing = requests.post(f"{server}/v1/chat/completions", json={"model": NAME}, timeout=60)
    assert missing.status_code == 400
    assert missing.json() == {
        "error": {
            "message": "messages: Field required",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }
    bad_json = requests.post(
        f"{server}/v1/completions", data="{", headers={"content-type": "application/json"}, timeout=60
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    assert requests.get(f"{server}/v2/health/ready", timeout=60).json() == {"ready": True}


def test_metrics_count_requests_and_tokens(client, server, reference):
    def scrape() -> str:
        return requests.get(f"{server}/metrics", timeout=60).text

    before = scrape()
    client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, temperature=0)
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    prompt = len(reference.tokenizer(PROMPT)["input_ids"])
    assert delta("sparsify_serve_generated_tokens_total", model=NAME) == 5
    assert delta("sparsify_serve_prompt_tokens_total", model=NAME) == prompt
    assert delta("sparsify_serve_time_to_first_token_seconds_count", model=NAME) == 1
    assert delta("sparsify_serve_time_per_output_token_seconds_count", model=NAME) == 4
    assert delta("sparsify_serve_generations_total", model=NAME, finish_reason="length") == 1
    assert delta("sparsify_serve_requests_total", model=NAME, endpoint="/v1/completions", code="200") == 1


def test_concurrent_streams_each_get_their_own_answer(client, reference):
    """Four streams at once (queued, decoded one at a time on the one session): each equals its own
    greedy answer, no pieces of another stream in it."""
    prompts = ["the model reads", "a layer keeps", "our team moves", "each token writes"]
    expected = [_greedy(reference, reference.tokenizer(p)["input_ids"], 16)[1] for p in prompts]

    def stream(prompt: str) -> str:
        chunks = client.completions.create(
            model=NAME, prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(stream, prompts)) == expected


@contextlib.contextmanager
def _in_process(folder: Path) -> Iterator[str]:
    """The same app and uvicorn server in a thread (for the second model)."""
    from sparsify_runner.serve.openai_app import create_openai_app
    from sparsify_runner.serve.openai_engine import TextGenerator, resolve_llm
    from sparsify_runner.serve.server import bind, make_server

    app = create_openai_app(TextGenerator(resolve_llm(str(folder)), threads=1))
    sock = bind("127.0.0.1", 0)
    server = make_server(app, graceful_timeout_s=10)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_chat_without_a_chat_template_is_one_clear_400(exports):
    with _in_process(exports["plain"]) as url:
        client = _client(url)
        name = client.models.list().data[0].id
        assert name == "plain"  # an export folder named onnx/: the folder above it
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2)
        assert "has no chat template" in err.value.body["message"]
        assert "use /v1/completions" in err.value.body["message"]
        assert client.completions.create(model=name, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_s3_run_folder_downloads_only_the_export(exports, s3_bucket, tmp_path):
    from sparsify_runner.serve.openai_engine import TextGenerator, resolve_llm

    run = exports["run"]
    for path in sorted(run.rglob("*")):
        if path.is_file():
            s3_bucket.upload_file(str(path), "models", f"runs/llm1/{path.relative_to(run).as_posix()}")
    s3_bucket.put_object(Bucket="models", Key="runs/llm1/model/model.safetensors", Body=b"not fetched")
    source = resolve_llm("s3://models/runs/llm1")
    assert source.name == NAME and (source.folder / "export.json").is_file()
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert "model.onnx" in cached and "model.safetensors" not in cached
    generator = TextGenerator(source, threads=1)
    assert generator.context == 256 and generator.has_chat_template


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("empty", "has no ONNX export (onnx/export.json)"),
        ("file", "is a file; --task text-generation serves a folder"),
        ("missing", "does not exist"),
    ],
)
def test_bad_model_argument_is_one_line_exit_2(tmp_path, capsys, target, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    code = run_main(["serve", "--task", "text-generation", str(tmp_path / target), "--port", "0"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    if target != "missing":
        assert f"MODEL '{tmp_path / target}'" in lines[0] and "onnx/" in lines[0]  # the argument and the fix


def test_device_cuda_is_refused_for_text_generation(exports, capsys):
    code = run_main(["serve", "--task", "llm", str(exports["run"]), "--device", "cuda", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "use --device cpu" in err and len(err.strip().splitlines()) == 1


def test_run_folder_copy_without_report_is_named_after_the_folder(exports, tmp_path):
    from sparsify_runner.serve.openai_engine import resolve_llm

    copy = tmp_path / "my-llm"
    shutil.copytree(exports["run"] / "onnx", copy / "onnx")
    assert resolve_llm(str(copy)).name == "my-llm"
    assert resolve_llm(str(copy), "given").name == "given"
    assert resolve_llm(str(copy / "onnx")).folder == copy / "onnx"
    assert resolve_llm(str(exports["run"] / "onnx")).name == NAME  # the run's report beside onnx/


def test_streamed_text_never_splits_a_character_or_shows_a_stop_prefix(reference):
    """The byte-level tokenizer spells 'é' with two tokens: the first alone decodes to U+FFFD,
    which is held back; 'ST' is held back until 'STx' shows it is not 'STOP'."""
    from sparsify_runner.serve.openai_engine import _TextStops

    text = "café STx ok STOP more"
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())  # one token per byte
    stops = _TextStops(reference.tokenizer, ["STOP", "never"])
    pieces = []
    for token in ids:
        piece, stopped = stops.add(token)
        pieces.append(piece)
        if stopped:
            break
    assert stopped and "".join(pieces) == "café STx ok "
    assert pieces[:9] == ["c", "a", "f", "", "é", " ", "", "", "STx"]  # held back, then released whole
    assert pieces[-4:] == ["", "", "", ""]  # S, T, O held back; P completes the stop: nothing shown


def test_a_cancelled_generation_stops_after_the_current_token(exports, reference):
    from sparsify_runner.serve.openai_engine import Sampling, TextGenerator, resolve_llm

    generator = TextGenerator(resolve_llm(str(exports["run"])), threads=1)
    ids = reference.tokenizer(PROMPT)["input_ids"]
    cancel = threading.Event()
    steps = []
    for step in generator.steps(ids, 100, Sampling(), [], cancel):
        steps.append(step)
        cancel.set()
    assert len(steps) == 1 and steps[0].finish is None
    full = list(generator.steps(ids, 100, Sampling(), [], threading.Event()))
    assert len(full) == 100 and full[-1].finish == "length"
    assert "".join(s.text for s in full) == _greedy(reference, ids, 100)[1]
