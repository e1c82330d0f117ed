"""A Hugging Face Hub-compatible server for tests, on loopback, that accepts uploads.

It speaks the HTTP API that the real `huggingface_hub`, `transformers`, `datasets` and `kernels` clients use:
whoami, organization overview (with the trusted-kernel-publisher flag), repo create/delete, repo info with
siblings, refs, branches, tree, paths-info, preupload, ndjson commits (regular and LFS files, deletions), the
git-LFS batch and upload endpoints, and resolve (HEAD/GET, ETag, X-Repo-Commit, Range). Repos live in memory
for the life of the server. Clients must run with HF_HUB_DISABLE_XET=1 so that uploads go through LFS rather
than Xet storage.
"""

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class StoredFile:
    size: int
    git_oid: str
    content: bytes = b""  # regular files
    lfs_oid: str | None = None  # LFS files: the sha256 of the content, kept in the LFS store


@dataclass
class Commit:
    sha: str
    files: dict
    message: str
    parent: str | None
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    commits: dict = field(default_factory=dict)
    branches: dict = field(default_factory=dict)

    def resolve(self, revision):
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


def git_blob_oid(content):
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def error(status, code, message):
    return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code})


class HubState:
    def __init__(self, user="mol-tester", orgs=("mol-encoders", "mol-org", "mol-tests")):
        self.user, self.orgs = user, list(orgs)
        self.trusted_kernel_publishers = set()  # orgs whose kernels `kernels` loads without trust_remote_code
        self.repos = {}
        self.lfs = {}
        self.requests = []
        self.gated = set()  # (kind, repo id) whose conditions this user has not accepted: files are refused

    def new_commit(self, repo, files, message, parent):
        seed = json.dumps([repo.id, message, parent, sorted(files), time.time_ns()]).encode()
        commit = Commit(sha=hashlib.sha1(seed).hexdigest(), files=files, message=message, parent=parent)
        repo.commits[commit.sha] = commit
        return commit


    def pin_revision(self, kind, repo_id, sha):
        """Give the head commit of `repo_id`'s main branch the id `sha` as well: clients that ask for a pinned
        revision (mteb pins every task's dataset commit) find the uploaded files there. The real Hub's history
        cannot be recreated, only the commit a client asks for."""
        repo = self.repos[(kind, repo_id)]
        head = repo.commits[repo.branches["main"]]
        repo.commits[sha] = Commit(sha=sha, files=dict(head.files), message=head.message, parent=head.parent)


