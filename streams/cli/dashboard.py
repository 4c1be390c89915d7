"""`recal dashboard`: the calibration dashboard against any Redis, without a worker.

Serves the same pages as a worker (`/dashboard`, `/dashboard/map?model=..&segment=..`) from a small
threaded http.server; every request reads Redis afresh. Binds 127.0.0.1 unless told otherwise (`--host`);
with RECAL_WEB_TOKEN set, pages want `Authorization: Bearer <token>` (/healthz does not).
"""

from __future__ import annotations

import argparse
import logging
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import redis

from streams.cli import connect
from streams.dashboard.pages import DashboardSource
from streams.pipeline.web import bearer_ok

log = logging.getLogger("recal.dashboard")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("dashboard", help="serve the calibration dashboard (HTML) for a Redis")
    connect.add_redis_argument(parser)
    parser.add_argument("--prefix", default="recal", help="key prefix (namespace) to show (default: recal)")
    parser.add_argument("--port", type=int, default=8050, help="HTTP port (default 8050)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.set_defaults(func=cmd_dashboard)
    return parser


def make_server(source: DashboardSource, host: str, port: int, token: str = "") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/healthz" and not bearer_ok(self.headers.get("Authorization"), token):
                self._send(401, b"unauthorized", content_type="text/plain", extra={"WWW-Authenticate": "Bearer"})
                return
            try:
                if url.path in ("/", ""):
                    self._send(302, b"", extra={"Location": "/dashboard"})
                elif url.path.rstrip("/") == "/dashboard":
                    self._send(200, source.index_html().encode())
                elif url.path.rstrip("/") == "/dashboard/map":
                    query = parse_qs(url.query)
                    status, page = source.map_html(
                        query.get("model", [""])[0], query.get("model_version", [""])[0], query.get("segment", ["*"])[0]
                    )
                    self._send(status, page.encode())
                elif url.path == "/healthz":
                    self._send(200, b'{"ok": true}', content_type="application/json")
                else:
                    self._send(404, b"not found", content_type="text/plain")
            except redis.RedisError as exc:
                self._send(503, f"Redis unavailable: {type(exc).__name__}".encode(), content_type="text/plain")

        def _send(
            self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8", extra: dict | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug(fmt, *args)

    return ThreadingHTTPServer((host, port), Handler)


def cmd_dashboard(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(connect.redis_url(args.redis), socket_timeout=2.0, socket_connect_timeout=2.0)
    token = os.environ.get("RECAL_WEB_TOKEN", "")
    server = make_server(DashboardSource(client, prefix=args.prefix), args.host, args.port, token)
    host, port = server.server_address[:2]
    print(f"recal dashboard on http://{host}:{port}/dashboard (prefix {args.prefix!r})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        client.close()
    return 0
