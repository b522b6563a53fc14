"""The server's process: load the model, listen, and on SIGTERM or Ctrl-C finish the requests in flight (a streamed
answer completes), drain the model's thread and exit 0."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from finetune.errors import PipelineError
from finetune.serve.limits import Limits


def check_port(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PipelineError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise PipelineError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


def serve(folder: str | Path, host: str, port: int, limits: Limits, api_key: str | None, name: str | None) -> None:
    """Load the trained folder and answer requests until SIGTERM or Ctrl-C."""
    import uvicorn

    from finetune.deliver.trained import load_trained
    from finetune.serve.app import build_app
    from finetune.serve.served import Served

    run, model, tokenizer = load_trained(folder)
    served = Served(run, model, tokenizer, name, limits)
    app = build_app(served, limits, api_key)
    # requests in flight get at most their own time limit to finish once shutdown begins
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=int(limits.timeout_s) + 1,
                            log_level="info")
    server = uvicorn.Server(config)

    def stop(signum, frame) -> None:
        server.should_exit = True

    # uvicorn shuts down gracefully on these signals, then raises them again for the handlers it found: these ones,
    # so a server that stopped as asked exits 0 (as systemd and Kubernetes expect of SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    print(f"serve: {served.name} ({served.task}) at http://{host}:{port}/v1; {', '.join(routes(served))}",
          flush=True)
    server.run()
    print(f"serve: {served.name} stopped", flush=True)


def routes(served) -> list[str]:
    return [route for route, answers in (("POST /v1/chat/completions", served.chats),
                                          ("POST /v1/completions", served.writes_text),
                                          ("POST /v1/classifications", served.predicts_labels)) if answers]
