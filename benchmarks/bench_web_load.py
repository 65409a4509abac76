"""Load on the web page: concurrent clients on loopback, through its public API (what a browser's requests do).

Starts ``hyperinverter web`` in a subprocess, then runs ``--rounds`` rounds of ``--clients`` concurrent clients,
each with its own session making ``--requests`` requests: one Invert (a held-out face, or a real photo with
face alignment, alternately) and then edits at several strengths. Every returned image is downloaded and
decoded in full (a truncated file is an error). In the first round one more client uploads a 6000x6000 photo,
to show what it costs the others. Records errors, p50/p95 latency, and the server's resident memory: its peak
and its level after each round (memory must level off, not grow with the requests).

    python benchmarks/bench_web_load.py --out benchmarks/results/web-load
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "hyperinverter" / "bundled"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class MemoryWatch(threading.Thread):
    """Samples a process's resident memory every 0.1 s; ``peak`` is the largest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                self.peak = max(self.peak, resident_mb(self.pid))
            except (OSError, StopIteration):
                return


def decoded(path: str | None) -> None:
    """Raise unless ``path`` is a complete image (a truncated download fails here)."""
    if path is None:
        raise ValueError("no image returned")
    with Image.open(path) as image:
        image.load()


def client_session(url: str, photo: Path, align: bool, requests: int) -> list[tuple[str, float, str | None]]:
    """One user: Invert, then edits. Returns (kind, seconds, error) per request."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    model = "faces-64"
    out = []
    start = time.perf_counter()
    try:
        compare, face, status, _files, *_ = client.predict(model, "hyperinverter", handle_file(str(photo)), align, None,
                                                           api_name="/invert")
        decoded(compare)
        error = None if re.search(r"\d s\b", status) else f"status: {status}"
        label = face.get("value") if isinstance(face, dict) else face
    except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the load
        error, label = f"{type(e).__name__}: {e}", None
    out.append(("invert", time.perf_counter() - start, error))
    for i in range(requests - 1):
        start = time.perf_counter()
        try:
            edited = client.predict(model, label, "hair", -2.0 + i, False, api_name="/edit")
            decoded(edited)
            error = None
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        out.append(("edit", time.perf_counter() - start, error))
    client.close()
    return out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    from hyperinverter.benchmark import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1, help="the server's --concurrency")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web-load")
    args = parser.parse_args()

    held_out = BUNDLED / "faces-64" / "examples" / "000000.png"
    real = next(p for p in (BUNDLED / "samples").iterdir() if "astronaut" in p.name)
    big = Path(tempfile.mkdtemp()) / "big.jpg"
    Image.open(real).convert("RGB").resize((6000, 6000), Image.Resampling.BICUBIC).save(big, quality=85)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "hyperinverter.cli.main", "web", "--model", "faces-64", "--model",
               "fashion-32", "--port", str(port), "--concurrency", str(args.concurrency), "--device", "cpu"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.time() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        watch = MemoryWatch(server.pid)
        watch.start()
        # One client first, so that the model is loaded before the timed rounds.
        client_session(url, held_out, False, 2)
        started_mb = resident_mb(server.pid)
        rounds = []
        for r in range(args.rounds):
            with ThreadPoolExecutor(args.clients + 1) as pool:
                jobs = [pool.submit(client_session, url, real if i % 2 else held_out, bool(i % 2), args.requests)
                        for i in range(args.clients)]
                large = pool.submit(client_session, url, big, True, 1) if r == 0 else None
                results = [item for job in jobs for item in job.result()]
                large_result = large.result() if large else None
            time.sleep(2)
            rounds.append({"results": results, "large": large_result, "after_mb": resident_mb(server.pid)})
            print(f"round {r + 1}: {len(results)} requests, {sum(1 for *_, e in results if e)} errors, "
                  f"server {rounds[-1]['after_mb']:.0f} MB", flush=True)
        watch.stop.set()
    finally:
        server.terminate()
        server.wait(timeout=30)

    every = [item for r in rounds for item in r["results"]]
    errors = [e for *_, e in every if e]
    summary = {"command": "python benchmarks/bench_web_load.py " + " ".join(sys.argv[1:]),
               "machine": f"{cpu_description()}, {os.cpu_count()} CPUs",
               "clients": args.clients, "requests_per_client": args.requests, "rounds": args.rounds,
               "server_concurrency": args.concurrency, "requests": len(every), "errors": len(errors),
               "error_examples": errors[:5], "memory_after_warmup_mb": started_mb,
               "memory_after_round_mb": [r["after_mb"] for r in rounds], "peak_memory_mb": watch.peak}
    for kind in ("invert", "edit"):
        times = [t for k, t, e in every if k == kind and not e]
        if times:
            summary[f"{kind}_p50_s"], summary[f"{kind}_p95_s"] = percentile(times, 50), percentile(times, 95)
    if rounds[0]["large"]:
        kind, seconds, error = rounds[0]["large"][0]
        summary["large_photo"] = {"seconds": seconds, "error": error}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    levels = ", ".join(f"{m:.0f}" for m in summary["memory_after_round_mb"])
    lines = [
        "# The web page under load", "",
        f"{args.clients} concurrent clients × {args.requests} requests (one Invert, then edits), {args.rounds} rounds, "
        f"on loopback; the server runs `--concurrency {args.concurrency}`. Made by `{summary['command']}` on "
        f"{summary['machine']}.", "",
        "| requests | errors | Invert p50 / p95 | edit p50 / p95 | server memory after warm-up | after each round "
        "| peak |",
        "|---|---|---|---|---|---|---|",
        f"| {len(every)} | {len(errors)} | {summary.get('invert_p50_s', float('nan')):.2f} / "
        f"{summary.get('invert_p95_s', float('nan')):.2f} s | {summary.get('edit_p50_s', float('nan')):.2f} / "
        f"{summary.get('edit_p95_s', float('nan')):.2f} s | {started_mb:.0f} MB | {levels} MB | {watch.peak:.0f} MB |",
        "",
        "Every returned image was downloaded and decoded in full; a truncated one would count as an error.",
    ]
    if "large_photo" in summary:
        lines += ["", f"A 6000×6000 photo uploaded during round 1 (downscaled to 2048 px before face detection) "
                  f"took {summary['large_photo']['seconds']:.1f} s"
                  + (f" and failed: {summary['large_photo']['error']}" if summary['large_photo']['error'] else "")
                  + "; the others' latencies above include it."]
    if errors:
        lines += ["", "Errors (first five):", ""] + [f"- {e}" for e in errors[:5]]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
