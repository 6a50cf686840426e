"""A stand-in for the Hugging Face Hub on localhost, so that huggingface_hub's own snapshot_download lays out a real
Hub cache in the tests, with no network: the model API's revision and tree listings, and the files behind
/<repo>/resolve/<revision>/<path> with the headers the client reads (X-Repo-Commit, ETag, Content-Length)."""

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def serve(repos):
    """Serve {repo id: folder} (every file under it) at one commit; (the server, its URL). server.shutdown() ends
    it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def files(self, repo):
            root = Path(repos[repo])
            return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

        def reply(self, body, headers=(), status=200, head=False):
            self.send_response(status)
            for key, value in (*headers, ("Content-Length", str(len(body)))):
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def route(self, head):
            path = urllib.parse.urlparse(self.path).path
            for repo in repos:
                api = f"/api/models/{repo}/"
                if path.startswith(api + "revision/"):
                    listing = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.files(repo)]}
                    return self.reply(json.dumps(listing).encode(), [("Content-Type", "application/json")])
                if path.startswith(api + "tree/"):
                    tree = [{"type": "file", "oid": hashlib.sha1(p.read_bytes()).hexdigest(), "size": p.stat().st_size,
                             "path": f} for f, p in self.files(repo).items()]
                    return self.reply(json.dumps(tree).encode(), [("Content-Type", "application/json")])
                resolve = f"/{repo}/resolve/"
                if path.startswith(resolve):
                    name = urllib.parse.unquote(path[len(resolve):].split("/", 1)[1])
                    if name in self.files(repo):
                        body = self.files(repo)[name].read_bytes()
                        return self.reply(body, [("X-Repo-Commit", COMMIT),
                                                 ("ETag", f'"{hashlib.sha1(body).hexdigest()}"')], head=head)
            self.reply(b"", [("X-Error-Code", "RepoNotFound")], status=404, head=head)

        def do_GET(self):
            self.route(False)

        def do_HEAD(self):
            self.route(True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
