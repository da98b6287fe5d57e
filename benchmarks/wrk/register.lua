-- peernet POST /api/bootstrap/register with pre-generated, individually
-- signed requests.  Each line of the input file is
--     <base64 Ed25519 signature> TAB <exact JSON body bytes>
-- and every line is sent at most once (unique nonce: a replay would be
-- refused).  When the file runs out, the thread stops itself and reports
-- exhausted=true; the few requests still needed to fill open connections go
-- to GET /api/bootstrap/health and are counted in extra_requests.
-- Run with one wrk thread (-t1): a second thread would send the same lines.
-- wrk args: <path of the request file>

local reqs = {}
local n, i = 0, 0
local filler
status_counts = {}
exhausted = false
extra_requests = 0

function init(args)
   for line in io.lines(args[1]) do
      local sig, body = line:match("^([^\t]+)\t(.+)$")
      if sig then
         n = n + 1
         reqs[n] = wrk.format("POST", "/api/bootstrap/register",
            {["Content-Type"] = "application/json", ["Peernet-Signature"] = sig},
            body)
      end
   end
   filler = wrk.format("GET", "/api/bootstrap/health")
end

function request()
   if i >= n then
      if not exhausted then
         exhausted = true
         wrk.thread:stop()
      end
      extra_requests = extra_requests + 1
      return filler
   end
   i = i + 1
   return reqs[i]
end

function response(status, headers, body)
   status_counts[status] = (status_counts[status] or 0) + 1
end
