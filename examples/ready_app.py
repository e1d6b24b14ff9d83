"""A minimal web application whose readiness endpoint is dbjobs' status.

    DBJOBS_DSN=postgresql://app@db/app python examples/ready_app.py --port 8080
    curl -i http://127.0.0.1:8080/ready

Standard library only, so it runs anywhere dbjobs does; the README shows the
same three lines in FastAPI, Flask and Django.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dbjobs.health


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._ready(send_body=True)

    def do_HEAD(self) -> None:  # probes that only look at the status code
        self._ready(send_body=False)

    def _ready(self, *, send_body: bool) -> None:
        if self.path != "/ready":
            self.send_error(404)
            return
        # The jobs installed in the database: no dbjobs.toml is needed where the app runs.
        code, body = dbjobs.health.readiness()
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", dbjobs.health.HEALTH_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description="serve GET and HEAD /ready from dbjobs' status")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_port}/ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
