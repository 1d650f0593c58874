"""The web demo's JSON endpoints (textvae/serve.py) on the shared tiny run: answers, input
validation, and that bad input never stops the server."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest

from textvae.serve import MAX_BODY, MAX_CHARS

A = "And the LORD said unto Moses, Go in unto Pharaoh."
B = "Yahweh said to Moses, Go in to Pharaoh."


@pytest.fixture(scope="module")
def server(trained_run):
    """The demo on a free port of 127.0.0.1, served from a thread; yields (host, port)."""
    from textvae.api import TextVAE
    from textvae.serve import make_server

    srv = make_server(TextVAE.from_pretrained(trained_run), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[:2]
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server, method: str, path: str, body: bytes | str | dict | None = None,
            headers: dict | None = None) -> tuple[int, dict | str]:
    host, port = server
    conn = http.client.HTTPConnection(host, port, timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read().decode("utf-8")
    conn.close()
    if resp.getheader("Content-Type", "").startswith("application/json"):
        return resp.status, json.loads(raw)
    return resp.status, raw


def assert_error(result, status: int, *needles: str) -> str:
    code, body = result
    assert code == status, (code, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    msg = body["error"]
    assert "\n" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_page_is_self_contained(server):
    code, page = request(server, "GET", "/")
    assert code == 200 and "<title>textvae demo</title>" in page
    for element in ("interp-a", "interp-b", "interp-slider", "interp-current", "transfer-alpha", "sample-go"):
        assert f'id="{element}"' in page
    # no asset from elsewhere: every src/href is inline, and the page names no scheme to fetch from
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page


def test_info_lists_labels_and_limits(server, trained):
    code, info = request(server, "GET", "/api/info")
    assert code == 200
    assert info["labels"] == ["kjv", "web"] and info["latent_dim"] == trained.config.model.latent_dim
    assert info["max_chars"] == MAX_CHARS


def test_sample_is_seeded(server, trained_run):
    from textvae.api import TextVAE
    from textvae.generate import DEFAULT_Z_TEMPERATURE

    code, one = request(server, "POST", "/api/sample", {"n": 3, "seed": 4})
    assert code == 200 and len(one["sentences"]) == 3 and one["z_temperature"] == DEFAULT_Z_TEMPERATURE
    assert request(server, "POST", "/api/sample", {"n": 3, "seed": 4})[1]["sentences"] == one["sentences"]
    code, hot = request(server, "POST", "/api/sample", {"n": 3, "seed": 4, "z_temperature": 1.0})
    assert code == 200
    assert hot["sentences"] == TextVAE.from_pretrained(trained_run).sample(3, seed=4, z_temperature=1.0)


def test_interpolate_matches_the_api(server, trained_run):
    from textvae.api import TextVAE

    code, out = request(server, "POST", "/api/interpolate", {"a": A, "b": B, "steps": 5, "method": "lerp"})
    assert code == 200
    assert [p["t"] for p in out["path"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    expected = TextVAE.from_pretrained(trained_run).interpolate(A, B, steps=5, method="lerp")
    assert [p["text"] for p in out["path"]] == expected


def test_transfer_alpha_zero_is_the_reconstruction(server, trained_run):
    from textvae.api import TextVAE

    code, out = request(server, "POST", "/api/transfer", {"text": A, "source": "kjv", "target": "web", "alpha": 0})
    assert code == 200 and out["alpha"] == 0.0
    assert out["output"] == TextVAE.from_pretrained(trained_run).reconstruct([A])[0]


def test_transfer_passes_its_copy_bias(server, trained_run):
    """The demo's copy bias is the API's: the default when left out, the code alone at 0."""
    from textvae.api import TextVAE
    from textvae.transfer import DEFAULT_COPY_BIAS

    vae = TextVAE.from_pretrained(trained_run)
    code, info = request(server, "GET", "/api/info")
    assert code == 200 and info["default_copy_bias"] == DEFAULT_COPY_BIAS
    body = {"text": A, "source": "kjv", "target": "web", "alpha": 3}
    # the premise: the bias changes this transfer, so a server that ignored it would fail below
    assert (vae.transfer([A], "kjv", "web", alpha=3, method="mean-diff", copy_bias=0)
            != vae.transfer([A], "kjv", "web", alpha=3, method="mean-diff", copy_bias=12.5))
    for extra, bias in (({}, DEFAULT_COPY_BIAS), ({"copy_bias": 0}, 0.0), ({"copy_bias": 12.5}, 12.5)):
        code, out = request(server, "POST", "/api/transfer", {**body, **extra})
        assert code == 200 and out["copy_bias"] == bias
        assert out["output"] == vae.transfer([A], "kjv", "web", alpha=3, method="mean-diff", copy_bias=bias)[0]


@pytest.mark.parametrize("path,body,needles", [
    ("/api/transfer", {"text": A, "source": "kjv", "target": "web", "copy_bias": -1}, ("'copy_bias' must be between 0",)),
    ("/api/interpolate", {"a": "", "b": B}, ("'a' is empty",)),
    ("/api/interpolate", {"a": "   ", "b": B}, ("'a' is empty",)),
    ("/api/interpolate", {"a": A}, ("'b' is required",)),
    ("/api/interpolate", {"a": A, "b": "x" * 10_000}, ("'b' is too long", "10000 characters", str(MAX_CHARS))),
    ("/api/interpolate", {"a": A, "b": B, "steps": 1}, ("'steps' must be between 2",)),
    ("/api/interpolate", {"a": A, "b": B, "steps": "many"}, ("'steps' must be an integer",)),
    ("/api/interpolate", {"a": A, "b": 5}, ("'b' must be a string",)),
    ("/api/interpolate", {"a": A, "b": B, "method": "cubic"}, ("unknown value 'cubic'",)),
    ("/api/transfer", {"text": A, "source": "kjv", "target": "klingon"}, ("unknown label 'klingon'", "kjv, web")),
    ("/api/transfer", {"text": A, "source": "kjv", "target": "kjv"}, ("same label",)),
    ("/api/transfer", {"text": A, "source": "kjv", "target": "web", "alpha": 1e9}, ("'alpha' must be between",)),
    ("/api/transfer", {"text": "", "source": "kjv", "target": "web"}, ("'text' is empty",)),
    ("/api/sample", {"n": 0}, ("'n' must be between 1",)),
    ("/api/sample", {"n": True}, ("'n' must be an integer",)),
    ("/api/sample", {"n": 2, "z_temperature": 0}, ("'z_temperature' must be between",)),
])
def test_bad_input_is_a_400_with_one_line(server, path, body, needles):
    assert_error(request(server, "POST", path, body), 400, *needles)


@pytest.mark.parametrize("value", ["", "   ", "\t\n", "\ufeff"])
def test_empty_sentence_rule_is_the_data_module_s(value):
    """The demo's empty sentence is textvae.data.check_sentences' empty sentence."""
    from textvae.data import check_sentences
    from textvae.errors import InputError
    from textvae.serve import DemoError, _sentence

    with pytest.raises(InputError, match="is empty"):
        check_sentences(value)
    with pytest.raises(DemoError, match="^'a' is empty: type a sentence$"):
        _sentence({"a": value}, "a")
    assert _sentence({"a": f"  Jesus{value}  wept. "}, "a") == check_sentences("Jesus wept.")[0] == "Jesus wept."


def test_malformed_bodies(server):
    assert_error(request(server, "POST", "/api/interpolate", '{"a": "x", '), 400, "malformed JSON")
    assert_error(request(server, "POST", "/api/interpolate", b"\xff\xfe{}"), 400, "malformed JSON")
    assert_error(request(server, "POST", "/api/interpolate", "[1, 2]"), 400, "must be an object")
    assert_error(request(server, "POST", "/api/sample", "x" * (MAX_BODY + 1)), 413, "too large")
    assert_error(request(server, "POST", "/api/nowhere", "{}"), 404, "no such endpoint")
    assert_error(request(server, "GET", "/api/interpolate"), 405, "use POST")
    assert_error(request(server, "GET", "/etc/passwd"), 404)


def test_server_keeps_serving_after_garbage(server):
    host, port = server
    # a request line that is not HTTP, then a connection closed mid-body
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        s.recv(4096)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /api/sample HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"n\"")
    for _ in range(3):
        assert_error(request(server, "POST", "/api/transfer", {"text": A, "source": "?", "target": "web"}), 400)
    code, out = request(server, "POST", "/api/sample", {"n": 1})
    assert code == 200 and len(out["sentences"]) == 1


def test_cli_serve_port_in_use_is_one_line(run_cli, trained_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, out, err = run_cli("serve", "--checkpoint", trained_run, "--port", port)
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"textvae serve: error: cannot listen on 127.0.0.1:{port}")
    rc, _, err = run_cli("serve", "--checkpoint", trained_run, "--port", 70000)
    assert rc == 2 and "--port: must be between 0 and 65535" in err


def test_hostile_bodies_are_400(server):
    assert_error(request(server, "POST", "/api/sample", "[" * 5000), 400, "malformed JSON")
    assert_error(request(server, "POST", "/api/sample", '{"n": ' + "9" * 5000 + "}"), 400, "malformed JSON")
    assert_error(request(server, "POST", "/api/interpolate", '{"a": "\\ud800 abc", "b": "c d"}'), 400,
                 "'a' is not valid Unicode")
    assert_error(request(server, "POST", "/api/transfer", '{"text": "a b", "source": "\\udfff", "target": "web"}'),
                 400, "not valid Unicode")


def test_foreign_pages_are_refused(server):
    host, port = server
    assert_error(request(server, "POST", "/api/sample", {"n": 1}, {"Content-Type": "text/plain"}), 415,
                 "application/json")
    assert_error(request(server, "POST", "/api/sample", {"n": 1}, {"Origin": "http://evil.example"}), 403,
                 "not allowed")
    assert_error(request(server, "GET", "/api/info", headers={"Host": f"evil.example:{port}"}), 403, "Host")
    code, out = request(server, "POST", "/api/sample", {"n": 1}, {"Origin": f"http://{host}:{port}"})
    assert code == 200 and len(out["sentences"]) == 1
    code, _ = request(server, "GET", "/api/info", headers={"Host": f"localhost:{port}"})
    assert code == 200


def test_info_and_headers_reveal_no_paths_or_versions(server, trained_run):
    import platform

    code, info = request(server, "GET", "/api/info")
    assert code == 200 and str(trained_run) not in json.dumps(info) and info["checkpoint"] == "run/checkpoint"
    host, port = server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/api/info")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.getheader("Server") == "textvae" and platform.python_version() not in resp.getheader("Server")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_other_methods_get_json(server, method):
    code, body = request(server, method, "/api/sample")
    assert code in (405, 501) and isinstance(body, dict) and set(body) == {"error"}, (code, body)


def test_server_bounds_its_connections(trained_run):
    from textvae.api import TextVAE
    from textvae.serve import MAX_CONNECTIONS, make_server

    srv = make_server(TextVAE.from_pretrained(trained_run), "127.0.0.1", 0)
    assert srv.request_queue_size >= 64 and MAX_CONNECTIONS >= 8
    for _ in range(MAX_CONNECTIONS):
        assert srv.slots.acquire(blocking=False)  # as if every slot were held by an idle client
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert_error(request(srv.server_address[:2], "GET", "/api/info"), 503, "too many connections")
        srv.slots.release()
        code, _ = request(srv.server_address[:2], "GET", "/api/info")
        assert code == 200
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_an_aborted_connection_is_one_log_line(trained_run, caplog):
    import logging

    from textvae.api import TextVAE
    from textvae.serve import make_server

    srv = make_server(TextVAE.from_pretrained(trained_run), "127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, logger="textvae"):
            try:
                raise ConnectionResetError("peer went away")
            except ConnectionResetError:
                srv.handle_error(None, ("10.0.0.9", 5555))
    finally:
        srv.server_close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["connection from 10.0.0.9 ended: ConnectionResetError"]


def test_serving_on_every_address_warns(trained_run):
    import os
    import subprocess
    import sys

    from helpers import REPO_ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "textvae", "serve", "--checkpoint", str(trained_run), "--host",
                             "0.0.0.0", "--port", "0"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # printed once the server listens, after the warning
        assert first.startswith("serving the textvae demo on http://0.0.0.0:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "other machines can reach it" in err and "Traceback" not in err
