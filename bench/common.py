"""What the benchmarks share: the machine line, process CPU and memory, and
starting the simulator and the gateway as processes of their own."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.cli import free_port  # noqa: E402

__all__ = ["REPO", "SIMULATOR_FIRST", "ProcessStats", "book_load", "free_port", "machine", "priorities",
           "start_gateway", "start_nginx", "start_simulator", "stop_all", "stop_or_dump", "wait_until"]

# The simulated exchange starts ahead in the scheduler (see start_simulator);
# `--same-priority` empties this.
SIMULATOR_FIRST = ["nice", "-n", "-10"] if os.geteuid() == 0 and shutil.which("nice") else []


def book_load(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """The fan-out benchmarks' load (clients over order books pushed every
    interval) from the command line; the descriptor limit raised for it; and
    the books' channel names."""
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between pushes of each book")
    parser.add_argument("--seconds", type=float, default=30, help="measured window")
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--same-priority", action="store_true",
                        help="leave the simulated exchange (and, in cluster.py, Redis) at the others' priority")
    args = parser.parse_args()
    if args.same_priority:
        SIMULATOR_FIRST.clear()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return args, [f"orderbook:SIM{i:02d}_USD:0.01" for i in range(args.channels)]


def priorities() -> str:
    """How the simulated exchange was scheduled, for a benchmark's header."""
    if SIMULATOR_FIRST:
        return "the simulated exchange ahead in the scheduler (nice -10; --same-priority to leave it)"
    return "the simulated exchange at the others' priority"


def _terminated(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, and up to ``timeout`` seconds for the process to exit: True if it did."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop what a benchmark started, the last started first."""
    for process in reversed(processes):
        if not _terminated(process, 15):
            process.kill()


def stop_or_dump(process: subprocess.Popen[bytes], label: str, timeout: float = 30) -> bool:
    """SIGTERM, and up to ``timeout`` seconds for the process to exit. One that
    does not has its threads' stacks printed (py-spy, from the test extras)
    before it is killed, so that a slow shutdown leaves its cause behind and
    the benchmark goes on. True if it exited of its own."""
    if _terminated(process, timeout):
        return True
    print(f"{label} (pid {process.pid}) did not exit within {timeout:g} s of SIGTERM; its stacks:",
          file=sys.stderr, flush=True)
    spy = Path(sys.executable).with_name("py-spy")
    try:
        dump = subprocess.run([str(spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True,
                              timeout=60, check=False)
        print(dump.stdout + dump.stderr, file=sys.stderr, flush=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  no dump: {exc}", file=sys.stderr, flush=True)
    process.kill()
    process.wait()
    return False


def machine() -> str:
    cpu = "unknown cpu"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


class ProcessStats:
    """CPU seconds and resident memory of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


NGINX_CONF = """
{modules}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 60000;
events {{ worker_connections 50000; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  {http}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    {server}
  }}
}}
"""


def start_nginx(workdir: Path, *, server: str, ready: Callable[[str], bool], http: str = "",
                modules: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """Debian's nginx, one worker, its files in ``workdir``, on a free port:
    ``server`` (and ``http``, ``modules``) the directives of the reference;
    ``ready(base)`` true once it answers. Returns the process and its base URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, server=server, http=http, modules=modules))
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(base), 10, "nginx")
    except SystemExit:
        stop_all([process])
        raise
    return process, base


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def start_simulator(extra_symbols: int = 0, book_interval: float | None = None,
                    activity: float | None = None, books_together: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """The simulated exchange, started ahead of everything else in the
    scheduler (`nice -n -10`, as root; as it is where that is refused). The
    exchange runs on machines of its own: here it shares two cores with the
    server measured and 10,000 clients' load generator, and its hop queued
    behind them: the same noise on every side of a ratio (what it did to the
    figures: docs/performance.md). The benchmarks print which it was
    (:func:`priorities`)."""
    tcp, ws = free_port(), free_port()
    args = [*SIMULATOR_FIRST, sys.executable, "-m", "app", "simulate", "--tcp-port", str(tcp), "--ws-port", str(ws), "--seed", "1",
            "--extra-symbols", str(extra_symbols)]
    if book_interval:
        args += ["--book-interval", str(book_interval)]
    if activity:
        args += ["--activity", str(activity)]
    if books_together:
        args += ["--books-together"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, tcp


def start_gateway(broker_port: int, channels: list[str], server: str = "uvicorn",
                  **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COINSUPER_", "GATEWAY_"))},
        "COINSUPER_URL": f"mqtt://127.0.0.1:{broker_port}",
        "COINSUPER_ACCESS_KEY": "demo-access-key",
        "COINSUPER_EMAIL": "demouser@demo.domain",
        "COINSUPER_SUBSCRIBE": ",".join(channels),
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_MAX_STREAMS": "50000",
        "GATEWAY_MAX_STREAMS_PER_CLIENT": "50000",
        # bench/attack.py and bench/soak.py open their clients from 127.0.0.1
        # (bench/loadgen.py gives each client an address of its own).
        "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "50000",
        "GATEWAY_MAX_UPSTREAM": "1000",
        **env,
    }
    if server == "granian":  # the plain ASGI app (app/asgi.py) on granian, one worker
        command = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-ws", "--backlog", "16384",
                   "--backpressure", "50000", "app.asgi:application"]
    else:
        command = [sys.executable, "-m", "app", "serve"]
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: all(c["status"] == "live" for c in httpx.get(base + "/v1/channels").json()["channels"])
                   and len(httpx.get(base + "/v1/channels").json()["channels"]) == len(channels), 60,
                   "channels live")
    except SystemExit:
        stop_all([process])  # not yet the caller's to stop
        raise
    return process, base
