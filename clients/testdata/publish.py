"""Publish maps for the clients' integration tests and benchmarks, through the Python publisher's script.

    python -m clients.testdata.publish URL PREFIX < requests.jsonl   (from the repository root)

One JSON request per input line, one JSON reply per output line (flushed, so a test can drive it):
    {"model": "ctr", "model_version": "v2", "segment": {...}, "x": [...], "y": [...], "version": 3}
        publish a map (fenced: a version not above the stored one is refused)
    {"raw": "<bytes to store>", "field": "ctr:v2:*", "version": 4}
        store a value as is under a field and announce it (a corrupt or foreign value)
    either with "silent": true: written without the script, so no notification goes out (a lost message)
    {"delete": "ctr:v2:*"}
        remove a field from the index and its value (no notification)
    {"bulk": {"model": "ctr", "model_version": "v2", "count": 100000, "knots": 98}}
        publish `count` maps of `knots` knots, segments {"seg": "0"}.., pipelined (for memory benchmarks)
Replies: {"field": ..., "published": bool, "version": int, "ns": time.time_ns() before the write}.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import orjson
import redis

from clients.testdata.generate import field, published
from recalibrators.calibration_map import CalibrationMap
from streams.pipeline import publisher


def main(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    lua = client.register_script(publisher._PUBLISH_LUA)  # the publisher's own fenced write
    for line in sys.stdin:
        if not line.strip():
            continue
        req = orjson.loads(line)
        ns = time.time_ns()
        if "bulk" in req:
            reply = bulk(client, lua, prefix, **req["bulk"])
        elif "delete" in req:
            client.hdel(f"{prefix}:maps", req["delete"])
            client.delete(f"{prefix}:map:{req['delete']}")
            reply: dict[str, Any] = {"field": req["delete"], "published": True, "version": -1}
        elif "raw" in req:
            f, v = req["field"], req["version"]
            reply = write(client if req.get("silent") else lua, prefix, f, v, req["raw"].encode())
        else:
            f = field(req["model"], req["model_version"], req["segment"])
            doc = published(req["model"], req["model_version"], req["segment"], req["x"], req["y"], req["version"])
            if req.get("silent"):
                reply = write(client, prefix, f, req["version"], doc)
            else:  # the Python publisher itself
                result = publisher.MapPublisher(client, prefix).publish(CalibrationMap.from_json(doc))
                reply = {"field": result.field, "published": result.published, "version": result.map_version}
        sys.stdout.write(orjson.dumps(reply | {"ns": ns}).decode() + "\n")
        sys.stdout.flush()


def bulk(client: redis.Redis, lua: Any, prefix: str, model: str, model_version: str, count: int, knots: int) -> dict:
    x = np.linspace(0.0, 1.0, knots)
    y = np.sqrt(x)
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 1000, count)):
            seg = {"seg": str(i)}
            f = field(model, model_version, seg)
            lua(
                keys=[f"{prefix}:map:{f}", f"{prefix}:maps", f"{prefix}:hist:{f}"],
                args=[f, 1, published(model, model_version, seg, x, y, 1), 0, f"{prefix}:maps:updated"],
                client=pipe,
            )
        pipe.execute()
    return {"field": "", "published": True, "version": count}


def write(via: Any, prefix: str, f: str, version: int, value: bytes) -> dict[str, Any]:
    if isinstance(via, redis.Redis):
        via.set(f"{prefix}:map:{f}", value)
        via.hset(f"{prefix}:maps", f, version)
        return {"field": f, "published": True, "version": version}
    ok, stored = via(
        keys=[f"{prefix}:map:{f}", f"{prefix}:maps", f"{prefix}:hist:{f}"],
        args=[f, version, value, 5, f"{prefix}:maps:updated"],
    )
    return {"field": f, "published": bool(ok), "version": int(stored)}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