class HubApp:
    def __init__(self, state):
        self.state = state
        self.base = ""
        api_repo = r"/api/(?P<kind>models|datasets|spaces|kernels)/(?P<repo>[^/]+/[^/]+)"
        web_repo = r"/(?:(?P<kind>datasets|spaces|kernels)/)?(?P<repo>[^/]+/[^/]+?)"
        self.routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("GET", r"/api/organizations/(?P<org>[^/]+)/overview", self.organization_overview),
            ("POST", r"/api/repos/create", self.create_repo),
            ("DELETE", r"/api/repos/delete", self.delete_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", api_repo + r"/refs", self.refs),
            ("POST", api_repo + r"/branch/(?P<branch>.+)", self.create_branch),
            ("DELETE", api_repo + r"/branch/(?P<branch>.+)", self.delete_branch),
            ("GET", api_repo + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", self.tree),
            ("POST", api_repo + r"/paths-info/(?P<revision>.+)", self.paths_info),
            ("POST", api_repo + r"/preupload/(?P<revision>.+)", self.preupload),
            ("POST", api_repo + r"/commit/(?P<revision>.+)", self.commit),
            ("GET", api_repo + r"/commits/(?P<revision>.+)", self.list_commits),
            ("GET", api_repo + r"/auth-check", self.auth_check),
            ("GET", api_repo + r"(?:/revision/(?P<revision>.+))?", self.repo_info),
            ("POST", web_repo + r"\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", self.lfs_verify),
            ("GET", web_repo + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self.resolve),
            ("HEAD", web_repo + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self.resolve),
        ]
        self.compiled = [(method, re.compile(pattern + r"$"), handler) for method, pattern, handler in self.routes]
        self.app = Starlette(
            routes=[Route("/{path:path}", self.dispatch, methods=["GET", "HEAD", "POST", "PUT", "DELETE"])]
        )

    async def dispatch(self, request: Request):
        body = await request.body()  # always read the body, so the client never sees a reset connection
        path = request.url.path
        self.state.requests.append((request.method, path))
        for method, pattern, handler in self.compiled:
            match = pattern.match(path)
            if match and method == request.method:
                params = {k: v for k, v in match.groupdict().items()}
                if "kind" in params:
                    params["kind"] = PLURAL.get(params["kind"] or "models", "model")
                    gated = (params["kind"], params.get("repo")) in self.state.gated
                    if gated and handler in (self.resolve, self.auth_check, self.paths_info):
                        # As the Hub answers for a gated repo whose conditions the user has not accepted: its card
                        # and file list are public, its files are not (401 without a token, 403 with one).
                        status = 403 if self._authorised(request) else 401
                        return error(status, "GatedRepo", f"Access to {params['kind']} {params['repo']} is restricted "
                                     "and you are not in the authorized list. Visit the repo page to ask for access.")
                return handler(request, body, **params)
        return error(404, "EntryNotFound", f"{request.method} {path}: no such endpoint")

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _url(self, request, path):
        return f"{request.url.scheme}://{request.url.netloc}{path}"

    def _repo(self, kind, repo):
        found = self.state.repos.get((kind, repo))
        if found is None:
            return None, error(404, "RepoNotFound", f"Repository {kind} {repo} not found")
        return found, None

    def _commit(self, repo, revision):
        commit = repo.resolve(revision or "main")
        if commit is None:
            return None, error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit, None

    def _repo_commit(self, kind, repo, revision):
        found, failure = self._repo(kind, repo)
        commit, failure = (None, failure) if failure else self._commit(found, revision)
        return found, commit, failure

    def _authorised(self, request):
        return request.headers.get("authorization", "").startswith("Bearer ")

    def _entry(self, path, stored):
        entry = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
        if stored.lfs_oid:
            entry["lfs"] = {"oid": stored.lfs_oid, "size": stored.size, "pointerSize": 134}
        return entry

    # ---- account and repos ----------------------------------------------------------------------------------------
    def whoami(self, request, body):
        if not self._authorised(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return JSONResponse({
            "type": "user",
            "name": self.state.user,
            "fullname": "MoL tester",
            "orgs": [{"name": org, "roleInOrg": "write"} for org in self.state.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
        })

    def organization_overview(self, request, body, org):
        if org not in self.state.orgs:
            return error(404, "OrganizationNotFound", f"Organization {org} not found")
        return JSONResponse({
            "name": org, "fullname": org, "avatarUrl": "", "numUsers": 1,
            "trustedKernelPublisher": org in self.state.trusted_kernel_publishers,
        })

    def create_repo(self, request, body):
        if not self._authorised(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        payload = json.loads(body or b"{}")
        kind = payload.get("type") or "model"
        namespace = payload.get("organization") or self.state.user
        repo_id = f"{namespace}/{payload['name']}"
        url = self._url(request, f"/{TYPE_PREFIX[kind]}{repo_id}")
        if (kind, repo_id) in self.state.repos:
            return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
        repo = Repo(type=kind, id=repo_id, private=bool(payload.get("private")))
        attributes = StoredFile(size=len(GITATTRIBUTES), git_oid=git_blob_oid(GITATTRIBUTES), content=GITATTRIBUTES)
        first = self.state.new_commit(repo, {".gitattributes": attributes}, "initial commit", None)
        repo.branches["main"] = first.sha
        self.state.repos[(kind, repo_id)] = repo
        return JSONResponse({"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, request, body):
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or self.state.user
        key = (payload.get("type") or "model", f"{namespace}/{payload['name']}")
        if self.state.repos.pop(key, None) is None:
            return error(404, "RepoNotFound", f"Repository {key[1]} not found")
        return JSONResponse({})

    def validate_yaml(self, request, body):
        return JSONResponse({"errors": [], "warnings": []})

    def repo_info(self, request, body, kind, repo, revision=None):
        found, commit, failure = self._repo_commit(kind, repo, revision)
        if failure:
            return failure
        siblings = [{"rfilename": path, "size": f.size} | ({"lfs": {"sha256": f.lfs_oid, "size": f.size, "pointerSize": 134}} if f.lfs_oid else {})
                    for path, f in sorted(commit.files.items())]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))
        return JSONResponse({
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit.sha, "private": found.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "lastModified": stamp, "createdAt": stamp, "usedStorage": sum(f.size for f in commit.files.values()),
        })

    def auth_check(self, request, body, kind, repo):
        found, failure = self._repo(kind, repo)
        return failure or JSONResponse({})

    def refs(self, request, body, kind, repo):
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in found.branches.items()]
        return JSONResponse({"branches": branches, "tags": [], "converts": []})

    def create_branch(self, request, body, kind, repo, branch):
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        if branch in found.branches:
            return JSONResponse({"error": f"Reference refs/heads/{branch} already exists"}, status_code=409)
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        commit, failure = self._commit(found, start)
        if failure:
            return failure
        found.branches[branch] = commit.sha
        return JSONResponse({})

    def delete_branch(self, request, body, kind, repo, branch):
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        if found.branches.pop(branch, None) is None:
            return error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        return JSONResponse({})

    def list_commits(self, request, body, kind, repo, revision):
        found, commit, failure = self._repo_commit(kind, repo, revision)
        if failure:
            return failure
        history = []
        while commit is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))
            history.append({"id": commit.sha, "title": commit.message, "message": "", "date": stamp, "authors": []})
            commit = found.commits.get(commit.parent)
        return JSONResponse(history)

    # ---- listing --------------------------------------------------------------------------------------------------
    def tree(self, request, body, kind, repo, revision, path=None):
        found, commit, failure = self._repo_commit(kind, repo, revision)
        if failure:
            return failure
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = request.query_params.get("recursive") in ("1", "true", "True")
        if path and not any(p.startswith(prefix) for p in commit.files):
            return error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        entries, folders = [], set()
        for file_path, stored in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
            if recursive or len(rest) == 1:
                entries.append(self._entry(file_path, stored))
        return JSONResponse(entries)

    def paths_info(self, request, body, kind, repo, revision):
        found, commit, failure = self._repo_commit(kind, repo, revision)
        if failure:
            return failure
        if request.headers.get("content-type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entries.append(self._entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                entries.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path})
        return JSONResponse(entries)

    # ---- uploads --------------------------------------------------------------------------------------------------
    def preupload(self, request, body, kind, repo, revision):
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            binary = b"\0" in sample or item.get("size", 0) > 10 * 1024 * 1024
            files.append({"path": item["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False})
        return JSONResponse({"files": files, "commitOid": found.branches.get(revision)})

    def lfs_batch(self, request, body, kind, repo):
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        if not self._authorised(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        objects = []
        for item in json.loads(body)["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.state.lfs:
                href = self._url(request, f"/_lfs/{item['oid']}")
                entry["actions"] = {"upload": {"href": href, "header": {}}, "verify": {"href": href + "/verify", "header": {}}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json")

    def lfs_upload(self, request, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return error(400, "BadRequest", f"content does not hash to {oid}")
        self.state.lfs[oid] = body
        return Response(status_code=200)

    def lfs_verify(self, request, body, oid):
        if oid not in self.state.lfs:
            return error(404, "EntryNotFound", f"LFS object {oid} was never uploaded")
        return JSONResponse({})

    def commit(self, request, body, kind, repo, revision):
        if not self._authorised(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        found, failure = self._repo(kind, repo)
        if failure:
            return failure
        if revision not in found.branches:
            return error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        files = dict(found.commits[found.branches[revision]].files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = StoredFile(size=len(content), git_oid=git_blob_oid(content), content=content)
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return error(422, "BadRequest", f"LFS object {value['oid']} for {value['path']} was not uploaded")
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {value['size']}\n"
                files[value["path"]] = StoredFile(
                    size=value["size"], git_oid=git_blob_oid(pointer.encode()), lfs_oid=value["oid"]
                )
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return error(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
        commit = self.state.new_commit(found, files, header.get("summary", ""), found.branches[revision])
        found.branches[revision] = commit.sha
        url = self._url(request, f"/{TYPE_PREFIX[kind]}{repo}/commit/{commit.sha}")
        return JSONResponse({"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    # ---- downloads ------------------------------------------------------------------------------------------------
    def resolve(self, request, body, kind, repo, revision, path):
        found, commit, failure = self._repo_commit(kind, repo, revision)
        if failure:
            return failure
        stored = commit.files.get(path)
        if stored is None:
            return error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        content = self.state.lfs[stored.lfs_oid] if stored.lfs_oid else stored.content
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{stored.git_oid}"', "Accept-Ranges": "bytes"}
        if stored.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{stored.lfs_oid}"', "X-Linked-Size": str(stored.size)})
        status = 200
        ranged = re.match(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(content))
            return Response(status_code=status, headers=headers)
        return Response(content, status_code=status, headers=headers, media_type="application/octet-stream")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HubServer:
    """Runs the app with uvicorn in a background thread: `with HubServer(port) as hub: hub.endpoint ...`."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.state = HubState()
        config = uvicorn.Config(HubApp(self.state).app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the loopback Hub did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
