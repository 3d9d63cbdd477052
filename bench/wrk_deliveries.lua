-- wrk script of the benchmark's "floor" scenario (bench/floor.py): each request is the next
-- pre-signed delivery of the file given after `--` (one a line: webhook-id TAB timestamp TAB
-- signature TAB body), each wrk thread taking every n-th line, so no delivery is sent twice.
-- When a thread has sent all of its own it stops (the run then ends before its duration), and
-- done() prints one JSON line with the figures.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local total = tonumber(args[2])  -- wrk's thread count
  local mine_index = id  -- set by setup()
  requests_list = {}
  local i = 0
  for line in io.lines(path) do
    if i % total == mine_index then
      local webhook_id, timestamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests_list[#requests_list + 1] = wrk.format("POST", "/ridendine/webhooks/refund-status", {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = webhook_id,
        ["webhook-timestamp"] = timestamp,
        ["webhook-signature"] = signature,
      }, body)
    end
    i = i + 1
  end
  sent = 0
  answered = 0
  duplicates = 0
  not_200 = 0
  exhausted = 0
end

function request()
  sent = sent + 1
  if sent > #requests_list then
    -- Out of deliveries: this one repeats the first (answered as a duplicate) and the thread
    -- stops at its answer. Counted, so that a run that ran out says so.
    exhausted = exhausted + 1
    return requests_list[1]
  end
  return requests_list[sent]
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    not_200 = not_200 + 1
  elseif body:find("duplicate", 1, true) then
    duplicates = duplicates + 1
  end
  if exhausted > 0 or answered >= #requests_list then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local dup, bad, ex = 0, 0, 0
  for _, thread in ipairs(threads) do
    dup = dup + (thread:get("duplicates") or 0)
    bad = bad + (thread:get("not_200") or 0)
    ex = ex + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  -- The latency distribution at 1 % steps (and 0.1 % above 99 %), so that the figures of
  -- separate runs can be merged (bench/floor.py: merged_percentile).
  local cdf = {}
  for q = 1, 99 do
    cdf[#cdf + 1] = string.format("[%d,%d]", q, latency:percentile(q))
  end
  for k = 1, 9 do
    cdf[#cdf + 1] = string.format("[%.1f,%d]", 99 + k / 10, latency:percentile(99 + k / 10))
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"duplicates":%d,"not_200":%d,"exhausted":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"cdf_us":[%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, dup, bad, ex, e.connect, e.read, e.write, e.status,
    e.timeout, table.concat(cdf, ",")))
end
