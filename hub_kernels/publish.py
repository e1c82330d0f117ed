"""Publish mol-grouped-gemm as a Hub kernel repo (repo type `kernel`), its build on branch `v<version>`.

    python hub_kernels/publish.py --repo ORG/NAME [--private]

Builds a fresh staged copy of the repo (build.toml, torch-ext/, build/torch-cpu, build/torch-cuda, the kernel card
from model_cards/kernel_card.md naming ORG/NAME), uploads it to `main` and to the version branch that
`get_kernel(ORG/NAME, version=N)` resolves (N is build.toml's version). Earlier build variants are deleted in the
same commits, so a variant that a newer build no longer makes cannot linger. Needs a write token (HF_TOKEN or
`hf auth login`).
"""

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi


def _load_sibling(name):
    """hub_kernels/<name>.py by path: `build` is also the name of a PyPA package that may be importable."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mol_hub_kernels_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_sibling("build")
KERNEL_DIR, default_repo_id, read_build_config, stage_repo = (
    _build.KERNEL_DIR, _build.default_repo_id, _build.read_build_config, _build.stage_repo
)


REPO_TYPE = "kernel"


def version_branch(version):
    return f"v{version}"


def publish(repo_id, private=False, kernel_dir=KERNEL_DIR, api=None):
    """Create/update the kernel repo; returns the version branch's commit id."""
    api = api or HfApi()
    general = read_build_config(kernel_dir)
    branch = version_branch(general["version"])
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mol-grouped-gemm-") as tmp:
        staged = stage_repo(Path(tmp) / general["name"], repo_id, kernel_dir, record_git=True)
        message = f"{general['name']} v{general['version']}: build/torch-cpu, build/torch-cuda"
        upload = dict(
            repo_id=repo_id, repo_type=REPO_TYPE, folder_path=staged, commit_message=message,
            delete_patterns=["build/**"], ignore_patterns=["**/__pycache__/**", "*.pyc"],
        )
        api.upload_folder(revision="main", **upload)
        branches = {ref.name for ref in api.list_repo_refs(repo_id, repo_type=REPO_TYPE).branches}
        if branch not in branches:
            api.create_branch(repo_id, repo_type=REPO_TYPE, branch=branch, revision="main")
        else:
            api.upload_folder(revision=branch, **upload)
    refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE).branches
    return next(ref.target_commit for ref in refs if ref.name == branch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repo", default=default_repo_id(), help="ORG/NAME (default: build.toml's [general.hub] repo-id)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)
    commit = publish(args.repo, private=args.private)
    version = read_build_config()["version"]
    print(f"published {args.repo} ({REPO_TYPE}) branch {version_branch(version)} at {commit}")
    print(f'load it with: kernels.get_kernel("{args.repo}", version={version}, trust_remote_code=True)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
