"""``broker run|start|stop|status``: one broker in the foreground or as a daemon.

``run`` is what systemd starts. ``start``/``stop``/``status`` serve hosts
without systemd (labs, laptops): ``start`` launches ``broker run`` detached,
with ``broker.pid`` and ``broker.log`` in the data directory, and returns once
the broker reports startup on its management port (or fails, printing the end
of its log). All three are idempotent: starting a running broker or stopping
a stopped one succeeds and says so.

A daemon's log rotates by size (``--log-max-size``, ``--log-keep`` older files):
weeks of uptime must not fill the data disk with log. What escapes logging (a
crash before logging is set up) goes to ``broker.out`` beside it.
"""

from __future__ import annotations

import gc
import json
import logging
import logging.handlers
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from broker import __version__, dataformat
from broker.config import BrokerConfig, ConfigError, check_tls_files, load_config, parse_size
from broker.dataformat import NewerDataError
from broker.fsutil import StorageError, make_private_dirs
from broker.tls import client_context

EXIT_NOT_RUNNING = 3  # LSB: program is not running
# Damaged data at start (a corrupt meta, snapshot or segment file): restarting cannot
# help, an operator must act. The same code as a bad config (ConfigError.exit_code),
# which the systemd unit lists in RestartPreventExitStatus: no restart loop.
EXIT_STORAGE = 2
DEFAULT_LOG_MAX_SIZE = "64MB"
DEFAULT_LOG_KEEP = 5


def _private(path: str, flags: int) -> int:
    """An ``open`` opener: files the broker creates are 0600 whatever the umask."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The log, and each file it rotates to, created 0600."""

    def _open(self):
        return open(self.baseFilename, self.mode, encoding=self.encoding, opener=_private)


def _load(path: str | None, *, serving: bool = False) -> BrokerConfig:
    """The config; ``serving`` also loads its TLS files (to run or start a broker)."""
    try:
        cfg = load_config(path)
        if serving:
            check_tls_files(cfg)
        return cfg
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _paths(cfg: BrokerConfig) -> tuple[str, str]:
    d = cfg.data.directory
    return os.path.join(d, "broker.pid"), os.path.join(d, "broker.log")


def _out_path(cfg: BrokerConfig) -> str:
    return os.path.join(cfg.data.directory, "broker.out")


def log_rotation(max_size: str | int, keep: int) -> tuple[int, int]:
    """Validated (bytes, kept files) for a rotating log; ValueError names what is wrong."""
    try:
        size = parse_size(max_size)
    except ValueError as exc:
        raise ValueError(f"--log-max-size {max_size!r}: {exc}") from None
    if size < 4096:
        raise ValueError(f"--log-max-size {max_size!r} is below the minimum of 4KB")
    if not 1 <= int(keep) <= 1000:
        raise ValueError(f"--log-keep {keep!r} must be between 1 and 1000")
    return size, int(keep)


