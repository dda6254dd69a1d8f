"""Redis-backed resource pools: keys, Lua scripts, acquire/park/release and leases."""
