"""A local web demo of a trained model: sample from the prior, interpolate between two typed
sentences with a slider over the path, transfer a typed sentence between labels.

Standard library only (``http.server.ThreadingHTTPServer``); the page is one HTML document with
its CSS and JavaScript inline, so it works with no internet. Every action is also a JSON
endpoint:

    GET  /                  the page
    GET  /api/info          checkpoint, latent size, labels, input limits
    POST /api/sample        {"n": 5, "seed": 0, "temperature": 1.0, "z_temperature": 0.8[, "label": "web"]}
                            -> {"sentences": [...]}
    POST /api/interpolate   {"a": "...", "b": "...", "steps": 9, "method": "slerp"}
                                                                             -> {"path": [{"t", "text"}...]}
    POST /api/transfer      {"text": "...", "source": "kjv", "target": "web", "alpha": 1.5, "method": "mean-diff",
                             "copy_bias": 4}                                 -> {"output": "...", "alpha": 1.5}

A model trained on labelled data also takes a sample's ``label`` (a label-conditional model,
model.conditional 'label', decodes with it; another samples from that label's fitted prior); a
conditional model also takes the transfer method ``relabel``. The transfer's method defaults to :data:`SLIDER_METHOD`, its alpha to that method's
``textvae.transfer.DEFAULT_ALPHA`` and its copy bias (nats on the source's own tokens; 0: the code alone) to
``textvae.transfer.DEFAULT_COPY_BIAS``; ``/api/info`` reports all three.

Bad input (malformed or too deeply nested JSON, a missing or empty sentence, one over
:data:`MAX_CHARS` characters, text that is not Unicode, an unknown label, numbers out of range)
gets status 400 and ``{"error": "one line"}``; every other error (an unknown method, a wrong
content type, a foreign Origin or Host) is JSON too, and the server keeps serving. Model calls are
serialised by a lock (one CPU-bound request at a time).

It is a local tool, not an internet service. What it guards against: other web sites (POSTs
must be ``application/json``, an Origin must be this server's, the Host header must name the
address it is bound to, which stops DNS rebinding), slow or idle clients (a socket timeout of
:data:`IDLE_TIMEOUT` s and at most :data:`MAX_CONNECTIONS` connections at once; more get 503),
and reading files (it serves one page; ``/api/info`` names the checkpoint folder, not its path).
What it does not: authentication, TLS, rate limits per client. Bind it to 127.0.0.1 (the
default); ``--host 0.0.0.0`` prints a warning.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

from textvae.errors import InputError, TextVAEError
from textvae.generate import DEFAULT_Z_TEMPERATURE, MAX_Z_TEMPERATURE

log = logging.getLogger("textvae")

MAX_CHARS = 500
"""Longest sentence (characters, after whitespace is collapsed) the demo accepts."""
MAX_BODY = 16_384
"""Largest request body in bytes; larger requests get 413 without being read."""
MAX_SAMPLES = 20
MAX_STEPS = 21
MAX_ALPHA = 50.0
MAX_COPY_BIAS = 20.0
IDLE_TIMEOUT = 15.0
"""Seconds a connection may sit idle (or trickle a request) before it is closed."""
MAX_CONNECTIONS = 64
"""Connections served at once; one more is answered 503 at once and closed."""
BACKLOG = 128
"""Pending connections the listening socket queues."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
SLIDER_METHOD = "mean-diff"
"""The demo's transfer: one decode per slider move, and the output follows alpha smoothly
(textvae's default, ``textvae.transfer.DEFAULT_METHOD``, decodes ``transfer.SEARCH_CANDIDATES x
(transfer.CLOSEST_SAMPLES + 1)`` candidates per sentence and picks one)."""


