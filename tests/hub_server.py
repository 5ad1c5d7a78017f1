"""A small local stand-in for the Hugging Face Hub HTTP API, for tests (FastAPI + uvicorn, no network).

It covers what ``huggingface_hub`` calls to create/delete repos, commit files, read repo info and trees and
download files, so ``push_to_hub``, ``from_pretrained(repo_id)``, ``snapshot_download`` and
``timm.create_model("hf-hub:...")`` run for real. Simplifications compared to the real Hub:

* preupload answers "regular" for every file: contents travel inline (base64) in the NDJSON commit, never LFS/Xet;
* each commit stores a full ``{path: {oid, size}}`` table (``oid`` = git blob sha1, also served as ``ETag``);
  contents live in a content-addressed ``blobs/`` folder; only branches (no tags, no pull requests);
* writes need a bearer token; any token is accepted unless ``required_token`` is set, then only that one (else 401).

Start it with :func:`running_hub_server`; the pytest fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}  # URL segment after /api/ -> repo type
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # repo type -> prefix of web/resolve URLs
NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
BAD_CREDENTIALS = "Invalid credentials in Authorization header"  # the message huggingface_hub maps to a plain 401


class HubError(Exception):
    """An error answered the way the Hub does: JSON ``{"error": ...}`` plus ``X-Error-Code``/``X-Error-Message``."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``: what the Hub reports as ``oid``/``blobId``/``ETag`` of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _card_data(readme: str) -> dict | None:
    """The YAML front matter of a README.md (``cardData`` in repo info), or None when there is none."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.S)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None


class Storage:
    """Repos as JSON (``refs`` + ``commits``) under ``root/repos``, contents under ``root/blobs``. No locking needed:
    every request runs on the server's single event loop thread."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    def meta_path(self, kind: str, repo_id: str) -> Path:
        return self.root / "repos" / kind / f"{repo_id}.json"

    def load(self, kind: str, repo_id: str) -> dict:
        if not self.meta_path(kind, repo_id).is_file():
            raise HubError(404, "RepoNotFound", f"Repository not found: {kind} {repo_id}")
        return json.loads(self.meta_path(kind, repo_id).read_text())

    def save(self, kind: str, repo_id: str, meta: dict) -> None:
        self.meta_path(kind, repo_id).parent.mkdir(parents=True, exist_ok=True)
        self.meta_path(kind, repo_id).write_text(json.dumps(meta, indent=1))

    def put_blob(self, data: bytes) -> dict:
        oid = git_blob_oid(data)
        if not self.blob_path(oid).exists():
            self.blob_path(oid).write_bytes(data)
        return {"oid": oid, "size": len(data)}

    def blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    @staticmethod
    def snapshot(meta: dict, revision: str) -> tuple[str, dict]:
        """Branch name or full commit sha -> (commit sha, its file table)."""
        sha = meta["refs"].get(revision, revision)
        if sha not in meta["commits"]:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, meta["commits"][sha]["files"]

    @staticmethod
    def commit(meta: dict, branch: str, files: dict, title: str, description: str = "") -> str:
        """Record a new immutable commit with the full file table ``files`` and move ``branch`` to it."""
        parent = meta["refs"].get(branch)
        sha = hashlib.sha1(json.dumps([parent, title, files, time.time_ns(), uuid.uuid4().hex]).encode()).hexdigest()
        meta["commits"][sha] = {
            "parent": parent,
            "title": title,
            "message": description,
            "date": _now(),
            "files": files,
        }
        meta["refs"][branch] = sha
        return sha


