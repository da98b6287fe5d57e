-- Shared by every benchmark script (bootstrap_load.py prepends this file to
-- the endpoint's own script): done() prints one machine-readable line,
--   BENCHJSON {...}
-- with wrk's summary, latency percentiles (microseconds) and, where the
-- endpoint script counts them, per-status response counts.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function json_counts(counts)
   local parts = {}
   for status, n in pairs(counts) do
      table.insert(parts, string.format('"%s":%d', tostring(status), n))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local counts, exhausted, extra = {}, false, 0
   for _, t in ipairs(threads) do
      local c = t:get("status_counts")
      if type(c) == "table" then
         for status, n in pairs(c) do
            counts[status] = (counts[status] or 0) + n
         end
      end
      if t:get("exhausted") then exhausted = true end
      extra = extra + (tonumber(t:get("extra_requests")) or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d,' ..
      '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"statuses":%s,"exhausted":%s,"extra_requests":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max,
      json_counts(counts), tostring(exhausted), extra))
end
