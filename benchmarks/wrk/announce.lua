-- opentracker HTTP announce: cycles through N distinct peers (peer_id and
-- port differ) of one whitelisted torrent, so every request updates a real
-- peer entry and gets a sample of the swarm back.
-- wrk args: <url-encoded 20-byte info_hash> <number of peers> <numwant>

local paths = {}
local n, i = 0, 0

function init(args)
   local info_hash = args[1]
   local count = tonumber(args[2]) or 1000
   local numwant = tonumber(args[3]) or 16
   for k = 1, count do
      -- 20 bytes of peer_id: "-BL0001-" + 12 digits (all unreserved chars)
      local peer_id = string.format("-BL0001-%012d", k)
      paths[k] = string.format(
         "/announce?info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0" ..
         "&left=0&compact=1&numwant=%d&event=started",
         info_hash, peer_id, 10000 + k, numwant)
   end
   n = count
end

function request()
   i = i % n + 1
   return wrk.format("GET", paths[i])
end
