"""pyncette: a reliable distributed scheduler for asyncio."""
