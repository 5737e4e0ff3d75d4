-- wrk script for bench/collector.py: load the HTTP collector with prepared Segment requests.
--
--   wrk -t2 -c32 -d10s -s bench/wrk/collector.lua http://127.0.0.1:PORT -- REQUESTS_FILE "Basic d2s6"
--
-- REQUESTS_FILE holds one request a line, "PATH<TAB>JSON BODY" (/v1/track, /v1/page, ... with one
-- message, or /v1/batch with many). Requests are built once per thread in init() and picked at
-- random per request, so wrk spends as little CPU as it can next to the API it measures. done()
-- prints "WRK_RESULT {json}" in the format bench/api_load.py parses (latencies in microseconds).

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_no", counter)
   table.insert(threads, thread)
end

local pool = {}

function init(args)
   local path, authorization = args[1], args[2]
   math.randomseed(7919 * (thread_no or 1))
   local headers = { ["Authorization"] = authorization, ["Content-Type"] = "application/json" }
   local f = assert(io.open(path, "r"), "cannot open requests file " .. tostring(path))
   for line in f:lines() do
      local tab = line:find("\t", 1, true)
      if tab then
         pool[#pool + 1] = wrk.format("POST", line:sub(1, tab - 1), headers, line:sub(tab + 1))
      end
   end
   f:close()
   assert(#pool > 0, "no requests in " .. path)
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
