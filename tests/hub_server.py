"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for tests (point ``HF_ENDPOINT`` at it).

It speaks the endpoints ``huggingface_hub`` (2.x) uses to create a repo, upload a folder and
download files:

- ``POST /api/repos/create``                          create a model repo (409 when it exists)
- ``POST /api/validate-yaml``                          README metadata check (YAML must parse)
- ``POST /api/models/{repo}/preupload/{rev}``          per file: ``regular`` or ``lfs`` upload mode
- ``POST /{repo}.git/info/lfs/objects/batch``          LFS batch API, ``basic`` transfer
- ``PUT  /_lfs/{oid}``, ``POST /_lfs/{oid}/verify``    LFS object upload (sha256 checked) and verify
- ``POST /api/models/{repo}/commit/{rev}``             NDJSON commit: inline base64 files, LFS pointers, deletions
- ``GET  /api/models/{repo}[/revision/{rev}]``         model info (sha, siblings)
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``      file listing; ``POST .../paths-info/{rev}``
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``            file metadata (ETag, X-Repo-Commit, X-Linked-*) and content
- ``GET  /api/whoami-v2``

Errors carry the ``X-Error-Code`` header huggingface_hub maps to its exceptions (RepoNotFound,
RevisionNotFound, EntryNotFound). Writes need ``Authorization: Bearer <token>`` when the server has
a token; reads of private repos too. Files whose name ends with one of ``lfs_suffixes`` (or that
are larger than ``lfs_threshold``) get the ``lfs`` upload mode, the rest are sent inline. With
``hf_xet`` installed, huggingface_hub uploads LFS-mode files through Xet storage, which this server
does not speak: set ``HF_HUB_DISABLE_XET=1`` in the client, or ``lfs_suffixes=()`` so that
everything is inline.

