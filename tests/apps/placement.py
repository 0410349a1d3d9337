"""Apps whose tasks ask Ray for placement resources."""

from __future__ import annotations

import json

import ray

from application_sdk.app import App, task
from application_sdk.contracts import Input, Output


class Nothing(Input):
    pass


class Assigned(Output):
    resources: str
    """JSON of what Ray assigned to the attempt."""


class PlacedApp(App):
    @task(num_cpus=0.5, memory=50 * 2**20)
    async def placed(self, input: Nothing) -> Assigned:
        assigned = ray.get_runtime_context().get_assigned_resources()
        return Assigned(resources=json.dumps(assigned, sort_keys=True))

    async def run(self, input: Nothing) -> Assigned:
        return await self.placed(input)


class GreedyApp(App):
    @task(resources={"tpu_pod": 4})
    async def greedy(self, input: Nothing) -> Assigned:
        return Assigned(resources="{}")

    async def run(self, input: Nothing) -> Assigned:
        return await self.greedy(input)