def create_app(storage_dir: str | Path, *, user: str = "test-user", required_token: str | None = None) -> FastAPI:
    """The Hub API app. ``app.state.required_token`` may be changed while it runs."""
    store = Storage(storage_dir)
    app = FastAPI(title="local test hub", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.required_token = required_token

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        headers = {"X-Error-Message": exc.message.encode("ascii", "replace").decode(), **exc.headers}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    def auth(request: Request, write: bool = False) -> str | None:
        """The request's token (None if anonymous); 401 if it is not acceptable."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        required = app.state.required_token
        if (required is not None and token != required) or (write and not token):
            raise HubError(401, None, BAD_CREDENTIALS)
        return token

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def checked_id(kind: str | None, ns: str | None, name: str | None) -> str:
        if kind not in URL_PREFIX or not (NAME_RE.match(ns or "") and NAME_RE.match(name or "")):
            raise HubError(400, None, f"Invalid repo type or name: {kind} {ns}/{name}")
        return f"{ns}/{name}"

    def open_repo(request: Request, kinds: str, ns: str, name: str, write: bool = False) -> tuple[str, str, dict]:
        token = auth(request, write)
        kind = KINDS.get(kinds)
        repo_id = checked_id(kind, ns, name)
        meta = store.load(kind, repo_id)
        if meta["private"] and token is None:
            raise HubError(404, "RepoNotFound", f"Repository not found: {kind} {repo_id}")
        return kind, repo_id, meta

    def entry(path: str, f: dict | None, sha: str) -> dict:
        if f is not None:
            return {"type": "file", "path": path, "size": f["size"], "oid": f["oid"]}
        return {
            "type": "directory",
            "path": path,
            "size": 0,
            "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(),
        }

    @app.get("/api/whoami-v2")
    async def whoami(request: Request) -> dict:
        if auth(request) is None:
            raise HubError(401, None, BAD_CREDENTIALS)
        return {
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "email": None,
            "orgs": [],
            "isPro": False,
            "canPay": False,
            "auth": {"type": "access_token", "accessToken": {"displayName": "local-test", "role": "write"}},
        }

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        body = await request.json()
        try:
            _card_data(body.get("content", ""))
        except yaml.YAMLError as e:
            return JSONResponse({"errors": [{"message": str(e)}], "warnings": []}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        auth(request, write=True)
        body = await request.json()
        kind = body.get("type") or "model"
        repo_id = checked_id(kind, body.get("organization") or user, body.get("name"))
        url = f"{base_url(request)}/{URL_PREFIX[kind]}{repo_id}"
        if store.meta_path(kind, repo_id).is_file():
            return JSONResponse({"error": f"You already created this {kind} repo", "url": url}, status_code=409)
        private = body.get("visibility") == "private" or bool(body.get("private"))
        meta = {"private": private, "createdAt": _now(), "sdk": body.get("sdk"), "refs": {}, "commits": {}}
        store.commit(meta, "main", {".gitattributes": store.put_blob(GITATTRIBUTES)}, "initial commit")
        store.save(kind, repo_id, meta)
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> Response:
        auth(request, write=True)
        body = await request.json()
        kind = body.get("type") or "model"
        repo_id = checked_id(kind, body.get("organization") or user, body.get("name"))
        store.load(kind, repo_id)  # 404 RepoNotFound if missing
        store.meta_path(kind, repo_id).unlink()
        return Response(status_code=200)

    @app.get("/api/{kinds}/{ns}/{name}")
    @app.get("/api/{kinds}/{ns}/{name}/revision/{revision}")
    async def repo_info(request: Request, kinds: str, ns: str, name: str, revision: str = "main") -> dict:
        kind, repo_id, meta = open_repo(request, kinds, ns, name)
        sha, files = store.snapshot(meta, revision)
        info = {
            "id": repo_id,
            "author": ns,
            "sha": sha,
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": meta["createdAt"],
            "lastModified": meta["commits"][sha]["date"],
            "siblings": [{"rfilename": p, "size": f["size"], "blobId": f["oid"]} for p, f in sorted(files.items())],
        }
        if "README.md" in files:
            with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
                card = _card_data(store.blob_path(files["README.md"]["oid"]).read_text("utf-8"))
                if card:
                    info["cardData"] = card
                    info["tags"] = list(card.get("tags") or [])
                    info.update({k: card[k] for k in ("library_name", "pipeline_tag") if k in card})
        if kind == "space":
            info["sdk"] = meta.get("sdk")
        return info

    @app.get("/api/{kinds}/{ns}/{name}/tree/{revision}")
    @app.get("/api/{kinds}/{ns}/{name}/tree/{revision}/{path:path}")
    async def tree(
        request: Request, kinds: str, ns: str, name: str, revision: str, path: str = "", recursive: bool = False
    ) -> list[dict]:
        _, _, meta = open_repo(request, kinds, ns, name)
        sha, files = store.snapshot(meta, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for p, f in files.items():
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, entry(folder, None, sha))
            if recursive or len(parts) == 1:
                entries[p] = entry(p, f, sha)
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha})
        return [entries[k] for k in sorted(entries)]

    @app.post("/api/{kinds}/{ns}/{name}/paths-info/{revision}")
    async def paths_info(request: Request, kinds: str, ns: str, name: str, revision: str) -> list[dict]:
        _, _, meta = open_repo(request, kinds, ns, name)
        sha, files = store.snapshot(meta, revision)
        out = []
        for p in (await request.form()).getlist("paths"):
            p = str(p).strip("/")
            if p in files or any(f.startswith(p + "/") for f in files):
                out.append(entry(p, files.get(p), sha))
        return out

    @app.post("/api/{kinds}/{ns}/{name}/preupload/{revision}")
    async def preupload(request: Request, kinds: str, ns: str, name: str, revision: str) -> dict:
        _, _, meta = open_repo(request, kinds, ns, name, write=True)
        _, files = store.snapshot(meta, revision)
        body = await request.json()
        return {
            "files": [  # "regular" => content goes inline into the commit; "oid" lets unchanged files be skipped
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": files.get(f["path"], {}).get("oid"),
                }
                for f in body.get("files", [])
            ]
        }

    @app.post("/api/{kinds}/{ns}/{name}/commit/{revision}")
    async def commit(request: Request, kinds: str, ns: str, name: str, revision: str, create_pr: bool = False) -> dict:
        kind, repo_id, meta = open_repo(request, kinds, ns, name, write=True)
        if create_pr:
            raise HubError(400, None, "Pull requests are not supported by the local test hub")
        head, files = store.snapshot(meta, revision)  # 404 RevisionNotFound if unknown
        if revision not in meta["refs"]:
            raise HubError(400, None, f"Can only commit to a branch, not to {revision}")
        files, header = dict(files), {}
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = store.put_blob(data)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
            else:  # "lfsFile": never requested, since preupload answers "regular" for everything
                raise HubError(400, None, f"Unsupported commit operation for the local test hub: {key}")
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
        sha = store.commit(meta, revision, files, header.get("summary", ""), header.get("description", ""))
        store.save(kind, repo_id, meta)
        url = f"{base_url(request)}/{URL_PREFIX[kind]}{repo_id}/commit/{sha}"
        return {"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}

    def resolve_file(request: Request, kinds: str, ns: str, name: str, revision: str, path: str) -> Response:
        _, _, meta = open_repo(request, kinds, ns, name)
        sha, files = store.snapshot(meta, revision)
        f = files.get(path)
        if f is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}", {"X-Repo-Commit": sha})
        headers = {"ETag": f'"{f["oid"]}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        return FileResponse(store.blob_path(f["oid"]), headers=headers, media_type="application/octet-stream")

    @app.api_route("/{ns}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_model_file(request: Request, ns: str, name: str, revision: str, path: str) -> Response:
        return resolve_file(request, "models", ns, name, revision, path)

    @app.api_route("/{prefix}/{ns}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_other_file(
        request: Request, prefix: str, ns: str, name: str, revision: str, path: str
    ) -> Response:
        if prefix not in ("datasets", "spaces"):
            raise HubError(404, "RepoNotFound", f"Repository not found: {prefix}/{ns}/{name}")
        return resolve_file(request, prefix, ns, name, revision, path)

    return app


class HubServer:
    """Handle on a running local hub: ``url``, the default ``token``, ``storage_dir`` and the live ``app``."""

    def __init__(self, url: str, app: FastAPI, storage_dir: Path, token: str, user: str):
        self.url, self.app, self.storage_dir, self.token, self.user = url, app, storage_dir, token, user
        self._counter = 0

    def new_repo_id(self, prefix: str = "repo") -> str:
        """A fresh ``user/prefix-N-xxxxxx`` id, so tests sharing one server never collide."""
        self._counter += 1
        return f"{self.user}/{prefix}-{self._counter}-{uuid.uuid4().hex[:6]}"

    @contextlib.contextmanager
    def require_token(self, token: str | None = None) -> Iterator[str]:
        """Within the block, every request must carry ``token`` (default: ``self.token``), else 401."""
        previous, self.app.state.required_token = self.app.state.required_token, token or self.token
        try:
            yield self.app.state.required_token
        finally:
            self.app.state.required_token = previous


@contextlib.contextmanager
def running_hub_server(
    storage_dir: str | Path,
    *,
    token: str = "hf_local_test_token",
    user: str = "test-user",
    required_token: str | None = None,
) -> Iterator[HubServer]:
    """Serve the local hub on 127.0.0.1 (free port) from a background thread; yields a :class:`HubServer`."""
    storage_dir = Path(storage_dir)
    app = create_app(storage_dir, user=user, required_token=required_token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="local-hub", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("local hub server failed to start")
            time.sleep(0.01)
        yield HubServer(f"http://127.0.0.1:{port}", app, storage_dir, token, user)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
