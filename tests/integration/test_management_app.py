"""The management app (api/management_app.py) in process, over an AsyncClient on a real
server's control socket: TorchServe's list, describe and scale calls against the real broker,
a synchronous scale up to two workers and back down included."""

from __future__ import annotations

import asyncio
import os
import re

import falcon.testing

from zerobatch.api.aio_client import AsyncClient
from zerobatch.api.management_app import create_management_app

#: the most a synchronous scale call here waits (a worker's start on a loaded machine)
SCALE_WAIT_S = 40
#: the whole scenario, well inside pytest's per-test timeout
SCENARIO_LIMIT_S = 100
GSON_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def scenario(control_address: str) -> None:
    async with AsyncClient(control_address, timeout_ms=5000) as control:
        app = create_management_app(control)
        async with falcon.testing.ASGIConductor(app) as conductor:
            listed = await conductor.simulate_get("/models")
            assert listed.status_code == 200, listed.text
            assert [m["modelName"] for m in listed.json["models"]] == ["echo"]

            described = await conductor.simulate_get("/models/echo")
            assert described.status_code == 200, described.text
            [entry] = described.json
            assert (entry["modelName"], entry["modelVersion"]) == ("echo", "1.0")
            [worker] = entry["workers"]
            assert worker["status"] == "READY" and alive(worker["pid"])
            assert worker["memoryUsage"] > 0 and GSON_DATE.match(worker["startTime"])
            assert "queued" in entry["zerobatch"] and "batchSizes" in entry["zerobatch"]
            first_pid = worker["pid"]

            missing = await conductor.simulate_get("/models/nope")
            assert (missing.status_code, missing.json["message"]) == (404,
                                                                      "Model not found: nope")
            missing = await conductor.simulate_put("/models/echo/9.9",
                                                   params={"min_worker": "2"})
            assert missing.status_code == 404
            assert missing.json["type"] == "ModelVersionNotFoundException"

            scaled = await conductor.simulate_put(
                "/models/echo", params={"min_worker": "2", "synchronous": "true",
                                        "timeout": str(SCALE_WAIT_S)})
            assert scaled.status_code == 200, scaled.text
            assert scaled.json == {"status": "Workers scaled to 2 for model: echo"}
            [entry] = (await conductor.simulate_get("/models/echo/1.0")).json
            pids = {worker["pid"] for worker in entry["workers"]}
            assert len(pids) == 2 and first_pid in pids and all(map(alive, pids))
            assert entry["minWorkers"] == 2

            scaled = await conductor.simulate_put(
                "/models/echo/1.0", params={"min_worker": "1", "synchronous": "true",
                                            "timeout": str(SCALE_WAIT_S)})
            assert scaled.status_code == 200, scaled.text
            assert scaled.json == {"status": "Workers scaled to 1 for model: echo, version: 1.0"}
            [entry] = (await conductor.simulate_get("/models/echo")).json
            assert [worker["pid"] for worker in entry["workers"]] == [first_pid]

            accepted = await conductor.simulate_put("/models/echo", params={"min_worker": "2"})
            assert accepted.status_code == 202
            assert accepted.json == {"status": "Processing worker updates..."}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SCALE_WAIT_S
            while True:
                [entry] = (await conductor.simulate_get("/models/echo")).json
                if len(entry["workers"]) == 2:
                    break
                assert loop.time() < deadline, "the second worker never came"
                await asyncio.sleep(0.1)


def test_list_describe_and_scale_against_a_real_broker(make_server):
    server = make_server({"echo": "echo"}, "--workers", "1", "--frontends", "1")

    async def bounded() -> None:
        await asyncio.wait_for(scenario(server.control_address), SCENARIO_LIMIT_S)

    asyncio.run(bounded())
    assert len(server.workers("echo")) == 2  # the broker's own describe agrees
