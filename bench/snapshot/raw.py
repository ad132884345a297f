"""Baselines for throughput: the same bytes written and read with no snapshot service at all (plain files, plain S3
objects), so the service's MB/s can be read against what the storage itself gives here."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def file_round_trip(root: Path, arrays: dict[str, np.ndarray]) -> tuple[float, float]:
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name, array in arrays.items():
        with open(root / f"{name}.bin", "wb") as out:
            out.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    for name in arrays:
        (root / f"{name}.bin").read_bytes()
    read = time.perf_counter() - started
    shutil.rmtree(root)
    return wrote, read


def s3_round_trip(client: Any, bucket: str, prefix: str, arrays: dict[str, np.ndarray]) -> tuple[float, float]:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
    started = time.perf_counter()
    for name, array in arrays.items():
        body = np.ascontiguousarray(array).tobytes()
        client.upload_fileobj(io.BytesIO(body), bucket, f"{prefix}/{name}", Config=config)
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    for name in arrays:
        sink = io.BytesIO()
        client.download_fileobj(bucket, f"{prefix}/{name}", sink, Config=config)
    read = time.perf_counter() - started
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"{prefix}/{n}"} for n in arrays]})
    return wrote, read
