"""The local Ray `runtime._ray.ensure_ray` starts: its own, lean, and it leaves Ray's defaults.

Runs `ensure_ray()` in a subprocess without RAY_ADDRESS while the test session's Ray is up
(another Ray on the machine, the case that cost 3.3 s before): the subprocess gets a cluster
of its own (never the session's), without an autoscaler monitor process, with a dashboard
agent that did not have to fight for port 52365, and Ray's parameter defaults as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, ray
from ray._private import parameter
before = parameter.RayParams.__init__.__defaults__
from runtime._ray import ensure_ray
ensure_ray()
node = ray._private.worker._global_node
agent = [n for n in ray.nodes() if n["Alive"]][0].get("DashboardAgentListenPort")
print(json.dumps({
    "gcs": ray.get_runtime_context().gcs_address,
    "processes": sorted(node.all_processes),
    "agent_port": agent,
    "defaults_restored": parameter.RayParams.__init__.__defaults__ == before,
    "cpus": ray.cluster_resources().get("CPU"),
}))
ray.shutdown()
"""


def test_a_local_ray_of_its_own_without_monitor_beside_another_ray(ray_session):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["gcs"] != ray_session  # not attached to the Ray already on this machine
    assert "gcs_server" in seen["processes"] and "raylet" in seen["processes"]
    assert "monitor" not in seen["processes"]  # the autoscaler that ignored SIGTERM for 1 s
    assert seen["agent_port"] not in (None, 52365)  # a port of the system's choosing
    assert seen["defaults_restored"]
    assert seen["cpus"] >= 1
