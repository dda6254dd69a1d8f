--[[
  A pool's counters and histograms, in its stats HASH (the 8th of its keys, see
  includes/pool.lua and pools/keys.py); the exporter reads them (exporter/stats.py).

  Counters (fields): parked, requeued, handoffs:direct, handoffs:published,
  admitted:acquire, admitted:reservation, released, reclaimed:lease,
  reclaimed:reservation, lost_leases. What moves each is written where it moves.

  Histograms "wait" and "handoff" (ms): one field per bucket, "<name>:<bound>" counting
  the observations above the previous bound and at most this one (not cumulative: one
  HINCRBY per observation), "<name>:inf" those above the last bound, and "<name>:sum".
  The count is the sum of the buckets (no count field: one command less per observation).
  The bounds are mirrored in exporter/stats.py (a unit test compares them).

  TTL: a script that writes the hash sets its expiry to STATS_TTL_MS, once per call, so
  counters never keep a dead pool's keys alive: an hour after a pool's last event its
  stats are gone (Prometheus reads the restart from zero as a counter reset).
]]

local STATS_TTL_MS = 3600000
local WAIT_BUCKETS_MS = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                         120000, 300000, 600000, 1800000, 3600000}
local HANDOFF_BUCKETS_MS = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                            30000}

local stats_touched = {}

-- Add `by` (default 1) to counter `field` of a stats hash.
local function count(stats_key, field, by)
  redis.call('HINCRBY', stats_key, field, by or 1)
  if not stats_touched[stats_key] then
    stats_touched[stats_key] = true
    redis.call('PEXPIRE', stats_key, STATS_TTL_MS)
  end
end

-- Observe `ms` in histogram `name` (WAIT_BUCKETS_MS or HANDOFF_BUCKETS_MS as `bounds`).
local function observe(stats_key, name, bounds, ms)
  if ms < 0 then ms = 0 end  -- Redis's clock never runs back, but a failover's may
  local bucket = 'inf'
  for _, bound in ipairs(bounds) do
    if ms <= bound then
      bucket = bound
      break
    end
  end
  count(stats_key, name .. ':' .. bucket)
  count(stats_key, name .. ':sum', ms)
end
