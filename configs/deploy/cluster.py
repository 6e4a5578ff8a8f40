"""Start and stop the `cluster` profile on one machine: `python configs/deploy/cluster.py up|down|status`.

Postgres (Dagster's runs, events and pools; MLflow's runs), Redis (Celery's broker), the
MLflow tracking server (proxied artifacts), the Dagster webserver and daemon (run queue, run
monitoring), and two Celery workers: one on queue `default`, one on `gpu` (fold training).
Everything listens on 127.0.0.1 and keeps its data, logs and PIDs under data/cluster/
($BIRDPIPE_CLUSTER_DIR). Each process is started in its own session and carries
BIRDPIPE_CLUSTER=<that folder> in its environment, so `down` stops every process group it
started (PID and start time recorded) and then any straggler in those sessions or carrying the
marker: nothing is left behind.
Ports: $BIRDPIPE_PG_PORT, $BIRDPIPE_REDIS_PORT, $BIRDPIPE_MLFLOW_PORT, $BIRDPIPE_DAGSTER_PORT;
MLflow's artifact store: $BIRDPIPE_MLFLOW_ARTIFACTS (default data/cluster/mlartifacts).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Postgres refuses to run as root; as root, it runs as this system user (created if missing).
PG_USER = "birdpipe"
STARTUP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Cluster:
    dir: Path
    pg_port: int
    redis_port: int
    mlflow_port: int
    dagster_port: int

    @classmethod
    def from_env(cls) -> Cluster:
        env = os.environ.get
        return cls(
            dir=Path(env("BIRDPIPE_CLUSTER_DIR", ROOT / "data" / "cluster")).resolve(),
            pg_port=int(env("BIRDPIPE_PG_PORT", "5433")),
            redis_port=int(env("BIRDPIPE_REDIS_PORT", "6380")),
            mlflow_port=int(env("BIRDPIPE_MLFLOW_PORT", "5001")),
            dagster_port=int(env("BIRDPIPE_DAGSTER_PORT", "3001")),
        )

    @property
    def artifacts(self) -> str:
        """Where the MLflow server keeps artifacts it proxies: a folder, or s3://... ($BIRDPIPE_MLFLOW_ARTIFACTS)."""
        return os.environ.get("BIRDPIPE_MLFLOW_ARTIFACTS", str(self.dir / "mlartifacts"))

    @property
    def dagster_home(self) -> Path:
        return self.dir / "dagster_home"

    def pg_url(self, db: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.pg_port}/{db}"

    def env(self) -> dict[str, str]:
        """What every process of the cluster (and a client of it) sees."""
        return {
            "BIRDPIPE_CLUSTER": str(self.dir),
            "BIRDPIPE_PROFILE": "cluster",
            "DAGSTER_HOME": str(self.dagster_home),
            "BIRDPIPE_PG_USER": PG_USER,
            "BIRDPIPE_PG_HOST": "127.0.0.1",
            "BIRDPIPE_PG_PORT": str(self.pg_port),
            "BIRDPIPE_DAGSTER_PORT": str(self.dagster_port),
            "BIRDPIPE_CELERY_BROKER": f"redis://127.0.0.1:{self.redis_port}/0",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "BIRDPIPE_WORK": os.environ.get("BIRDPIPE_WORK", str(self.dir / "work")),
            "BIRDPIPE_DATA": os.environ.get("BIRDPIPE_DATA", str(ROOT / "data" / "demo")),
            "BIRDPIPE_CONFIG": os.environ.get("BIRDPIPE_CONFIG", str(ROOT / "configs" / "demo.toml")),
            # The Celery workers find configs/deploy/cluster/dagster_celery_config.py here.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "configs" / "deploy" / "cluster"), str(ROOT), os.environ.get("PYTHONPATH")])),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def services(self) -> list[tuple[str, list[str]]]:
        """Name and command of each long-running process, in start order."""
        pg_bin = postgres_bin()
        worker = [str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        return [
            ("postgres", [str(pg_bin / "postgres"), "-D", str(self.dir / "pg"), "-p", str(self.pg_port), "-c", "listen_addresses=127.0.0.1",
                          "-c", f"unix_socket_directories={self.dir / 'pg_socket'}"]),  # fmt: skip
            ("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.dir / "redis"),
                       "--save", "", "--appendonly", "no"]),  # fmt: skip
            ("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
                        "--backend-store-uri", self.pg_url("mlflow"), "--artifacts-destination", self.artifacts]),  # fmt: skip
            ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.dagster_port), "-w", str(ROOT / "workspace.yaml")]),
            ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")]),
            ("worker-default", [*worker, "-Q", "default", "-n", f"default@{socket.gethostname()}", "--concurrency", "2"]),
            ("worker-gpu", [*worker, "-Q", "gpu", "-n", f"gpu@{socket.gethostname()}", "--concurrency", "1"]),
        ]


