"""`finetune serve` as a process: SIGTERM lets a streamed answer finish and exits 0; the command refuses what it
cannot do in one `error:` line, before any model loads."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from finetune import cli
from tests.conftest import ROOT
from tests.serve.conftest import free_port


def error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_sigterm_during_a_streamed_answer_lets_it_finish_and_exits_0(chatter):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "finetune.cli", "serve", "--adapter", str(chatter), "--port",
                               str(port), "--window-ms", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": "adapter", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            first = next(lines)
            server.send_signal(signal.SIGTERM)  # the answer has begun; its 200 tokens are yet to come
            rest = [line for line in lines if line]
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in rest[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 200 and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert sum(bool(c["choices"] and c["choices"][0]["delta"].get("content")) for c in chunks) > 100
    assert server.returncode == 0, err
    assert "Traceback" not in err and "stopped" in out


def test_a_host_beyond_this_machine_needs_a_key_or_a_flag_that_says_so(capsys, monkeypatch, chatter):
    monkeypatch.delenv("FINETUNE_API_KEY", raising=False)
    err = error_line(capsys, ["serve", "--adapter", str(chatter), "--host", "0.0.0.0"])
    assert "--api-key" in err and "--allow-unauthenticated" in err


def test_a_limit_out_of_range_is_one_line_naming_the_option(capsys, chatter):
    err = error_line(capsys, ["serve", "--adapter", str(chatter), "--max-batch", "0"])
    assert "--max-batch is 0" in err
    err = error_line(capsys, ["serve", "--adapter", str(chatter), "--port", "70000"])
    assert "--port is 70000" in err


def test_a_port_taken_is_one_line_before_the_model_loads(capsys, chatter):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        err = error_line(capsys, ["serve", "--adapter", str(chatter), "--port", str(taken.getsockname()[1])])
    assert "cannot listen on 127.0.0.1" in err and "--port" in err
