"""The app's HTTP server: the standard library's ``http.server`` and a static page shipped in the package.

Why not Gradio or Streamlit: docs/architecture.md ("The app"). In short, the page must work offline with
nothing fetched at run time and no telemetry, and survive hostile uploads; a few hundred lines on the standard
library do that with no dependency, where either framework adds 11-28 packages and has to be configured
out of its analytics and CDN defaults.

Shape:

* connections: a :class:`_Server` hands each accepted connection to a fixed pool of ``connections`` threads;
  a connection beyond ``2 x connections`` waiting ones is closed at once (one user cannot pile up threads),
  every socket has a timeout (a client that stops sending frees its thread), and every answer closes its
  connection (no idle keep-alive connection holds a thread);
* work: ``POST /api/jobs`` queues an explanation on a pool of ``workers`` threads and returns at once; beyond
  ``queue`` waiting jobs the answer is 503 "busy". The page polls ``GET /api/jobs/ID`` for progress and the
  result and may ``POST /api/jobs/ID/cancel``: the job's observer (:func:`camlens._perturb.observe`, called
  per chunk of every perturbation loop) then raises :class:`camlens._perturb.Cancelled`, and the method's
  ``finally`` hands the model back as it was. Calls on one model are serialised by ``_state.model_lock``;
* errors: a :class:`~camlens.app.engine.RequestError` (bad upload, unknown class...) is a 400 with its
  message, which the page shows; anything else is logged with its traceback and answered 500 with one line:
  the server keeps serving;
* safety: bound to 127.0.0.1 by default; requests whose ``Host`` is not the address the server was started
  on (a DNS-rebinding page) are refused when bound to a loopback address; upload bodies are refused from
  their ``Content-Length`` before being read; every answer carries a Content-Security-Policy of ``'self'``.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from camlens.app.engine import Limits, Outcome, RequestError, Workspace

__all__ = ["App", "serve"]

_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript", "app.css": "text/css"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_MAX_JSON = 64 * 1024  # a request document is a few hundred bytes
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Job:
    """One queued explanation: its state for the page, a cancel flag and, at the end, its outcome."""

    id: str
    state: str = "queued"  # queued, running, done, error, cancelled
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    outcome: Outcome | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: float | None = None

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "state": self.state, "progress": self.progress}
        if self.error is not None:
            doc["error"] = self.error
        if self.outcome is not None:
            doc["result"] = {**self.outcome.doc, "files_url": f"/api/jobs/{self.id}/files/"}
        return doc


class App:
    """The app: a :class:`~camlens.app.engine.Workspace` behind a job queue, served over HTTP.

    Args:
        workspace: models, photos and caches.
        workers: explanations computed at the same time (each model still runs one call at a time).
        queue: jobs that may wait for a worker before new ones are refused with 503.
        keep: finished jobs (and their files) kept for the page; the oldest are dropped first.
    """

    def __init__(self, workspace: Workspace, *, workers: int = 1, queue: int = 4, keep: int = 16) -> None:
        from camlens._perturb import Cancelled

        self.workspace = workspace
        self.workers = workers
        self.queue_size = queue
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camlens-job")
        self._waiting = 0
        self._count = 0
        self._cancelled = Cancelled

    # ------------------------------------------------------------------------------------------ jobs

    def submit(self, request: Any) -> Job:
        """Queue an explanation; RequestError("busy") when ``queue`` jobs already wait."""
        with self._lock:
            if self._waiting >= self.queue_size:
                raise _Busy(f"the server is busy ({self._waiting} requests waiting); try again in a moment")
            self._waiting += 1
            self._count += 1
            job = Job(f"j{self._count}")
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job, request)
        return job

    def job(self, job_id: str) -> Job:
        with self._lock:
            found = self._jobs.get(job_id)
        if found is None:
            raise RequestError(f"no job {job_id!r} (finished jobs are kept for a while only)")
        return found

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        job.cancel.set()
        return job

    def _forget_old(self) -> None:
        done = sorted((j.finished, j.id) for j in self._jobs.values() if j.finished is not None)
        for _, job_id in done[: max(0, len(done) - self.keep)]:
            del self._jobs[job_id]

    def _run(self, job: Job, request: Any) -> None:
        from camlens._perturb import observe

        with self._lock:
            self._waiting -= 1
        job.state = "running"

        def check() -> None:
            if job.cancel.is_set():
                raise self._cancelled

        def observer(done: int, total: int, desc: str) -> None:
            job.progress = {"done": done, "total": total, "desc": desc}
            check()

        try:
            if job.cancel.is_set():
                raise self._cancelled
            with observe(observer):
                job.outcome = self.workspace.explain(request, check=check)
            job.state = "done"
        except self._cancelled:
            job.state = "cancelled"
            job.error = "cancelled"
        except RequestError as err:
            job.state, job.error = "error", str(err)
        except Exception as err:  # a bug or a model that raises: one line for the page, the trace for the log
            traceback.print_exc(file=sys.stderr)
            job.state, job.error = "error", f"internal error: {type(err).__name__}: {err}"
        finally:
            job.finished = time.monotonic()

    def close(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------------ HTTP

    def server(self, host: str = "127.0.0.1", port: int = 0, *, connections: int = 8, timeout: float = 10.0) -> _Server:
        """An HTTP server for this app, bound (not yet serving: call ``serve_forever``).

        ``connections`` handler threads; ``timeout`` seconds a client may stay silent before its connection
        (and its thread) is dropped.
        """
        return _Server((host, port), _handler(self, timeout), connections)


class _Busy(RequestError):
    """All workers busy and the queue full: 503."""


class _Server(HTTPServer):
    """``HTTPServer`` with a fixed pool of connection threads and a bounded backlog (not one thread each)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.backlog: queue.Queue[Any] = queue.Queue(maxsize=2 * connections)
        self.threads = [
            threading.Thread(target=self._worker, name=f"camlens-http-{i}", daemon=True) for i in range(connections)
        ]
        for t in self.threads:
            t.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.backlog.put_nowait((request, client_address))
        except queue.Full:  # too many connections at once: close this one rather than queue without end
            self.shutdown_request(request)

    def _worker(self) -> None:
        while True:
            item = self.backlog.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self.threads:
            try:
                self.backlog.put_nowait(None)
            except queue.Full:
                break


