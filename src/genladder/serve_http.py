"""The HTTP side of ``genladder serve``: a local-only guard in front of the Gradio app, and its server.

The demo is for the person at this machine. A web page that person visits could otherwise drive it
through DNS rebinding (a foreign name resolving to 127.0.0.1) or a cross-site request, so:

- the ``Host`` header must be ``127.0.0.1:PORT`` or ``localhost:PORT`` and an ``Origin``, when sent,
  ``http://`` one of those; anything else is answered 403 before Gradio sees it;
- uploads are off (the page has no upload field): Gradio's upload route answers 403, and any request
  body is capped at ``MAX_BODY_BYTES``;
- the server is uvicorn on a socket bound here, so a taken port is a one-line error and nothing
  depends on Gradio's ``launch`` (its start-up self-check over the network timed out under load and
  then suggested ``share=True``, which would publish the demo).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from genladder.errors import GenladderError
from genladder.serve import HOST, MAX_CONCURRENT, MAX_QUEUE, RunCatalog
from genladder.serve_page import build_app

MAX_BODY_BYTES = 256 * 1024  # a form submission is a few hundred bytes


async def _answer(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LocalOnly:
    """ASGI middleware: refuse foreign Host/Origin headers, uploads and oversized bodies."""

    def __init__(self, app, port: int, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{host}" for host in self.hosts}
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get("origin")
        allowed = headers.get("host", "") in self.hosts and (origin is None or origin in self.origins)
        if not allowed or "/upload" in scope.get("path", ""):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            reason = "uploads are off in this demo" if allowed else "this demo answers pages of 127.0.0.1 only"
            return await _answer(send, 403, f"forbidden: {reason}\n")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _answer(send, 413, f"request body over {self.max_body} bytes\n")
        seen = 0

        async def bounded_receive():
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > self.max_body:  # a chunked body without a length: stop reading it
                return {"type": "http.disconnect"}
            return event

        return await self.app(scope, bounded_receive, send)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error (port taken, not allowed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restart waits minutes for the old connections' TIME_WAIT; a live
    # listener on the port still makes bind fail, so two demos never share one.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise GenladderError(f"cannot serve on {host}:{port} ({error.strerror}); pick another --port") from None
    sock.set_inheritable(True)
    return sock


def serve_app(blocks, sock: socket.socket, port: int) -> None:
    """Mount the Gradio page at / behind LocalOnly and serve it on ``sock`` until Ctrl-C."""
    import gradio
    import uvicorn
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    # Our own CORS policy (the two local origins): Gradio then adds none of its own.
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app = gradio.mount_gradio_app(app, blocks, path="", server_name="127.0.0.1", server_port=port,
                                  show_error=False, max_file_size=1, ssr_mode=False, mcp_server=False)
    config = uvicorn.Config(LocalOnly(app, port), log_level="warning", timeout_keep_alive=5,
                            limit_concurrency=64, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def serve(run_dirs: Sequence[str], port: int = 7860, device: str = "auto", runs_root: str | None = None) -> None:
    """``genladder serve``: load every run (one-line error for a folder that is not a run), then serve the page
    until Ctrl-C."""
    if not 1 <= port <= 65535:
        raise GenladderError(f"--port must be in 1..65535, got {port}")
    catalog = RunCatalog(run_dirs, device=device, runs_root=runs_root)
    app = build_app(catalog)
    app.queue(default_concurrency_limit=MAX_CONCURRENT, max_size=MAX_QUEUE)
    sock = bind(HOST, port)
    print(f"genladder: serving {len(catalog.names)} run(s) at http://{HOST}:{port}/ (Ctrl-C stops)", flush=True)
    serve_app(app, sock, port)
