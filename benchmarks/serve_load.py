"""Load test of the serving app on loopback: throughput and latency with batching on vs off.

Builds the default detector (``rsia_net`` preset ``small``, 64 px, random weights: speed does not
depend on the weights), registers it as stage 1 of a model in a temporary MLflow registry and
deploys the Serve app twice on 127.0.0.1, with batching on (``/on``) and off (``/off``). Ray starts
the way ``forgesweep serve`` starts it: in Ray Serve's high-throughput mode (HAProxy ingress, gRPC
between replicas, :mod:`forgesweep.serve.serving_mode`); ``--proxy python`` measures Serve's
Python HTTP proxy instead. For each
concurrency N, a fixed number of ``POST /v1/detect`` requests (a 64x64 PNG) are sent from N
concurrent keep-alive clients, alternating the two apps over several rounds so that load from
other work on a shared machine hits both alike. Every request is bounded (count and per-request
timeout), so the run ends by itself.

Prints the medians per (mode, concurrency): requests/s, p50 and p99 latency as the client sees
them, the CPU time the app spent per request, the batched/unbatched throughput ratio, and whether
the targets (>= 2x, p99 < 250 ms at the batched peak) were met.

Usage::

    python benchmarks/serve_load.py                          # 300 requests per point, 3 rounds
    python benchmarks/serve_load.py --requests 600 --concurrency 1 8 32 --max-batch-size 32
    python benchmarks/serve_load.py --proxy python          # Serve's Python proxy, default replicas
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))

from forgesweep.config import load_config  # noqa: E402
from forgesweep.models import build_model  # noqa: E402
from forgesweep.serve.config import ServeConfig, validate_serve_config  # noqa: E402
from forgesweep.serve.register import register_checkpoints  # noqa: E402
from forgesweep.serve.serving_mode import (HA_PROXY, THROUGHPUT_OPTIMIZED, describe_serving_mode,  # noqa: E402
                                           serving_mode_env)
from forgesweep.tracking.runs import open_client  # noqa: E402
from forgesweep.train.checkpoint import save_stage_checkpoint  # noqa: E402

MODEL_NAME = "serve-load-benchmark"


def register_default_model(root: Path, preset: str, model: str | None = None) -> str:
    """Save the default architecture (or ``model``) at ``preset`` as a stage-1 checkpoint and register it."""
    overrides = [f"model.preset={preset}"]
    if model is not None:
        overrides += [f"model.name={model}", "strategy.w_hscl=0"]  # other models lack HSCL's (spatial, frequency) pairs
    cfg = load_config(HERE.parent / "jobs" / "configs" / "default.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, cfg.model.params)
    names = [t.name for t in cfg.data.sequence]
    checkpoint = save_stage_checkpoint(root / "stage-1", model, {"stage": 1, "task_names": names,
                                                                 "config": cfg.to_dict(), "metrics": {}})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    register_checkpoints(open_client(uri), MODEL_NAME, [checkpoint], artifact_location=str(root / "artifacts"))
    return uri


def test_image(size: int) -> bytes:
    """A deterministic noise PNG of ``size`` x ``size``."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def load(url: str, body: bytes, requests: int, concurrency: int, timeout_s: float) -> dict[str, float]:
    """Send ``requests`` requests from ``concurrency`` clients; latency percentiles and rate."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "image/png"}) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (
        lambda q: float("nan"))
    return {"rps": len(latencies) / wall, "p50": pick(0.50), "p99": pick(0.99), "errors": errors,
            "mean": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors it and puts it on sys.path when imported
        import ray  # noqa: F401
        import psutil
    return psutil


ROLES = ("proxy", "ingress", "model", "controller", "load generator")


def serve_processes() -> dict[str, dict[str, list]]:
    """The Serve processes of each benchmark app by role; proxy and controller are shared."""
    psutil = _psutil()
    groups: dict[str, dict[str, list]] = {"on": {}, "off": {}, "shared": {}}
    for proc in psutil.process_iter(["cmdline"]):
        text = " ".join(proc.info["cmdline"] or [])
        for mode in ("on", "off"):
            if f"ServeReplica:bench-{mode}:DetectorIngress" in text:
                groups[mode].setdefault("ingress", []).append(proc)
            elif f"ServeReplica:bench-{mode}:StageModels" in text:
                groups[mode].setdefault("model", []).append(proc)
        # The proxy: Serve's Python proxy actor, or HAProxy and the actor that manages it.
        if "ProxyActor" in text or "HAProxyManager" in text or Path(text.split(" ")[0]).name == "haproxy":
            groups["shared"].setdefault("proxy", []).append(proc)
        elif "ServeController" in text:
            groups["shared"].setdefault("controller", []).append(proc)
    return groups


def cpu_seconds(roles: dict[str, list]) -> dict[str, float]:
    """User + system CPU seconds of each role's processes, and of this process (the load generator)."""
    psutil = _psutil()
    out = {"load generator": sum(os.times()[:2])}
    for role, procs in roles.items():
        out[role] = 0.0
        for proc in procs:
            try:
                out[role] += sum(proc.cpu_times()[:2])
            except psutil.Error:
                pass
    return out


