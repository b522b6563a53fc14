import http.server
import os
import subprocess
import sys
import threading

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from finetune.deliver.card import model_card, write_card
from finetune.deliver.publish import publish
from finetune.errors import PipelineError
from tests.conftest import ROOT
from tests.deliver.test_card import INSTACART_EVAL, INSTACART_RUN

REPO_ID = "someone/instacart-adapter"


@pytest.fixture
def adapter_folder(tmp_path):
    """A folder as train_qlora and the card command leave it: adapter weights and a README.md card."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 8)}, folder / "adapter_model.safetensors")
    write_card(folder, model_card(INSTACART_RUN, INSTACART_EVAL, "adapter"))
    return folder


def publish_in_a_stage(folder, tmp_path, **env) -> subprocess.CompletedProcess:
    """`publish` run as the CLI runs it (finetune.stage.run), in a fresh process with its own hub settings."""
    code = f"from finetune.deliver.publish import publish\npublish({str(folder)!r}, {REPO_ID!r})\n"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no real token or endpoint leaks in
    env = {**clean, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf_home"), **env}
    return subprocess.run([sys.executable, "-c", f"from finetune.stage import run\nrun(lambda: exec({code!r}))"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)


def the_one_line(proc: subprocess.CompletedProcess, folder) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    message = lines[0]
    assert message.startswith(f"error: cannot publish {folder} to the Hugging Face Hub as {REPO_ID} (")
    assert "`hf auth login`" in message and "HF_TOKEN" in message and "check the network" in message
    assert f"copy {folder} to a connected machine and run `finetune publish {folder} --repo-id {REPO_ID}` there" in message
    return message


def test_offline_mode_is_one_line_that_says_what_to_do(adapter_folder, tmp_path):
    message = the_one_line(publish_in_a_stage(adapter_folder, tmp_path, HF_HUB_OFFLINE="1", HF_TOKEN="hf_fake"),
                           adapter_folder)
    assert "offline mode is enabled" in message


def test_an_unreachable_hub_is_one_line_that_names_the_endpoint(adapter_folder, tmp_path):
    message = the_one_line(publish_in_a_stage(adapter_folder, tmp_path, HF_ENDPOINT="http://127.0.0.1:9",
                                              HF_TOKEN="hf_fake"), adapter_folder)
    assert "cannot reach http://127.0.0.1:9: ConnectError" in message


def test_no_token_is_one_line_before_any_request(adapter_folder, tmp_path):
    # The endpoint would refuse the connection: the message shows no request was tried.
    message = the_one_line(publish_in_a_stage(adapter_folder, tmp_path, HF_ENDPOINT="http://127.0.0.1:9"), adapter_folder)
    assert "(no Hugging Face token found)" in message


class RejectingHub(http.server.BaseHTTPRequestHandler):
    """A hub endpoint that turns every token away, as huggingface.co does a revoked one."""

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST

    def log_message(self, *args):
        pass


def test_a_rejected_token_is_one_line(adapter_folder, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RejectingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = publish_in_a_stage(adapter_folder, tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
                                  HF_TOKEN="hf_revoked")
    finally:
        server.shutdown()
        server.server_close()
    message = the_one_line(proc, adapter_folder)
    assert "401" in message and "Invalid credentials" in message


def test_a_folder_without_a_card_is_refused_with_the_command_that_writes_one(adapter_folder, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a request would fail with another message
    (adapter_folder / "README.md").unlink()
    with pytest.raises(PipelineError, match=f"has no README.md model card with metadata; `dvc repro export` writes .*"
                                            f"or write one with `finetune card {adapter_folder}`"):
        publish(adapter_folder, REPO_ID, token="hf_fake")
    (adapter_folder / "README.md").write_text("# notes, no metadata\n")
    with pytest.raises(PipelineError, match="has no README.md model card"):
        publish(adapter_folder, REPO_ID, token="hf_fake")
    (adapter_folder / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    with pytest.raises(PipelineError, match="has no README.md model card"):
        publish(adapter_folder, REPO_ID, token="hf_fake")


def test_a_folder_without_weights_is_refused_with_the_commands_that_make_them(adapter_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (adapter_folder / "adapter_model.safetensors").unlink()
    with pytest.raises(PipelineError, match="holds no model weights .*; make them with `dvc repro export`"):
        publish(adapter_folder, REPO_ID, token="hf_fake")
    with pytest.raises(PipelineError, match="is not a folder; point at a release folder made by `dvc repro export`"):
        publish(tmp_path / "missing", REPO_ID, token="hf_fake")


def test_a_malformed_repo_id_is_its_own_error(adapter_folder, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # checked before any request
    with pytest.raises(PipelineError, match="--repo-id 'a/b/c' is not a valid repository id"):
        publish(adapter_folder, "a/b/c", token="hf_fake")
