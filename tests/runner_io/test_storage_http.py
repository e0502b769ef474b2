"""http(s):// read-only downloads against a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from sparsify_runner import storage
from sparsify_runner.errors import InputError, TransientError
from sparsify_runner.storage.common import stats


@pytest.fixture
def web(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARSIFY_HTTP_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    stats.reset()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_is_cached(web):
    root, url = web
    (root / "recipe.yaml").write_text("sparsity: 0.5\n")
    path = storage.fetch(f"{url}/recipe.yaml", what="recipe")
    assert path.name == "recipe.yaml" and path.read_text() == "sparsity: 0.5\n"
    assert storage.fetch(f"{url}/recipe.yaml", what="recipe") == path
    assert stats.get("downloaded_objects") == 1 and stats.get("cache_hits") == 1


def test_http_missing_file_is_bad_input(web):
    _, url = web
    with pytest.raises(InputError, match="not found \\(HTTP 404\\)"):
        storage.fetch(f"{url}/nope.onnx", what="model")


def test_http_unreachable_is_transient_and_redacted(monkeypatch, tmp_path):
    from rio_helpers import free_port

    monkeypatch.setenv("SPARSIFY_HTTP_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(tmp_path))
    url = f"http://127.0.0.1:{free_port()}/m.onnx?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    with pytest.raises(TransientError) as info:
        storage.fetch(url, what="model")
    assert "deadbeef" not in str(info.value) and "<redacted>" in str(info.value)


def test_presigned_s3_url(s3, s3env):
    """A URL presigned for GET (HEAD is not covered by its signature) downloads fine, and
    its signature never shows up in an error."""
    s3.create_bucket(Bucket="shared")
    s3.put_object(Bucket="shared", Key="model.onnx", Body=b"presigned-model")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "shared", "Key": "model.onnx"}, ExpiresIn=600
    )
    assert storage.fetch(url, what="model").read_bytes() == b"presigned-model"

    missing = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "shared", "Key": "nope"}, ExpiresIn=600
    )
    with pytest.raises(InputError) as info:
        storage.fetch(missing, what="model")
    assert "Signature" not in str(info.value) and "<redacted>" in str(info.value)