def serve_config(uri: str, port: int, batching: bool, args: argparse.Namespace) -> ServeConfig:
    """The benchmark app: one model replica and one ingress replica, batching on or off."""
    return validate_serve_config({
        "app_name": f"bench-{'on' if batching else 'off'}", "registered_model": MODEL_NAME, "tracking_uri": uri,
        "access_log": False,
        "http": {"host": "127.0.0.1", "port": port, "route_prefix": f"/{'on' if batching else 'off'}"},
        "batching": {"enabled": batching, "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait},
        # Logical CPUs only: both apps (one idle at a time) fit on a 2-core node.
        "model": {"num_cpus": 0.5, "max_ongoing_requests": max(64, 2 * max(args.concurrency))},
        "ingress": {"num_cpus": 0.1, "max_ongoing_requests": max(128, 4 * max(args.concurrency))},
    })


def median_rows(samples: dict[tuple[str, int], list[dict[str, float]]]) -> list[dict]:
    """Per (mode, concurrency): the median of each figure over the rounds."""
    rows = []
    for (mode, concurrency), runs in samples.items():
        rows.append({"batching": mode, "concurrency": concurrency, "errors": sum(r["errors"] for r in runs),
                     **{k: statistics.median(r.get(k, 0.0) for r in runs)
                        for k in ("rps", "p50", "p99", "cpu_ms", *(f"cpu:{role}" for role in ROLES))}})
    return sorted(rows, key=lambda r: (r["batching"] == "off", r["concurrency"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per (mode, concurrency, round)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3, help="on/off alternate; medians over the rounds")
    parser.add_argument("--model", default=None, help="architecture served (default: default.yaml's, rsia_net)")
    parser.add_argument("--preset", default="small", help="preset of the served model")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.005, help="batch_wait_timeout_s")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--proxy", choices=("haproxy", "python"), default="haproxy",
                        help="haproxy: Ray Serve's high-throughput mode, as `forgesweep serve` starts it; "
                             "python: Serve's Python HTTP proxy and default replica settings")
    args = parser.parse_args(argv)
    if os.environ.get("RAY_ADDRESS"):
        print("note: RAY_ADDRESS is set: the proxy is whatever that cluster runs; --proxy is ignored")
    elif args.proxy == "haproxy":
        os.environ.update(serving_mode_env(os.environ))
    else:
        os.environ.update({HA_PROXY: "0", THROUGHPUT_OPTIMIZED: "0"})
    mode = describe_serving_mode(os.environ)

    import ray
    from ray import serve

    from forgesweep.serve.app import deploy

    load_before = os.getloadavg()[0]  # other work on a shared machine shows here
    body = test_image(64)
    http: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="forgesweep-serve-bench-") as tmp:
        uri = register_default_model(Path(tmp), args.preset, args.model)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        port = free_port()
        try:
            # Both apps run side by side and the modes alternate, so drifting load on a shared
            # machine hits both alike.
            urls = {mode: deploy(serve_config(uri, port, mode == "on", args)) + "/v1/detect" for mode in ("on", "off")}
            for mode in urls:  # warm-up: model loaded, connections open
                asyncio.run(load(urls[mode], body, 20, 2, args.timeout))
            processes = serve_processes()
            for round_ in range(args.rounds):
                for concurrency in args.concurrency:
                    order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                    for mode in order:
                        mine = {**processes[mode], **processes["shared"]}
                        cpu_before = cpu_seconds(mine)
                        result = asyncio.run(load(urls[mode], body, args.requests, concurrency, args.timeout))
                        served = max(1, args.requests - result["errors"])
                        cpu_after = cpu_seconds(mine)
                        split = {role: (cpu_after[role] - cpu_before[role]) / served * 1000 for role in cpu_after}
                        result["cpu_ms"] = sum(split.values())
                        result.update({f"cpu:{role}": ms for role, ms in split.items()})
                        http.setdefault((mode, concurrency), []).append(result)
                        print(f"  round {round_ + 1} batching {mode:>3} c={concurrency:<3} "
                              f"{result['rps']:7.1f} req/s p50 {result['p50']:6.1f} ms p99 {result['p99']:6.1f} ms "
                              f"cpu {result['cpu_ms']:5.1f} ms/req errors {result['errors']}", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    title = (f"{mode}\n{args.model or 'rsia_net'}/{args.preset} at 64 px, {args.requests} requests per point, median of {args.rounds} rounds, "
             f"max_batch_size {args.max_batch_size}, batch wait {args.batch_wait * 1000:.0f} ms, {os.cpu_count()} CPUs, "
             f"load average at start/end {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    print_table(title, median_rows(http))
    return 0


def print_table(title: str, rows: list[dict]) -> None:
    """The results, then batched/unbatched throughput per concurrency and the targets.

    ``cpu ms/req`` is the CPU time the app's processes (proxy, ingress, model replica) and the
    load generator spent per request; ``2-core cap`` = 2000 / that, the rate two cores doing
    nothing else could sustain. On a shared machine it shows what the app costs, apart from
    how much CPU other work left it.
    """
    print(f"\nPOST /v1/detect on 127.0.0.1 through the proxy and the ingress\n{title}")
    print(f"{'batching':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} "
          f"{'2-core cap':>10} {'errors':>6}")
    for r in rows:
        print(f"{r['batching']:>8} {r['concurrency']:>7} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['cpu_ms']:>10.1f} {2000 / r['cpu_ms']:>10.0f} {r['errors']:>6}")
    # Where the CPU of a request goes: batching can only share the model's part.
    print(f"\nCPU ms per request by process{'':<3}" + "".join(f"{role:>15}" for role in ROLES))
    for r in rows:
        print(f"batching {r['batching']:>3}, {r['concurrency']:>3} clients   "
              + "".join(f"{r[f'cpu:{role}']:>15.1f}" for role in ROLES))
    on = {r["concurrency"]: r for r in rows if r["batching"] == "on"}
    off = {r["concurrency"]: r for r in rows if r["batching"] == "off"}
    print(f"{'clients':>7} {'on/off req/s':>13} {'off/on cpu per req':>19}")
    for c in sorted(on.keys() & off.keys()):
        print(f"{c:>7} {on[c]['rps'] / off[c]['rps']:>12.2f}x {off[c]['cpu_ms'] / on[c]['cpu_ms']:>18.2f}x")
    if on and off:
        peak = max(on.values(), key=lambda r: r["rps"])
        best = max(on[c]["rps"] / off[c]["rps"] for c in on.keys() & off.keys())
        print(f"batched peak {peak['rps']:.1f} req/s at {peak['concurrency']} clients, p99 {peak['p99']:.1f} ms "
              f"(target < 250 ms: {'met' if peak['p99'] < 250 else 'NOT met'}); best on/off ratio {best:.2f}x "
              f"(target >= 2x: {'met' if best >= 2 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
