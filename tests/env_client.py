"""One env-host conversation from a synchronous test: `run_with_client(address, body)` opens an
`EnvClient` to the host, awaits `body(client)` and returns its result."""

import asyncio

from agentic.env.client import EnvClient


def run_with_client(address, body, timeout_s: float | None = None):
    """Runs `await body(client)` on a fresh event loop; `timeout_s` bounds the whole conversation."""
    async def main():
        async with EnvClient(address) as client:
            return await body(client)
    return asyncio.run(asyncio.wait_for(main(), timeout_s))
