-- wrk script for bench/api_load.py: load the contacts API with ids drawn uniformly from a file.
--
--   wrk -t2 -c32 -d15s -s bench/wrk/contacts.lua http://127.0.0.1:PORT -- single IDS_FILE API_KEY
--   wrk -t2 -c32 -d15s -s bench/wrk/contacts.lua http://127.0.0.1:PORT -- batch IDS_FILE API_KEY 100
--
-- "single": GET /v1/contacts/{id}; "batch": POST /v1/contacts:batchGet with {"ids": [...]} of
-- BATCH ids. Requests are built once per thread in init() (a pool, picked at random per request)
-- so that wrk spends as little CPU as possible: it shares the machine with the API it measures.
-- done() prints one line "WRK_RESULT {json}" with the counts and latency percentiles (in
-- microseconds) including p99.9, which wrk's own --latency report leaves out.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_no", counter)
   table.insert(threads, thread)
end

local pool = {}

local function read_ids(path)
   local ids = {}
   local f = assert(io.open(path, "r"), "cannot open ids file " .. tostring(path))
   for line in f:lines() do
      if line ~= "" then
         ids[#ids + 1] = line
      end
   end
   f:close()
   assert(#ids > 0, "no ids in " .. path)
   return ids
end

function init(args)
   local mode, path, key, batch = args[1], args[2], args[3], tonumber(args[4] or "100")
   assert(mode == "single" or mode == "batch", "first argument: single or batch")
   math.randomseed(7919 * (thread_no or 1))
   local ids = read_ids(path)
   local headers = { ["Authorization"] = "Bearer " .. key }
   if mode == "single" then
      for i = 1, #ids do
         pool[i] = wrk.format("GET", "/v1/contacts/" .. ids[i], headers, nil)
      end
   else
      headers["Content-Type"] = "application/json"
      for i = 1, 512 do
         local picked = {}
         for j = 1, batch do
            picked[j] = '"' .. ids[math.random(#ids)] .. '"'
         end
         pool[i] = wrk.format("POST", "/v1/contacts:batchGet", headers, '{"ids":[' .. table.concat(picked, ",") .. "]}")
      end
   end
end

function request()
   return pool[math.random(#pool)]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"threads":%d,"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,'
         .. '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,'
         .. '"mean_us":%.1f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,"max_us":%.0f}\n',
      #threads, summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
