-- bench_api_contacts.lua - wrk script: POST /api/v1/contacts single upserts,
-- every request a new address (thread id + counter), so each one inserts.
-- The Authorization header comes from wrk -H.
local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   counter = 0
   run = tostring(os.time())
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"email":"w%s-%d-%d@bench.example.com","fields":{"first_name":"Bench","n":%d}}',
      run, tid, counter, counter)
   return wrk.format("POST", "/api/v1/contacts", nil, body)
end
