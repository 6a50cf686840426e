"""A stand-in for a data set's download mirror on localhost: the files of a folder over HTTP, each request counted,
and a file that can be cut off half-way (the full length announced, half the bytes sent, the connection closed)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(folder, cut=()):
    """Serve the files of folder; the first request of each name in cut gets half its bytes. (server, its URL,
    the count of requests per file name). server.shutdown() ends it."""
    requests, to_cut = {}, set(cut)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.lstrip("/")
            requests[name] = requests.get(name, 0) + 1
            path = Path(folder) / name
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in to_cut:
                to_cut.discard(name)
                self.wfile.write(body[:len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/", requests