class DemoError(InputError):
    """Bad input to an endpoint: answered with this status and a one-line message."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


# --------------------------------------------------------------------------- the actions


class Demo:
    """The endpoints' logic on a loaded :class:`textvae.api.TextVAE`, independent of HTTP."""

    def __init__(self, vae):
        self.vae = vae
        self.lock = threading.Lock()
        self.labels = list(vae.attributes.labels) if vae.attributes is not None else []

    def info(self) -> dict[str, Any]:
        from textvae.transfer import DEFAULT_ALPHA, DEFAULT_COPY_BIAS

        name = self.vae.path.name if self.vae.path is not None else None
        if name == "checkpoint" and self.vae.path.parent.name:  # a run's checkpoint: name the run
            name = f"{self.vae.path.parent.name}/{name}"
        return {"checkpoint": name, "latent_dim": self.vae.latent_dim, "labels": self.labels,
                "step": self.vae.meta.get("step"), "max_chars": MAX_CHARS, "max_samples": MAX_SAMPLES,
                "max_steps": MAX_STEPS, "max_alpha": MAX_ALPHA, "transfer_method": SLIDER_METHOD,
                "default_alpha": DEFAULT_ALPHA[SLIDER_METHOD], "default_copy_bias": DEFAULT_COPY_BIAS,
                "max_copy_bias": MAX_COPY_BIAS, "conditional": bool(getattr(self.vae, "conditional", False))}

    def sample(self, body: dict[str, Any]) -> dict[str, Any]:
        n = _int(body, "n", 5, 1, MAX_SAMPLES)
        seed = _int(body, "seed", 0, 0, 2**31 - 1)
        temperature = _number(body, "temperature", 1.0, 0.05, 5.0)
        z_temperature = _number(body, "z_temperature", DEFAULT_Z_TEMPERATURE, 0.05, MAX_Z_TEMPERATURE)
        label = None
        if body.get("label") is not None:  # write in this label's style (a conditional model, or a per-label prior)
            if not self.vae.label_names:
                raise DemoError("this checkpoint was trained without labels: it samples without a label")
            label = _choice(body, "label", None, self.vae.label_names, what="label")
        with self.lock:
            extra = {"label": label} if label is not None else {}
            texts = self.vae.sample(n, seed=seed, temperature=temperature, z_temperature=z_temperature, **extra)
        return {"sentences": texts, "seed": seed, "label": label, "z_temperature": z_temperature}

    def interpolate(self, body: dict[str, Any]) -> dict[str, Any]:
        a, b = _sentence(body, "a"), _sentence(body, "b")
        steps = _int(body, "steps", 9, 2, MAX_STEPS)
        method = _choice(body, "method", "slerp", ("lerp", "slerp"))
        with self.lock:
            texts = self.vae.interpolate(a, b, steps=steps, method=method)
        return {"path": [{"t": i / (steps - 1), "text": t} for i, t in enumerate(texts)], "method": method}

    def transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        from textvae.transfer import DEFAULT_ALPHA, DEFAULT_COPY_BIAS

        if not self.labels:
            raise DemoError("this checkpoint has no attribute vectors, so it cannot transfer "
                            "(compute them with `textvae attributes`)")
        text = _sentence(body, "text")
        source = _choice(body, "source", None, self.labels, what="label")
        target = _choice(body, "target", None, self.labels, what="label")
        if source == target:
            raise DemoError(f"source and target are the same label ({source!r})")
        methods = ("mean-diff", "project", "relabel") if getattr(self.vae, "conditional", False) else ("mean-diff", "project")
        method = _choice(body, "method", SLIDER_METHOD, methods)
        alpha = _number(body, "alpha", DEFAULT_ALPHA[method], -MAX_ALPHA, MAX_ALPHA)
        copy_bias = _number(body, "copy_bias", DEFAULT_COPY_BIAS, 0.0, MAX_COPY_BIAS)
        with self.lock:
            out = self.vae.transfer([text], source, target, alpha=alpha, method=method, copy_bias=copy_bias)[0]
        return {"output": out, "source": source, "target": target, "alpha": alpha, "method": method,
                "copy_bias": copy_bias}


