-- wrk script for benches/load.sh: POSTs the lines of a file as request
-- bodies, round robin, each thread starting at its own offset so the threads
-- do not ask the same questions in lockstep.
--
--   wrk ... -s benches/load/bodies.lua URL -- BODIES_FILE API_KEY [PAUSE_MS]
--
-- With PAUSE_MS, each connection waits that long after an answer before it
-- sends its next request, so the load is paced below what the server can
-- take. Without it there is no `delay` function at all: wrk then sends each
-- request as soon as the last is answered, without a timer in between.
--
-- `done` prints one machine-readable RESULT line (latencies in microseconds)
-- because wrk's own --latency table stops at p99.

local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local bodies = {}
local i = 0

function init(args)
  local path, key = args[1], args[2]
  for line in io.lines(path) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  if #bodies == 0 then error("no bodies in " .. path) end
  i = ((id or 0) * 7919) % #bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key and #key > 0 then wrk.headers["Authorization"] = "Bearer " .. key end
  local pause = tonumber(args[3] or "")
  if pause and pause > 0 then
    delay = function() return pause end
  end
end

function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d socket_errors=%d non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
