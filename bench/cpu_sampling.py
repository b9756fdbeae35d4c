"""CPU by component of a deployment running on this machine, for bench_scale and bench_latency:
every process sampled each second, named by its command line."""

from __future__ import annotations

import os
import threading

import psutil

# Which part of the deployment a process is, from its command line (first match wins).
COMPONENTS = [
    # a run's process: spawned by a code server, or forked by the run host
    ("run processes", ("multiprocessing.spawn", "etl.deploy.run_host")),
    ("emulator", ("etl.emulator",)),
    ("code servers", ("api grpc",)),
    ("workers", ("celery", " worker")),
    ("daemon", ("dagster-daemon", "daemon run")),
    ("webserver", ("dagster-webserver", "dagster_webserver")),
    ("serve", (" serve",)),
    ("REST API", ("etl.cli api",)),
    ("PostgreSQL", ("postgres",)),
    ("RabbitMQ", ("beam.smp", "rabbitmq")),
]


def component(cmdline: str) -> str:
    return next((name for name, marks in COMPONENTS if any(m in cmdline for m in marks)), "other")


class Sampler(threading.Thread):
    """Each second: the workers' peak resident memory (Celery process and children) and every
    process's CPU time, summed by component at the end. A process that ends between two samples loses
    at most its last second: `busy_cpu_seconds` over the same window says how much went unattributed."""

    def __init__(self, worker_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.stop = worker_pids, dict.fromkeys(worker_pids, 0), threading.Event()
        self.peak_rss: dict[str, int] = {}  # component → the largest resident memory of one process
        self.start_cpu = self.cpu_by_process()
        self.last_cpu = dict(self.start_cpu)

    def cpu_by_process(self) -> dict[tuple[int, float], tuple[str, float]]:
        """(pid, start time) → component, CPU-seconds: a reused pid is another process."""
        out = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times", "create_time", "memory_info"]):
            times, cmd = proc.info["cpu_times"], " ".join(proc.info["cmdline"] or [])
            if times is not None:
                name = component(cmd) if proc.pid != os.getpid() else "bench"
                out[proc.pid, proc.info["create_time"]] = (name, times.user + times.system)
                if proc.info["memory_info"] is not None:
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0), proc.info["memory_info"].rss)
        return out

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peak[pid] = max(self.peak[pid], rss)

    def sample(self) -> None:
        for key, (name, seconds) in self.cpu_by_process().items():
            known = self.last_cpu.get(key, ("other", 0.0))[0]  # a zombie has no command line left
            self.last_cpu[key] = (name if known == "other" else known, seconds)

    def cpu_by_component(self) -> dict[str, float]:
        self.sample()
        out: dict[str, float] = {}
        for key, (name, seconds) in self.last_cpu.items():
            out[name] = out.get(name, 0.0) + seconds - self.start_cpu.get(key, (name, 0.0))[1]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)