The server runs in a daemon thread and stops itself after ``lifetime`` seconds (or on ``stop()`` /
leaving the ``with`` block). Every request is logged in ``requests`` as (method, path, status).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.id, self.private = repo_id, private
        self.files: dict[str, bytes] = {}
        self.lfs: set[str] = set()
        self.commits: list[dict] = []
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.commit("initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, set(), [])

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"]

    def commit(self, summary: str, files: dict, lfs: set, deleted: list) -> str:
        for path in deleted:
            self.files.pop(path, None)
            self.lfs.discard(path)
        for path, data in files.items():
            self.files[path] = data
            (self.lfs.add if path in lfs else self.lfs.discard)(path)
        seed = f"{self.id}:{len(self.commits)}:{summary}:{sorted((p, hashlib.sha256(d).hexdigest()) for p, d in self.files.items())}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        self.commits.append({"oid": oid, "summary": summary})
        return oid

    def oid(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_sha1(data)


class FakeHub:
    def __init__(self, token: str | None = None, user: str = "user", lfs_suffixes=(".safetensors",),
                 lfs_threshold: int = 10 * 1024 * 1024, lifetime: float = 300.0):
        self.token, self.user = token, user
        self.lfs_suffixes, self.lfs_threshold, self.lifetime = tuple(lfs_suffixes), lfs_threshold, lifetime
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self._server = None
        self._timer = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # waits for serve_forever to return (never called from that thread)
            server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def upload_mode(self, path: str, size: int) -> str:
        return "lfs" if path.endswith(self.lfs_suffixes) or size > self.lfs_threshold else "regular"


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    @property
    def hub(self) -> FakeHub:
        return self.server_hub

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body=b"", headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def _error(self, status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _repo(self, repo_id: str, write: bool = False):
        repo = self.hub.repos.get(repo_id)
        if write and not self._authorized():
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.private and not self._authorized()):
            self._error(404 if repo is None else 401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _revision(self, repo: Repo, rev: str) -> bool:
        if unquote(rev) in ("main", repo.head) or any(c["oid"] == unquote(rev) for c in repo.commits):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        return False

    def _route(self, routes):
        path = urlsplit(self.path).path
        for method, pattern, fn in routes:
            if method == self.command:
                m = re.fullmatch(pattern, path)
                if m:
                    with self.hub.lock:
                        return fn(self, **{k: unquote(v) for k, v in m.groupdict().items() if v is not None})
        self._error(404, None, f"no route for {self.command} {path}")

    def do_GET(self):
        self._route(ROUTES)

    def do_HEAD(self):
        self._route(ROUTES)

    def do_POST(self):
        self._route(ROUTES)

    def do_PUT(self):
        self._route(ROUTES)

    # ------------------------------------------------------------------ endpoints
    def whoami(self):
        if not self._authorized() or self.hub.token is None:
            return self._error(401, None, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": self.hub.user, "auth": {"type": "access_token"}})

    def create_repo(self):
        body = json.loads(self._body() or b"{}")
        if not self._authorized() or self.hub.token is None:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if body.get("type", "model") != "model":
            return self._error(400, None, "this test server only hosts model repos")
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        self.hub.repos[repo_id] = Repo(repo_id, private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self):
        content = json.loads(self._body() or b"{}").get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as err:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []})
        if not isinstance(meta, (dict, type(None))):
            return self._send(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, repo, rev):
        repo = self._repo(repo, write=True)
        if repo is None or not self._revision(repo, rev):
            return
        files = []
        for f in json.loads(self._body())["files"]:
            path = f["path"]
            files.append({"path": path, "uploadMode": self.hub.upload_mode(path, int(f["size"])),
                          "shouldIgnore": False, "oid": repo.oid(path) if path in repo.files else None})
        self._send(200, {"files": files, "commitOid": repo.head})

    def lfs_batch(self, repo):
        repo = self._repo(repo, write=True)
        if repo is None:
            return
        body = json.loads(self._body())
        if body.get("operation") != "upload":
            return self._error(400, None, "only upload batches are supported")
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_store:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{oid}"},
                                    "verify": {"href": f"{self.hub.url}/_lfs/{oid}/verify"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, "sha256 mismatch")
        self.hub.lfs_store[oid] = data
        self._send(200, b"", content_type="text/plain")

    def lfs_verify(self, oid):
        body = json.loads(self._body() or b"{}")
        ok = oid in self.hub.lfs_store and len(self.hub.lfs_store[oid]) == int(body.get("size", -1))
        self._send(200 if ok else 404, {"ok": ok})

    def commit(self, repo, rev):
        repo = self._repo(repo, write=True)
        if repo is None or not self._revision(repo, rev):
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((l["value"] for l in lines if l["key"] == "header"), {})
        files, lfs, deleted = {}, set(), []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    return self._error(400, None, "only base64 file content")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_store:
                    return self._error(422, None, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = self.hub.lfs_store[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                deleted.append(value["path"])
            elif key == "deletedFolder":
                deleted += [p for p in repo.files if p.startswith(value["path"].rstrip("/") + "/")]
            elif key != "header":
                return self._error(400, None, f"unsupported commit operation {key!r}")
        oid = repo.commit(header.get("summary", ""), files, lfs, deleted)
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo.id}/commit/{oid}",
                         "pullRequestUrl": None})

    def _entry(self, repo: Repo, path: str) -> dict:
        data = repo.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if path in repo.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def model_info(self, repo, rev=None):
        repo = self._repo(repo)
        if repo is None or (rev is not None and not self._revision(repo, rev)):
            return
        self._send(200, {
            "id": repo.id, "modelId": repo.id, "author": repo.id.split("/")[0], "sha": repo.head,
            "private": repo.private, "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
            "pipeline_tag": "depth-estimation", "library_name": "transformers",
            "createdAt": repo.created, "lastModified": repo.created,
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
        })

    def tree(self, repo, rev, path=""):
        repo = self._repo(repo)
        if repo is None or not self._revision(repo, rev):
            return
        prefix = path.strip("/")
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for p in sorted(repo.files):
            if prefix and not p.startswith(prefix + "/"):
                continue
            rest = p[len(prefix) + 1:] if prefix else p
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            entries.append(self._entry(repo, p))
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
                    for f in sorted(folders)]
        self._send(200, entries)

    def paths_info(self, repo, rev):
        repo = self._repo(repo)
        if repo is None or not self._revision(repo, rev):
            return
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        self._send(200, [self._entry(repo, p) for p in paths if p in repo.files])

    def resolve(self, repo, rev, path):
        repo = self._repo(repo)
        if repo is None or not self._revision(repo, rev):
            return
        if path not in repo.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.head, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
        if path in repo.lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")


ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_put),
    ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", _Handler.lfs_verify),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("GET", rf"/api/models/{REPO}", _Handler.model_info),
    ("GET", rf"/api/models/{REPO}/revision/(?P<rev>[^/]+)", _Handler.model_info),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("POST", rf"/api/models/{REPO}/paths-info/(?P<rev>[^/]+)", _Handler.paths_info),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
]