def _running_pid(pid_file: str) -> int | None:
    """The pid in the pid file, if that process is alive and is a broker."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return None
    # guard against pid reuse: it must be our `broker run`
    return pid if b"run" in cmdline and any(b"broker" in part for part in cmdline) else None


def _self_context(cfg: BrokerConfig) -> ssl.SSLContext | None:
    """With TLS, this broker asks itself over HTTPS: it trusts the cluster CA and
    shows its own certificate (which is also a client certificate); the host name
    is not checked, since it dials its own loopback address."""
    t = cfg.security.tls
    if not t.enabled:
        return None
    return client_context(t.ca, t.certificate, t.private_key, check_hostname=False)


def _health(cfg: BrokerConfig, what: str = "startup") -> dict | None:
    host = cfg.management.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    scheme = "https" if cfg.security.tls.enabled else "http"
    url = f"{scheme}://{host}:{cfg.management.port}/actuator/health/{what}"
    req = urllib.request.Request(url)
    if cfg.management.token:
        req.add_header("Authorization", f"Bearer {cfg.management.token}")
    try:
        with urllib.request.urlopen(req, timeout=1, context=_self_context(cfg)) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None


def run(
    config: str | None,
    log_file: str | None = None,
    log_max_size: str | int = DEFAULT_LOG_MAX_SIZE,
    log_keep: int = DEFAULT_LOG_KEEP,
) -> int:
    """The broker in the foreground; logs to stderr (systemd's journal) or, with
    ``log_file``, to a file rotated at ``log_max_size`` keeping ``log_keep`` old ones."""
    cfg = _load(config, serving=True)
    if _refuse_newer_data(cfg):  # before the log file or anything else is written
        return EXIT_STORAGE
    handlers: list[logging.Handler] | None = None
    if log_file:
        try:
            size, keep = log_rotation(log_max_size, log_keep)
        except ValueError as exc:
            print(f"broker: {exc}", file=sys.stderr)
            return 2
        handlers = [
            _PrivateRotatingFileHandler(log_file, maxBytes=size, backupCount=keep, encoding="utf-8")
        ]
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s broker-{cfg.cluster.node_id} %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    from broker.node.broker import Broker

    broker = Broker(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker.start()
    except ConfigError as exc:  # e.g. a TLS file that cannot be loaded
        print(exc, file=sys.stderr)
        logging.getLogger("broker").error("cannot start: %s", exc)
        broker.stop()
        return exc.exit_code
    except NewerDataError as exc:  # written meanwhile by a newer broker
        print(exc, file=sys.stderr, flush=True)
        logging.getLogger("broker").error("%s", exc)
        broker.stop()
        return EXIT_STORAGE
    except StorageError as exc:
        _storage_error(exc, log_file)
        broker.stop()
        return EXIT_STORAGE
    except OSError as exc:
        logging.getLogger("broker").error("cannot start: %s", exc)
        broker.stop()
        return 1
    _tune_gc()
    stop.wait()
    broker.stop()
    return 0


# A collection every 700 allocations, and full ones over the whole heap (the log
# cache, the topology, the modules), cost the 3-broker bench a quarter of its
# throughput and most of its p99 (python -m bench cluster: 32k -> 43k records/s,
# p99 30-37 ms -> 7-10 ms). The hot path makes no reference cycles, so rarer
# collections free the same memory.
GC_THRESHOLDS = (10_000, 20, 20)


def _tune_gc() -> None:
    """Once started: what exists now lives as long as the broker (gc.freeze keeps
    collections from scanning it again), and young objects are collected rarely."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _storage_error(exc: StorageError, log_file: str | None) -> None:
    """Say which file is damaged and what to do, on stderr (systemd's journal) and in
    the log file: no traceback, the problem is the data, not the program."""
    text = f"broker: cannot start: damaged data in {exc.path}: {exc.reason}"
    if exc.repair:
        text += f"\nbroker: to repair: {exc.repair}"
    print(text, file=sys.stderr, flush=True)
    if log_file:
        logging.getLogger("broker").error("%s", text.replace("\nbroker: ", "; "))


def start(
    config: str | None,
    wait: float = 60.0,
    log_max_size: str | int = DEFAULT_LOG_MAX_SIZE,
    log_keep: int = DEFAULT_LOG_KEEP,
) -> int:
    cfg = _load(config, serving=True)
    try:
        log_rotation(log_max_size, log_keep)
    except ValueError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    pid_file, log_file = _paths(cfg)
    pid = _running_pid(pid_file)
    if pid is None and _refuse_newer_data(cfg):
        return EXIT_STORAGE
    make_private_dirs(cfg.data.directory)
    if pid is not None:
        print(f"broker {cfg.cluster.node_id} already running (pid {pid})")
        return 0
    # -P: not the current directory first on sys.path, where a checkout's broker/ (Ansible
    # runs from the project root) would shadow the installed release being started
    cmd = [sys.executable, "-P", "-m", "broker", "run"]
    if config:
        cmd += ["--config", os.path.abspath(config)]
    cmd += ["--log-file", log_file, "--log-max-size", str(log_max_size)]
    cmd += ["--log-keep", str(log_keep)]
    with open(_out_path(cfg), "ab", opener=_private) as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the shell (and Ansible task) that started it
            close_fds=True,
        )
    with open(pid_file, "w", opener=_private) as f:
        f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"broker {cfg.cluster.node_id} exited with code {proc.returncode}; log:")
            print(_tail(log_file) + _tail(_out_path(cfg)), file=sys.stderr)
            os.unlink(pid_file)
            return 1
        h = _health(cfg)
        if h and h.get("status") == "UP":
            print(f"broker {cfg.cluster.node_id} started (pid {proc.pid}), log {log_file}")
            return 0
        time.sleep(0.1)  # polling a child process for readiness, bounded by the deadline
    print(f"broker {cfg.cluster.node_id}: no startup within {wait:.0f}s; log:", file=sys.stderr)
    print(_tail(log_file) + _tail(_out_path(cfg)), file=sys.stderr)
    return 1


