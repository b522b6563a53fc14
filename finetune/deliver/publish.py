"""Publish a trained adapter or merged model, with its model card, to the Hugging Face Hub."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its connection and timeout errors reach us unwrapped
from huggingface_hub import ModelCard, constants, create_branch, create_repo, get_token, upload_folder
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
import yaml

from finetune.errors import PipelineError

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model*.safetensors", "pytorch_model*.bin", "*.gguf")
log = logging.getLogger(__name__)


def check_publishable(folder: Path) -> None:
    """A folder is published only with its weights and a README.md model card with metadata."""
    if not folder.is_dir():
        raise PipelineError(f"{folder} is not a folder; point at a release folder made by `dvc repro export` "
                            "(models/release/adapter, merged or gguf)")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHTS):
        raise PipelineError(f"{folder} holds no model weights ({', '.join(WEIGHTS)}); make them with "
                            "`dvc repro export` (models/release/adapter, merged and gguf)")
    if not _card_metadata(folder / "README.md"):
        raise PipelineError(f"{folder} has no README.md model card with metadata; `dvc repro export` writes the "
                            f"release folders with theirs, or write one with `finetune card {folder}`")


def _card_metadata(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return ModelCard.load(path).data.to_dict()
    except (yaml.YAMLError, ValueError):  # a metadata block that is not YAML is no card either
        return {}


def _hub_error(folder: Path, repo_id: str, reason: str) -> PipelineError:
    return PipelineError(
        f"cannot publish {folder} to the Hugging Face Hub as {repo_id} ({reason}); log in with `hf auth login` or "
        f"set HF_TOKEN to a token with write access, check the network (and that HF_HUB_OFFLINE is unset), or copy "
        f"{folder} to a connected machine and run `finetune publish {folder} --repo-id {repo_id}` there")


def _reason(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    server = getattr(error, "server_message", None)  # the hub's own words, e.g. "Invalid credentials ..."
    first += f": {' '.join(server.split())}" if server and server not in first else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            revision: str | None = None) -> str:
    """Create `repo_id` if needed and upload the folder to it (on branch `revision`, made if missing); returns the commit URL.

    Any network or login failure becomes one PipelineError line that says what to do.
    """
    folder = Path(folder)
    check_publishable(folder)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # else one log line per request (stage.run quiets "httpx")
    if not (token or get_token()):
        raise _hub_error(folder, repo_id, "no Hugging Face token found")
    try:
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        if revision:
            create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        commit = upload_folder(repo_id=repo_id, folder_path=folder, token=token, revision=revision,
                               commit_message=f"Upload {folder.name} from the finetune pipeline")
    except HFValidationError as e:
        raise PipelineError(f"--repo-id '{repo_id}' is not a valid repository id ({_reason(e)}); "
                            "use 'user-or-organisation/name'") from None
    except httpx2.TransportError as e:  # DNS, refused connection, timeout: say which endpoint
        raise _hub_error(folder, repo_id, f"cannot reach {constants.ENDPOINT}: {_reason(e)}") from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as e:  # OSError: offline mode, sockets
        raise _hub_error(folder, repo_id, _reason(e)) from None
    log.info("published %s to %s", folder, commit.commit_url)
    return commit.commit_url
