"""aiohttp apps: the CNI API (Unix socket), introspection, and Prometheus metrics."""