def postgres_bin() -> Path:
    """Debian's PostgreSQL (`apt-get install postgresql`): the newest version installed."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise SystemExit("PostgreSQL not found: install it (make cluster-deps, or apt-get install postgresql redis-server)")


def _as_pg_user() -> dict:
    """Popen arguments that drop root to PG_USER (Postgres will not run as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER], check=True)
    return {"user": PG_USER, "group": PG_USER}


def _chown(path: Path) -> None:
    if _as_pg_user():
        shutil.chown(path, PG_USER, PG_USER)


def _pid_file(c: Cluster, name: str) -> Path:
    return c.dir / "pids" / f"{name}.pid"


def _start(c: Cluster, name: str, cmd: list[str], **popen) -> None:
    log = open(c.dir / "logs" / f"{name}.log", "wb")
    env = {**os.environ, **c.env()}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, **popen)  # fmt: skip
    _pid_file(c, name).write_text(f"{proc.pid} {_stat(proc.pid)[19]}")
    print(f"  {name}: pid {proc.pid}, log {log.name}", flush=True)


def _wait(what: str, ready, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise SystemExit(f"{what} did not come up within {timeout_s:.0f} s; the end of {log}:\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _init_postgres(c: Cluster, pg_bin: Path) -> None:
    data = c.dir / "pg"
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True)
    _chown(data)
    subprocess.run([str(pg_bin / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL, **_as_pg_user())  # fmt: skip


def _create_databases(c: Cluster) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=c.pg_port, user=PG_USER, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("dagster", "mlflow"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def _pg_ready(c: Cluster) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=c.pg_port, user=PG_USER, dbname="postgres", connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def up(c: Cluster) -> None:
    if running(c):
        raise SystemExit(f"the cluster in {c.dir} is already running ({len(running(c))} processes); make cluster-down first")
    for port in (c.pg_port, c.redis_port, c.mlflow_port, c.dagster_port):
        if _port_open(port):
            raise SystemExit(f"127.0.0.1:{port} is taken by another program; choose other ports ($BIRDPIPE_*_PORT)")
    for sub in ("logs", "pids", "redis", "mlartifacts", "dagster_home", "pg_socket"):
        (c.dir / sub).mkdir(parents=True, exist_ok=True)
    _chown(c.dir / "pg_socket")
    shutil.copy(ROOT / "configs" / "deploy" / "cluster" / "dagster.yaml", c.dagster_home / "dagster.yaml")
    pg_bin = postgres_bin()
    _init_postgres(c, pg_bin)
    print(f"birdpipe cluster in {c.dir}:", flush=True)
    # A client (`exec`) sees the settings the cluster was started with.
    (c.dir / "env.json").write_text(json.dumps(c.env(), indent=1))
    try:
        _start_all(c)
    except BaseException:
        print("start failed: stopping what did start", flush=True)
        down(c)
        raise
    print(f"up: Dagster http://127.0.0.1:{c.dagster_port}   MLflow http://127.0.0.1:{c.mlflow_port}   "
          f"Postgres 127.0.0.1:{c.pg_port}   Redis 127.0.0.1:{c.redis_port}", flush=True)  # fmt: skip


def _start_all(c: Cluster) -> None:
    """One service after another, each checked before the next (on a busy machine a stampede of
    Python start-ups makes every one of them slow)."""
    services = dict(c.services())
    logs = c.dir / "logs"
    _start(c, "postgres", services.pop("postgres"), **_as_pg_user())
    _wait("postgres", lambda: _pg_ready(c), logs / "postgres.log")
    _create_databases(c)
    checks = {
        "redis": lambda: _port_open(c.redis_port),
        "mlflow": lambda: _http_ok(f"http://127.0.0.1:{c.mlflow_port}/health"),
        "webserver": lambda: _http_ok(f"http://127.0.0.1:{c.dagster_port}/server_info"),
        "daemon": lambda: b"daemon" in (logs / "daemon.log").read_bytes(),
    }
    for name, cmd in services.items():
        _start(c, name, cmd)
        ready = checks.get(name) or (lambda n=name: b"ready." in (logs / f"{n}.log").read_bytes())
        _wait(name, ready, logs / f"{name}.log")


def running(c: Cluster, leaders: dict[str, int] | None = None) -> list[int]:
    """Live processes of the cluster: those in a session it started (`leaders`, default: the
    recorded ones), and any carrying its marker in their environment (a child that left the
    session). Both, since Redis overwrites its environment with its process title."""
    sessions = set((_leaders(c) if leaders is None else leaders).values())
    marker = f"BIRDPIPE_CLUSTER={c.dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        stat = _stat(int(proc.name)) if proc.name.isdigit() and int(proc.name) != os.getpid() else None
        if not stat or stat[0] == "Z":
            continue
        try:
            if int(stat[3]) in sessions or marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _leaders(c: Cluster) -> dict[str, int]:
    """The recorded services still alive, by name: a PID counts only with its recorded start time
    (a PID may have been reused since)."""
    leaders = {}
    for pid_file in (c.dir / "pids").glob("*.pid"):
        pid, started = (int(x) for x in pid_file.read_text().split())
        stat = _stat(pid)
        if stat and stat[0] != "Z" and int(stat[19]) == started:
            leaders[pid_file.stem] = pid
    return leaders


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..., starttime at 19."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def down(c: Cluster, timeout_s: float = 30.0) -> None:
    """Stop the services in reverse order (each whole process group), then any straggler."""
    leaders = _leaders(c)
    for name, _ in reversed(c.services()):
        pid = leaders.get(name)
        if pid is None:
            continue
        # Postgres: SIGINT is its fast shutdown; the others end on SIGTERM.
        _signal_group(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            print(f"  {name} (pid {pid}) ignored the stop signal for {timeout_s:.0f} s: killed", flush=True)
            _signal_group(pid, signal.SIGKILL)
        print(f"  {name} stopped", flush=True)
    for pid in running(c, leaders):
        print(f"  straggler pid {pid} ({_cmdline(pid)}): killed", flush=True)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(c, leaders) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = running(c, leaders)
    if left:
        raise SystemExit(f"processes still running after down: {left}")
    for pid_file in (c.dir / "pids").glob("*.pid"):
        pid_file.unlink()
    print("down: no cluster process left", flush=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def status(c: Cluster) -> None:
    leaders = _leaders(c)
    for name, _ in c.services():
        print(f"{name:15s} {'up, pid ' + str(leaders[name]) if name in leaders else 'down'}")
    print(f"{len(running(c, leaders))} processes belong to the cluster")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env", "exec"])
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="exec: the command to run as a client of the cluster")
    args = parser.parse_args()
    c = Cluster.from_env()
    if args.command == "exec":  # a client: the cluster's settings, without the marker of its processes
        saved = c.dir / "env.json"
        cluster_env = json.loads(saved.read_text()) if saved.exists() else c.env()
        env = {k: v for k, v in {**os.environ, **cluster_env}.items() if k != "BIRDPIPE_CLUSTER"}
        return subprocess.run(args.argv, cwd=ROOT, env=env).returncode
    if args.command == "env":  # for a shell: eval "$(python configs/deploy/cluster.py env)"
        print("\n".join(f"export {k}={v!r}" for k, v in c.env().items() if k not in ("PATH", "PYTHONPATH")))
        return 0
    {"up": up, "down": down, "status": status}[args.command](c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
