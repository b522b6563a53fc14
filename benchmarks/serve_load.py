"""`finetune serve` under load: requests/s, p50 and p99 latency, errors and the server's peak memory at 1, 8 and 64
concurrent clients, on the CPU default's trained model (models/adapter, the Instacart department classifier).

The real command runs in its own process on a loopback port; each client (httpx, asyncio) sends one request at a
time, as many as it can in --seconds per level (at most --max-requests a level; requests in flight at the deadline
finish and count). Two endpoints, each request one catalog product no split used: /v1/completions (the run's prompt
template filled with the product, up to 4 tokens, stopping at a newline: the department as the model writes it) and
/v1/classifications (label scoring over the departments, as `finetune predict` scores them). Peak memory is the
server's resident high-water mark (VmHWM), reset before each level. Run from the repository root after `make repro`:

    python -m benchmarks.serve_load --clients 1 8 64 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

from benchmarks.catalog import unused_products
from benchmarks.measure import RESULTS, cpu_model
from finetune import provenance

ENDPOINTS = ("completions", "classifications")


def request_body(endpoint: str, product: str, template: str) -> dict:
    if endpoint == "completions":
        return {"model": "adapter", "prompt": template.replace("{text}", product), "max_tokens": 4, "stop": ["\n"]}
    return {"model": "adapter", "input": product, "top_k": 3}


async def level(url: str, endpoint: str, clients: int, products: list[str], template: str, seconds: float,
                max_requests: int) -> dict:
    """`clients` clients, each sending its next request when the last is answered, until the deadline."""
    latencies, errors, sent = [], [], 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < max_requests:
            body = request_body(endpoint, products[sent % len(products)], template)
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post(f"/v1/{endpoint}", json=body)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"endpoint": endpoint, "clients": clients, "requests": len(latencies), "errors": len(errors),
            "error_examples": errors[:3], "seconds": round(elapsed, 1),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def peak_rss_gib(pid: int, reset: bool = False) -> float:
    """The process's resident high-water mark; `reset` starts a new one (Linux: 5 to clear_refs)."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return round(kib / 2**20, 3)


def start_server(adapter: str, port: int, max_batch: int, window_ms: float) -> tuple[subprocess.Popen, list[str]]:
    command = [sys.executable, "-m", "finetune.cli", "serve", "--adapter", adapter, "--port", str(port),
               "--max-batch", str(max_batch), "--window-ms", str(window_ms), "--max-queue", "1024"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server, command
        except httpx.TransportError:
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="models/adapter", help="the trained folder to serve")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients, a level each")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each level sends requests")
    parser.add_argument("--max-requests", type=int, default=1000, help="the most requests a level sends")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    parser.add_argument("--window-ms", type=float, default=10.0, help="the server's --window-ms")
    parser.add_argument("--port", type=int, default=8377, help="the loopback port the server listens on")
    args = parser.parse_args()
    template = json.loads(Path(args.adapter, "run.json").read_text())["task"]["prompt"]["template"]
    products = unused_products(2000)["product"].tolist()
    load_before = os.getloadavg()
    started = time.perf_counter()
    server, command = start_server(args.adapter, args.port, args.max_batch, args.window_ms)
    url, cases = f"http://127.0.0.1:{args.port}", []
    try:
        for endpoint in args.endpoints:
            asyncio.run(level(url, endpoint, 1, products[-50:], template, 30, 3))  # warm up, not counted
            for clients in sorted(args.clients):
                peak_rss_gib(server.pid, reset=True)
                case = asyncio.run(level(url, endpoint, clients, products, template, args.seconds,
                                         args.max_requests))
                case["peak_rss_gib"] = peak_rss_gib(server.pid)
                cases.append(case)
                print(json.dumps(case), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    rate = {(c["endpoint"], c["clients"]): c["requests_per_s"] for c in cases}
    low, high = min(args.clients), max(args.clients)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    result = {"benchmark": "serve_load", "date": stamp,
              "machine": {"cpu": cpu_model(), "node": platform.node(), "cores": os.cpu_count(),
                          "load_average_before": [round(x, 2) for x in load_before]},
              "command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:]),
              "server_command": " ".join(["finetune", *command[3:]]), "libraries": provenance.library_versions(),
              "wall_s": round(time.perf_counter() - started, 1), "server_exit_code": server.returncode,
              "cases": cases,
              "speedup": {e: round(rate[(e, high)] / rate[(e, low)], 2) for e in args.endpoints if rate[(e, low)]}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"serve_load_{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"serve_load: {path} ({result['wall_s']} s; {high} clients against {low}: {result['speedup']})")


if __name__ == "__main__":
    main()
