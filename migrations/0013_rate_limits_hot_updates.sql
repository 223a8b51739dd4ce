-- Every rate-limited request (each /live/token, chat message, reaction, ...)
-- updates its key's row in rate_limits. 0008 indexed `tat` for the pruning
-- query, so no update could be HOT (heap-only: a changed indexed column needs
-- new entries in every index): each hit inserted into both indexes and left
-- dead entries behind for vacuum. Without that index, and with free space kept
-- on every page, a hit rewrites the row within its page and touches no index
-- (pgbench, one client, 2,000 keys, three alternating 8 s runs of
-- `SELECT rate_limit_hit(...)` on durable Postgres: p50 126-130 us -> 117-120
-- us, p99 208-217 -> 173-196 us, p99.9 296-391 -> 225-265 us; after about
-- 180,000 hits the table and its indexes took 8.3 MB before, 368 kB after,
-- every update HOT).
--
-- Pruning (the reconciler, keys rested for an hour, in bounded batches) now
-- scans the table instead: once per reconciler run, over an unlogged table of
-- one small row per key active in the last hour.
DROP INDEX rate_limits_tat_idx;
ALTER TABLE rate_limits SET (fillfactor = 50);
-- The fillfactor applies to pages written from now on; emptying the table
-- rewrites it. Limiter state may be lost without harm (0008): every key
-- starts afresh, as after a crash.
TRUNCATE rate_limits;