def stop(config: str | None, wait: float = 30.0, kill: bool = False) -> int:
    """SIGTERM and wait (SIGKILL after ``wait``); with ``kill``, SIGKILL at once: a crash,
    as in a region-loss drill."""
    cfg = _load(config)
    pid_file, _ = _paths(cfg)
    pid = _running_pid(pid_file)
    if pid is None:
        print(f"broker {cfg.cluster.node_id} is not running")
        if os.path.exists(pid_file):
            os.unlink(pid_file)
        return 0
    os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)  # waiting for another process to exit, bounded by the deadline
    if pid_alive(pid) and not kill:
        print(f"broker {cfg.cluster.node_id} (pid {pid}) ignored SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):  # SIGKILL cannot be ignored: this ends
        time.sleep(0.05)
    if os.path.exists(pid_file):
        os.unlink(pid_file)
    print(f"broker {cfg.cluster.node_id} {'killed' if kill else 'stopped'}")
    return 0


def _refuse_newer_data(cfg: BrokerConfig) -> bool:
    """True (and says why on stderr, in one line) when this build cannot run the data:
    it is in a newer format. Reads only."""
    try:
        dataformat.check(cfg.data.directory)
    except NewerDataError as exc:
        print(exc, file=sys.stderr, flush=True)
        return True
    except StorageError as exc:
        print(f"broker: cannot start: {exc}", file=sys.stderr, flush=True)
        return True
    return False


def check_data(config: str | None) -> int:
    """``broker check-data``: 0 when this build can run the data directory (also when it
    does not exist yet), 2 with the reason when not. Reads only: safe beside a running
    broker, and what an upgrade asks the release it is about to switch to."""
    cfg = _load(config)
    directory = cfg.data.directory
    try:
        marker = dataformat.check(directory)
    except NewerDataError as exc:
        print(exc, file=sys.stderr)
        return EXIT_STORAGE
    except StorageError as exc:
        print(f"broker: cannot check the data: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    mine = f"broker {__version__} (data format {dataformat.DATA_FORMAT})"
    if marker.format is None:
        print(f"{directory}: no data yet; {mine} can run it")
    else:
        who = f", written by broker {marker.written_by}" if marker.written_by else ""
        note = "" if marker.marked else " (no format marker: data from before markers)"
        print(f"{directory}: data format {marker.format}{who}{note}; {mine} can run it")
    return 0


def _refuse_while_running(cfg) -> bool:
    """True (and says so) when this broker's daemon runs: its data is not to be touched."""
    pid = _running_pid(_paths(cfg)[0])
    if pid is not None:
        print(
            f"broker {cfg.cluster.node_id} is running (pid {pid}): stop it first", file=sys.stderr
        )
    return pid is not None


def wipe_data(config: str | None) -> int:
    """Delete the data directory's contents: the broker is then what a rebuilt host runs
    (no log, no topology). Refused while the broker runs."""
    cfg = _load(config)
    if _refuse_while_running(cfg):
        return 1
    directory = cfg.data.directory
    if not os.path.isdir(directory):
        print(f"broker {cfg.cluster.node_id}: {directory} does not exist; nothing to wipe")
        return 0
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    print(f"broker {cfg.cluster.node_id}: wiped {directory}")
    return 0


def restore(config: str | None, backup_id: int) -> int:
    """Restore this broker's partitions of a backup into its empty data directory.
    Refused while the broker runs, or when the directory holds data (exit 1)."""
    from broker.backup.restore import RestoreError
    from broker.backup.restore import restore as restore_backup

    cfg = _load(config)
    if _refuse_while_running(cfg):
        return 1
    try:
        restore_backup(cfg, backup_id)
    except (RestoreError, OSError) as e:
        print(f"broker {cfg.cluster.node_id}: restore failed: {e}", file=sys.stderr)
        return 1
    return 0


def status(config: str | None) -> int:
    cfg = _load(config)
    pid_file, log_file = _paths(cfg)
    pid = _running_pid(pid_file)
    if pid is None:
        print(f"broker {cfg.cluster.node_id}: not running")
        return EXIT_NOT_RUNNING
    ready = _health(cfg, "readiness")
    state = ready.get("status", "?") if ready else "no answer"
    print(f"broker {cfg.cluster.node_id}: running (pid {pid}), readiness {state}, log {log_file}")
    return 0


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process? A zombie counts as gone; another user's process as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
