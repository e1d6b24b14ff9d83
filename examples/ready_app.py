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
        if self.path != "/ready":
            self.send_error(404)
            return
        code, body = dbjobs.health.readiness()
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", dbjobs.health.HEALTH_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description="serve GET /ready from dbjobs' status")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_port}/ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
