"""Load test of `pneumo-fastai serve`: concurrent clients on the `predict` API.

    python bench/bench_serve.py exports/pneumo_resnet34.json --clients 8 --requests 10

Starts the server on a free loopback port (its default queue and concurrency), then `--clients`
threads each send `--requests` real X-rays through gradio_client, one after another. It checks
every answer against `load_model(...).predict` of the same file (probability within 1e-5, same
labels, no error), samples the server's resident memory while the load runs, and prints the
p50/p95/max latency, the throughput, and the memory before, at its peak and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import SHARED_DATA, machine_line, rss_mb, same_answer, serve_reference, serving
from gradio_client import Client, handle_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    args = p.parse_args()
    print(machine_line())
    files, reference = serve_reference(args.model, args.data)
    with serving(args.model) as (server, url):
        before = rss_mb(server.pid)
        peak, stop = [before], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_mb(server.pid))
                time.sleep(0.2)

        def client_run(k: int) -> list[tuple[float, bool]]:
            client = Client(url, verbose=False)
            out = []
            for i in range(args.requests):
                f = files[(k + i) % len(files)]
                start = time.perf_counter()
                answer = client.predict(handle_file(str(f)), api_name="/predict")
                out.append((time.perf_counter() - start, same_answer(answer, reference[str(f)])))
            return out

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(client_run, range(args.clients)) for r in rs]
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        after = rss_mb(server.pid)
    latencies = sorted(t for t, _ in results)
    q = statistics.quantiles(latencies, n=20)
    print(
        f"{args.clients} clients x {args.requests} requests = {len(results)}: "
        f"{sum(ok for _, ok in results)} answered correctly, "
        f"{sum(not ok for _, ok in results)} wrong or errors; {os.cpu_count()} cores"
    )
    print(
        f"latency p50 {statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s, max "
        f"{latencies[-1]:.2f} s; throughput {len(results) / wall:.1f} requests/s"
    )
    print(f"server memory: {before:.0f} MiB idle, {max(peak):.0f} MiB peak, {after:.0f} MiB after")


if __name__ == "__main__":
    main()
