"""The running gateway: lanes, batcher, outbox, as named asyncio tasks."""