def _handler(app: App, silence: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "camlens-app"
        sys_version = ""
        timeout = silence  # seconds a client may stay silent before its connection (and thread) is dropped
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: errors are logged where they happen

        # ---------------------------------------------------------------- plumbing

        def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            # one request per connection: an idle keep-alive connection would hold one of the few handler
            # threads for `timeout` seconds (a browser keeps six), and a new local connection costs nothing
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, json.dumps(doc, allow_nan=False).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def _host_ok(self) -> bool:
            address: Any = self.server.server_address
            bound = str(address[0])
            if bound not in _LOOPBACK:
                return True  # the user chose to serve the network (--host); names are theirs
            host = self.headers.get("Host", "")
            name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
            return name in _LOOPBACK

        def _body(self, limit: int) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self.close_connection = True
                raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length")
            size = int(length)
            if size > limit:
                self.close_connection = True  # the body is never read: drop the connection after answering
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the file is {size:,} bytes; the limit is {limit:,}"
                )
            return self.rfile.read(size)

        def _dispatch(self, method: str) -> None:
            try:
                if not self._host_ok():
                    self.close_connection = True
                    raise _HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header")
                self._route(method, urlsplit(self.path).path)
            except _HTTPError as err:
                self._error(err.status, err.message)
            except _Busy as err:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
            except RequestError as err:
                self._error(HTTPStatus.BAD_REQUEST, str(err))
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as err:
                traceback.print_exc(file=sys.stderr)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(err).__name__}: {err}")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        # ---------------------------------------------------------------- routes

        def _route(self, method: str, path: str) -> None:
            # split before unquoting: a model named by a file path ("models/net.pt") is one part, %2F inside
            parts = [unquote(p) for p in path.split("/") if p]
            ws = app.workspace
            if method == "GET" and (path == "/" or (len(parts) == 2 and parts[0] == "static")):
                name = "index.html" if path == "/" else parts[1]
                if name not in _STATIC:
                    raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")
                body = resources.files("camlens.app").joinpath("static", name).read_bytes()
                self._send(HTTPStatus.OK, body, _STATIC[name])
                return
            if parts[:1] != ["api"]:
                raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")
            parts = parts[1:]
            if method == "GET" and parts == ["config"]:
                from camlens import get_method, methods

                self._json(
                    HTTPStatus.OK,
                    {
                        "models": list(ws.specs),
                        "methods": [
                            {
                                "name": m,
                                "takes_layer": get_method(m).takes_layer,
                                "pixels": get_method(m).explains_pixels,
                                "about": (get_method(m).__doc__ or "").strip().splitlines()[0],
                            }
                            for m in methods()
                        ],
                        "demos": ws.demo_names(),
                        "limits": {
                            "max_upload_bytes": ws.limits.max_upload_bytes,
                            "max_pixels": ws.limits.max_pixels,
                            "max_methods": ws.limits.max_methods,
                            "max_targets": ws.limits.max_targets,
                            "max_steps": ws.limits.max_steps,
                        },
                    },
                )
            elif method == "GET" and len(parts) == 2 and parts[0] == "models":
                self._json(HTTPStatus.OK, ws.model_info(parts[1]))
            elif method == "POST" and parts == ["photos"]:
                data = self._body(ws.limits.max_upload_bytes)
                photo_id, photo = ws.add_upload(data, unquote(self.headers.get("X-Filename", "upload")))
                self._json(HTTPStatus.OK, _photo_doc(photo_id, photo))
            elif method == "POST" and len(parts) == 3 and parts[:2] == ["photos", "demo"]:
                self._body(_MAX_JSON)
                photo_id, photo = ws.add_demo(parts[2])
                self._json(HTTPStatus.OK, _photo_doc(photo_id, photo))
            elif method == "GET" and len(parts) == 2 and parts[0] == "photos":
                self._send(HTTPStatus.OK, ws.preview(parts[1]), "image/png")
            elif method == "POST" and parts == ["jobs"]:
                try:
                    request = json.loads(self._body(_MAX_JSON) or b"null")
                except ValueError as err:
                    raise RequestError(f"the request is not JSON: {err}") from err
                self._json(HTTPStatus.ACCEPTED, app.submit(request).public())
            elif method == "GET" and len(parts) == 2 and parts[0] == "jobs":
                self._json(HTTPStatus.OK, app.job(parts[1]).public())
            elif method == "POST" and len(parts) == 3 and parts[0] == "jobs" and parts[2] == "cancel":
                self._body(_MAX_JSON)
                self._json(HTTPStatus.OK, app.cancel(parts[1]).public())
            elif method == "GET" and len(parts) == 4 and parts[0] == "jobs" and parts[2] == "files":
                job = app.job(parts[1])
                if job.outcome is None:
                    raise _HTTPError(HTTPStatus.NOT_FOUND, "this job has no result")
                if parts[3] == "result.json":
                    body = json.dumps(job.outcome.doc, indent=1, allow_nan=False).encode()
                    self._send(HTTPStatus.OK, body, "application/json", _attachment(f"camlens-{job.id}.json"))
                    return
                found = job.outcome.files.get(parts[3])
                if found is None:
                    raise _HTTPError(HTTPStatus.NOT_FOUND, "no such file in this result")
                data, content_type = found
                extra = _attachment(parts[3]) if content_type != "image/png" else None
                self._send(HTTPStatus.OK, data, content_type, extra)
            else:
                raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")

    return Handler


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _photo_doc(photo_id: str, photo: Any) -> dict[str, Any]:
    return {"id": photo_id, "name": photo.name, "size": [photo.image.width, photo.image.height]}


def serve(
    models: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: Limits | None = None,
    trust: bool = False,
    workers: int = 1,
    announce: Any = None,
) -> None:
    """Serve the app until interrupted (Ctrl-C); ``announce(url)`` is called once it listens."""
    app = App(Workspace(models, limits, trust=trust), workers=workers)
    server = app.server(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_address[1]}/"
    if announce is not None:
        announce(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.close()
