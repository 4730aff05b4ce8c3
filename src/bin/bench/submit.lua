-- wrk script for the gateway benchmark (src/bin/bench): POST /tasks/submit with a unique task_id
-- per request, optionally paced to a fixed aggregate rate.
--
-- Settings come from the environment (read when the script loads, in every wrk thread):
--   WAG_PREFIX   task_id prefix, unique per wrk run            (required)
--   WAG_TOPIC    topic to submit to                              (default say_hello)
--   WAG_RATE     aggregate requests per second; 0 = unpaced      (default 0)
--   WAG_THREADS  wrk's -t, to split WAG_RATE between threads     (default 1)
--
-- Pacing: wrk2 is not packaged in Debian, so a constant rate is made here. Each thread keeps a
-- schedule of send slots `period` ms apart; every request takes the next slot and wrk's delay()
-- holds it until then. A connection that falls behind sends at once (the schedule is absolute,
-- so the rate catches up), but wrk times latency from the moment a request is written, so a
-- backlog is not counted as latency (no coordinated-omission correction). At half of peak load
-- with 32 connections a backlog does not form, which the achieved rate printed beside it shows.
--
-- done() prints one machine-readable line, WRK_RESULT key=value ..., for the bench to parse.

local prefix = os.getenv("WAG_PREFIX") or "bench"
local topic = os.getenv("WAG_TOPIC") or "say_hello"
local rate = tonumber(os.getenv("WAG_RATE") or "0") or 0
local threads = tonumber(os.getenv("WAG_THREADS") or "1") or 1
local headers = { ["Content-Type"] = "application/json" }

local next_thread = 0
function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

local counter = 0
function request()
  counter = counter + 1
  local id = string.format("%s-%d-%d", prefix, thread_id or 0, counter)
  local body = string.format(
    '{"task_id":"%s","worker_id":"bench","topic":"%s","variables":{"name":"%s"}}', id, topic, id)
  return wrk.format("POST", "/tasks/submit", headers, body)
end

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } wag_timespec;
    int clock_gettime(int clock_id, wag_timespec *tp);
  ]]
  local ts = ffi.new("wag_timespec")
  local CLOCK_MONOTONIC = 1
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local period = 1000 * threads / rate
  local next_slot = nil

  function delay()
    local now = now_ms()
    next_slot = next_slot or now
    local slot = next_slot
    next_slot = next_slot + period
    local wait = slot - now
    if wait < 0 then return 0 end
    return wait
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