def _field(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        raise DemoError(f"'{key}' is required")
    return value


def _sentence(body: dict[str, Any], key: str) -> str:
    """One sentence, normalised and checked by :func:`textvae.data.check_sentences`."""
    from textvae.data import check_sentences

    value = _field(body, key, None)
    if not isinstance(value, str):  # check_sentences would take a list as several sentences
        raise DemoError(f"'{key}' must be a string")
    _unicode(value, key)
    try:
        (text,) = check_sentences(value)
    except InputError:  # the one thing wrong with a string is that it is empty
        raise DemoError(f"'{key}' is empty: type a sentence") from None
    if len(text) > MAX_CHARS:
        raise DemoError(f"'{key}' is too long ({len(text)} characters; at most {MAX_CHARS})")
    return text


def _unicode(value: str, key: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows "\ud800", Unicode text does not
        raise DemoError(f"'{key}' is not valid Unicode text (it holds a lone surrogate)") from None


def _int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = _field(body, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise DemoError(f"'{key}' must be an integer")
    if not lo <= value <= hi:
        raise DemoError(f"'{key}' must be between {lo} and {hi}, got {int(value)}")
    return int(value)


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = _field(body, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DemoError(f"'{key}' must be a finite number")
    if not lo <= value <= hi:
        raise DemoError(f"'{key}' must be between {lo:g} and {hi:g}, got {value:g}")
    return float(value)


def _choice(body: dict[str, Any], key: str, default: Optional[str], allowed: Any, what: str = "value") -> str:
    value = _field(body, key, default)
    if isinstance(value, str):
        _unicode(value, key)
    if not isinstance(value, str) or value not in allowed:
        shown = value if isinstance(value, str) else json.dumps(value)
        raise DemoError(f"unknown {what} {shown[:40]!r} for '{key}'; use one of {', '.join(allowed)}")
    return value


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    """The demo's HTTP side; :func:`make_handler` binds it to a :class:`Demo`."""

    demo: Demo
    routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
    server_version = "textvae"
    sys_version = ""  # the Server header names textvae, not the Python version
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT  # on the socket: an idle or trickling client is dropped

    def log_message(self, fmt: str, *args: Any) -> None:  # through logging, not raw stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    def version_string(self) -> str:
        return self.server_version

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (a malformed request line, an unsupported method, a header
        too long), answered as JSON like every other error."""
        try:
            short = message or HTTPStatus(code).phrase
        except ValueError:
            short = message or "error"
        self.close_connection = True
        self._error(code, short.splitlines()[0][:200])

    def _foreign(self) -> Optional[str]:
        """Why a request comes from somewhere it should not (None when it is fine): a Host other
        than the bound address (DNS rebinding), an Origin other than this server."""
        host = (self.headers.get("Host") or "").strip().lower()
        allowed = self.server.allowed_hosts  # type: ignore[attr-defined]
        if allowed is not None and host not in allowed:
            return f"unexpected Host header {host[:60]!r}: open the demo at its own address"
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in ([host] if host else [])}:
            return f"requests from {origin[:60]!r} are not allowed"
        return None

    def _refuse_method(self) -> None:
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed; use GET or POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Nothing may load from elsewhere: the page is self-contained by design.
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        why = self._foreign()
        if why:
            return self._error(HTTPStatus.FORBIDDEN, why)
        if path in ("/", "/index.html"):
            self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.demo.info())
        elif path in self.routes:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"use POST with a JSON body for {path}")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if raw is None:
            return None
        why = self._foreign()
        if why:
            return self._error(HTTPStatus.FORBIDDEN, why)
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":  # a form or text/plain POST from another page is refused
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"the body must be application/json, got {ctype[:60] or 'no Content-Type'!r}")
        action = self.routes.get(path)
        if action is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path[:100]}")
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"malformed JSON body: {str(e)[:120]}")
        except RecursionError:
            return self._error(HTTPStatus.BAD_REQUEST, "malformed JSON body: nested too deeply")
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            return self._error(HTTPStatus.BAD_REQUEST, f"malformed JSON body: {str(e).splitlines()[0][:120]}")
        if not isinstance(body, dict):
            return self._error(HTTPStatus.BAD_REQUEST, "the JSON body must be an object")
        self._dispatch(path, action, body)

    def _read_body(self) -> Optional[bytes]:
        """The request body, or None after answering a missing or too large Content-Length."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        if length < 0 or length > MAX_BODY:
            # Drain a moderately large body so the client reads the answer instead of a reset;
            # then drop the connection either way.
            self.close_connection = True
            if 0 < length <= 64 * MAX_BODY:
                self.rfile.read(length)
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"request body too large ({length} bytes; at most {MAX_BODY})")
            return None
        return self.rfile.read(length)

    def _dispatch(self, path: str, action: Callable[[dict[str, Any]], dict[str, Any]],
                  body: dict[str, Any]) -> None:
        """Run an endpoint and answer its result, or its error in one line."""
        try:
            result = action(body)
        except DemoError as e:
            return self._error(e.status, str(e))
        except TextVAEError as e:  # e.g. an unknown label caught deeper down
            return self._error(HTTPStatus.BAD_REQUEST, str(e).splitlines()[0])
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            log.exception("error in %s", path)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(e).__name__})")
        self._json(200, result)


def make_handler(demo: Demo) -> type[BaseHTTPRequestHandler]:
    """A request handler class serving ``demo``."""
    routes = {"/api/sample": demo.sample, "/api/interpolate": demo.interpolate, "/api/transfer": demo.transfer}
    return type("Handler", (Handler,), {"demo": demo, "routes": routes})


class DemoServer(ThreadingHTTPServer):
    """A threading server with a real listen backlog, at most :data:`MAX_CONNECTIONS`
    connections at once, and one log line (not a traceback) for a client that went away."""

    request_queue_size = BACKLOG
    daemon_threads = True
    allowed_hosts: Optional[set[str]] = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        host, port = self.server_address[:2]
        if str(host) in ("0.0.0.0", "::"):
            self.allowed_hosts = None  # every address of the machine: any Host
        else:
            names = {str(host)} | (set(LOOPBACK) if str(host) in LOOPBACK else set())
            self.allowed_hosts = {f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                body = b'{"error": "too many connections; retry"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        log.info("connection from %s ended: %s", client_address[0] if client_address else "?",
                 type(err).__name__ if err is not None else "error")


def make_server(vae, host: str = "127.0.0.1", port: int = 8000) -> DemoServer:
    """A server for ``vae`` bound to host:port (port 0: a free port; see ``server.server_address``)."""
    try:
        server = DemoServer((host, port), make_handler(Demo(vae)))
    except (OSError, OverflowError) as e:
        raise InputError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    return server


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          ready: Optional[Callable[[str], None]] = None) -> None:
    """Load a checkpoint and serve the demo until interrupted."""
    from textvae.api import TextVAE

    vae = TextVAE.from_pretrained(checkpoint, device=device)
    if vae.model.is_lm:
        raise InputError("this checkpoint is a language model (latent_dim 0): it has no latent space to demo")
    server = make_server(vae, host, port)
    h, p = server.server_address[:2]
    if str(h) not in LOOPBACK:
        log.warning("warning: the demo listens on %s, so other machines can reach it; it has no authentication "
                    "(bind --host 127.0.0.1 to keep it to this machine)", h)
    url = f"http://{'[' + h + ']' if ':' in str(h) else h}:{p}/"
    if ready:
        ready(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# --------------------------------------------------------------------------- the page

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>textvae demo</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:960px;margin:1.5em auto;padding:0 1em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin-bottom:.2em}.sub{color:#666;margin-top:0}
section{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1em 1.2em;margin:1em 0}
h2{font-size:1.15em;margin:0 0 .6em}
input[type=text],textarea,select{font:inherit;padding:.35em;border:1px solid #bbb;border-radius:4px;box-sizing:border-box}
input[type=text],textarea{width:100%}textarea{height:3.2em;resize:vertical}
button{font:inherit;padding:.35em 1em;border-radius:4px;border:1px solid #2a6;background:#2a6;color:#fff;cursor:pointer}
button:disabled{opacity:.5;cursor:wait}
label{display:block;margin:.4em 0 .2em;font-size:.9em;color:#444}
.row{display:flex;gap:.8em;align-items:center;flex-wrap:wrap}
input[type=range]{flex:1;min-width:200px}
.shown{font-size:1.15em;background:#eef7f0;border-left:4px solid #2a6;padding:.5em .8em;margin:.6em 0;min-height:1.4em}
ol.path li.on{font-weight:bold;color:#174}
.error{color:#b00;margin:.4em 0;min-height:1em;white-space:pre-wrap}
.muted{color:#777;font-size:.9em}
</style></head>
<body>
<h1>textvae demo</h1>
<p class="sub" id="info">loading model information…</p>

<section id="sample-panel">
<h2>Sample from the prior</h2>
<div class="row"><span>sentences</span><input id="sample-n" type="number" min="1" max="20" value="5" style="width:5em">
<span>seed</span><input id="sample-seed" type="number" min="0" value="0" style="width:6em">
<button id="sample-go">Sample</button></div>
<div class="error" id="sample-error"></div>
<ol id="samples"></ol>
</section>

<section id="interp-panel">
<h2>Interpolate between two sentences</h2>
<label for="interp-a">sentence A</label><input id="interp-a" type="text" maxlength="2000">
<label for="interp-b">sentence B</label><input id="interp-b" type="text" maxlength="2000">
<div class="row" style="margin-top:.6em"><span>points</span><input id="interp-steps" type="number" min="2" max="21" value="9" style="width:5em">
<select id="interp-method"><option value="slerp">slerp</option><option value="lerp">lerp</option></select>
<button id="interp-go">Interpolate</button></div>
<div class="error" id="interp-error"></div>
<div class="row"><span>A</span><input id="interp-slider" type="range" min="0" max="0" value="0" disabled><span>B</span>
<span class="muted" id="interp-t"></span></div>
<div class="shown" id="interp-current"></div>
<ol class="path" id="interp-list" start="0"></ol>
</section>

<section id="transfer-panel">
<h2>Transfer between labels</h2>
<label for="transfer-text">sentence</label><textarea id="transfer-text" maxlength="2000"></textarea>
<div class="row" style="margin-top:.6em"><span>from</span><select id="transfer-source"></select>
<span>to</span><select id="transfer-target"></select><button id="transfer-go">Transfer</button></div>
<div class="row"><span>alpha</span><input id="transfer-alpha" type="range" min="0" max="16" step="0.5" value="8">
<span id="transfer-alpha-value"></span></div>
<div class="row"><span>copy bias</span><input id="transfer-copy" type="range" min="0" max="8" step="0.5" value="4">
<span id="transfer-copy-value"></span></div>
<div class="error" id="transfer-error"></div>
<div class="shown" id="transfer-output"></div>
</section>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
let path = [];

async function call(url, body, errBox, button) {
  errBox.textContent = "";
  if (button) button.disabled = true;
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    let data;
    try { data = await r.json(); } catch (e) { throw new Error("the server answered " + r.status + " without JSON"); }
    if (!r.ok) throw new Error(data.error || ("error " + r.status));
    return data;
  } catch (e) {
    errBox.textContent = "Error: " + e.message;
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

function fill(list, items) {
  list.replaceChildren(...items.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
}

async function init() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("info").textContent = "checkpoint " + info.checkpoint + " · step " + info.step + " · latent size " + info.latent_dim +
      " · labels: " + (info.labels.length ? info.labels.join(", ") : "none");
    for (const sel of [$("transfer-source"), $("transfer-target")]) {
      sel.replaceChildren(...info.labels.map((l) => { const o = document.createElement("option"); o.value = o.textContent = l; return o; }));
    }
    if (info.labels.length > 1) $("transfer-target").value = info.labels[1];
    else { $("transfer-go").disabled = true; $("transfer-error").textContent = "This checkpoint has no attribute vectors: transfer is unavailable."; }
    $("transfer-alpha").max = Math.min(info.max_alpha, Math.max(16, 2 * info.default_alpha));
    $("transfer-alpha").value = info.default_alpha;
    $("transfer-copy").max = Math.min(info.max_copy_bias, Math.max(8, 2 * info.default_copy_bias));
    $("transfer-copy").value = info.default_copy_bias;
  } catch (e) { $("info").textContent = "Error: cannot reach the server (" + e.message + ")"; }
  $("transfer-alpha-value").textContent = $("transfer-alpha").value;
  $("transfer-copy-value").textContent = $("transfer-copy").value;
}

$("sample-go").addEventListener("click", async () => {
  const data = await call("/api/sample", {n: Number($("sample-n").value), seed: Number($("sample-seed").value)}, $("sample-error"), $("sample-go"));
  if (data) fill($("samples"), data.sentences);
});

function showStep() {
  const i = Number($("interp-slider").value);
  if (!path.length) return;
  $("interp-current").textContent = path[i].text;
  $("interp-t").textContent = "t = " + path[i].t.toFixed(2);
  [...$("interp-list").children].forEach((li, j) => li.classList.toggle("on", j === i));
}

$("interp-go").addEventListener("click", async () => {
  const data = await call("/api/interpolate", {a: $("interp-a").value, b: $("interp-b").value,
    steps: Number($("interp-steps").value), method: $("interp-method").value}, $("interp-error"), $("interp-go"));
  if (!data) return;
  path = data.path;
  fill($("interp-list"), path.map((p) => p.text));
  const s = $("interp-slider");
  s.max = path.length - 1; s.value = 0; s.disabled = false;
  showStep();
});
$("interp-slider").addEventListener("input", showStep);

let transferSeq = 0;
async function transfer() {
  const seq = ++transferSeq;
  const data = await call("/api/transfer", {text: $("transfer-text").value, source: $("transfer-source").value,
    target: $("transfer-target").value, alpha: Number($("transfer-alpha").value),
    copy_bias: Number($("transfer-copy").value)}, $("transfer-error"), $("transfer-go"));
  if (data && seq === transferSeq) $("transfer-output").textContent = data.output;
}
$("transfer-go").addEventListener("click", transfer);
$("transfer-alpha").addEventListener("input", () => { $("transfer-alpha-value").textContent = $("transfer-alpha").value; });
$("transfer-alpha").addEventListener("change", () => { if ($("transfer-text").value.trim()) transfer(); });
$("transfer-copy").addEventListener("input", () => { $("transfer-copy-value").textContent = $("transfer-copy").value; });
$("transfer-copy").addEventListener("change", () => { if ($("transfer-text").value.trim()) transfer(); });
init();
</script>
</body></html>
"""
