-- A development dashboard for the worker agent: PROTOCOL.md section 1 on
-- 127.0.0.1, plus a few /dev/ calls to queue assignments and see what
-- arrived. It prints every call it receives.
--
--   goliat-host examples/dashboard.lua [options]
--     --port N               listen on N (default 8080; 0 picks a free port)
--     --port-file PATH       write the port there once listening
--     --demo N               queue N demo assignments (the 2nd exits with 3)
--     --exit-after-reports N exit once N agent reports have arrived
--
-- Development calls:
--   POST /dev/assignments  {"config": {...}, "split_index": 0, "delay_s": 0}
--       queues an assignment whose config is served at /configs/<id>.json,
--       delay_s seconds late (to imitate a slow blob store)
--   GET  /dev/events       everything received so far, as JSON; `requests`
--       lists the last 5000 calls but /dev/ ones (method, path, at, auth:
--       whether it carried an Authorization header, fault: the mode of the
--       misbehaviour it got, if any)
--   POST /dev/fail         misbehave on purpose, to test the agent:
--       {"mode": "status", "path": "^/api/", "count": 1, ...}, or a JSON
--       array of such faults. A call gets the first listed fault whose
--       `path` and `match` fit it and whose `count` is not used up. Fields:
--     mode      what the call gets (default "status"):
--       status      `status` (default 503) with a JSON error body, or with
--                   `body` as text/plain when one is given
--       reset       the connection is reset: no reply at all
--       truncate    200 with the Content-Length of `body` (default a small
--                   JSON object) but only its first `at` bytes (default
--                   half), then the connection closes
--       hang        no reply for `seconds` (default 20; /dev/clear ends it
--                   sooner), then 504
--       html200     200 with an HTML error page
--       bad_json    200 with invalid (cut) JSON
--       json_array, json_number, json_null   200 with [...], 42 or null
--       wrong_types 200 with `body` (default {"assigned": "yes"})
--       huge        200 with a JSON object that goes on for `bytes` (default
--                   300 MB; rounded up to 64 KiB), streamed as it is sent
--                   rather than built in memory
--       redirect    `status` (default 302) to `location` (default
--                   file:///etc/passwd)
--     path      Lua pattern of the request paths it applies to (default
--               "^/api/", e.g. "^/configs/" for config downloads); /dev/
--               calls never misbehave
--     match     Lua pattern the request body must contain (default: any)
--     count     how many calls get it (default 1; -1: until cleared)
--     status    the status of any mode but reset and hang
--     retry_after  a Retry-After header (seconds, or an HTTP date)
--     body      the body of status, truncate and the 200 modes
--       {"status": 503, "count": 3, "retry_after": "1"} (mode "status") is
--       the short form: the next 3 API calls get 503. A new POST /dev/fail
--       replaces the faults before it.
--   POST /dev/clear        stop misbehaving
local host = require "host"
local cjson = require "cjson.safe"

local opts = { port = 8080, demo = 0 }
do
  local args = { ... }
  local i = 1
  while i <= #args do
    local name, value = args[i], args[i + 1]
    if name == "--port" then opts.port = tonumber(value)
    elseif name == "--port-file" then opts.port_file = value
    elseif name == "--demo" then opts.demo = tonumber(value)
    elseif name == "--exit-after-reports" then opts.exit_after = tonumber(value)
    else
      io.stderr:write("dashboard: unknown option ", tostring(name), "\n")
      os.exit(2)
    end
    if value == nil then
      io.stderr:write("dashboard: ", name, " needs a value\n")
      os.exit(2)
    end
    i = i + 2
  end
end

local state = {
  queue = {},        -- assignments waiting for a worker
  configs = {},      -- id -> { body = json text, delay_s = seconds }
  heartbeats = {},   -- { machineId, at, facts }
  gui_updates = {},  -- { machineId, message, at }
  reports = 0,       -- gui updates that carry an assignment_id
  handed = {},       -- assignments handed out
  polls = 0,
  requests = {},     -- { method, path, at, auth, fault } (the last 5000)
  faults = {},       -- what POST /dev/fail asked for, in order
  generation = 0,    -- bumped by /dev/fail, /dev/clear and stopping
  next_id = 1,
}
local base_url

local function say(fmt, ...)
  io.stdout:write(os.date("!%H:%M:%S "), string.format(fmt, ...), "\n")
  io.stdout:flush()
end

local function json_reply(status, value, headers)
  headers = headers or {}
  headers["Content-Type"] = "application/json"
  return { status = status, headers = headers, body = cjson.encode(value) }
end

local function bad_request(text)
  return json_reply(400, { error = text, code = "INVALID_REQUEST" })
end

local function query_param(query, name)
  for k, v in (query or ""):gmatch("([^&=]+)=([^&]*)") do
    if k == name then
      return (v:gsub("+", " "):gsub("%%(%x%x)", function(h)
        return string.char(tonumber(h, 16))
      end))
    end
  end
  return nil
end

local function iso_now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

local function queue_assignment(spec)
  local id = spec.id or string.format("a%03d", state.next_id)
  local index = spec.split_index or (state.next_id - 1)
  state.next_id = state.next_id + 1
  state.configs[id] = {
    body = cjson.encode(spec.config or {}),
    delay_s = tonumber(spec.delay_s) or 0,
  }
  local a = {
    id = id,
    super_study_id = spec.super_study_id or "dev-study",
    split_index = index,
    config_url = spec.config_url or
      string.format("%s/configs/%s.json", base_url, id),
    created_at = iso_now(),
  }
  table.insert(state.queue, a)
  say("queued assignment %s (split %s)", id, tostring(index))
  return a
end

-- PROTOCOL.md section 1 ----------------------------------------------------

local function heartbeat(req)
  local body = cjson.decode(req.body)
  if type(body) ~= "table" or type(body.machineId) ~= "string"
      or body.machineId == "" then
    return bad_request("missing or invalid machineId")
  end
  table.insert(state.heartbeats, { machineId = body.machineId,
    at = host.time.now(), facts = body })
  say("heartbeat from %s", body.machineId)
  return json_reply(200, { success = true, timestamp = iso_now() })
end

local function assignment(req)
  local machine = query_param(req.query, "machineId")
  if not machine or machine == "" then
    return bad_request("missing machineId")
  end
  state.polls = state.polls + 1
  local a = table.remove(state.queue, 1)
  if not a then
    return json_reply(200, { assigned = false })
  end
  a.machineId = machine
  table.insert(state.handed, a)
  say("assignment %s handed to %s", a.id, machine)
  local copy = {}
  for k, v in pairs(a) do if k ~= "machineId" then copy[k] = v end end
  return json_reply(200, { assigned = true, assignment = copy })
end

local function gui_update(req)
  local body = cjson.decode(req.body)
  if type(body) ~= "table" or type(body.machineId) ~= "string"
      or type(body.message) ~= "table"
      or type(body.message.type) ~= "string" then
    return bad_request("invalid payload")
  end
  table.insert(state.gui_updates, { machineId = body.machineId,
    message = body.message, at = host.time.now() })
  local m = body.message
  if m.assignment_id ~= nil then
    state.reports = state.reports + 1
    say("REPORT from %s: %s for assignment %s: %s (exit code %s)",
      body.machineId, m.type, tostring(m.assignment_id),
      tostring(m.message), tostring(math.tointeger(m.exit_code) or m.exit_code))
    if opts.exit_after and state.reports >= opts.exit_after then
      host.task.spawn(function()
        host.time.sleep(0.2)
        say("received %d report(s): exiting", state.reports)
        os.exit(0)
      end)
    end
  else
    say("gui update from %s: %s", body.machineId, cjson.encode(m))
  end
  return json_reply(200, { success = true })
end

local function config(id)
  local c = state.configs[id]
  if not c then
    return json_reply(404, { error = "no such config", code = "NOT_FOUND" })
  end
  if c.delay_s > 0 then host.time.sleep(c.delay_s) end
  say("served config %s", id)
  return { status = 200, headers = { ["Content-Type"] = "application/json" },
    body = c.body }
end

-- Development calls ----------------------------------------------------------

local function dev_assignments(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" then return bad_request("expected a JSON object") end
  return json_reply(200, queue_assignment(spec))
end

local function dev_events()
  return json_reply(200, {
    heartbeats = state.heartbeats,
    gui_updates = state.gui_updates,
    handed = state.handed,
    polls = state.polls,
    requests = state.requests,
    queued = #state.queue,
  })
end

-- Misbehaving on purpose (POST /dev/fail) ---------------------------------

local BODIES = {
  html200 = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title>" ..
    "</head><body><h1>Bad Gateway</h1><p>The proxy got no valid reply." ..
    "</p></body></html>\n",
  bad_json = '{"assigned": false, "success": tru',
  json_array = '[{"assigned": false, "success": true}]',
  json_number = "42",
  json_null = "null",
  wrong_types = '{"assigned": "yes"}',
  truncate = '{"assigned": false, "success": true, "timestamp": ' ..
    '"2026-01-01T00:00:00Z", "note": "this reply is cut short"}',
}

local MODES = { status = true, reset = true, truncate = true, hang = true,
  html200 = true, bad_json = true, json_array = true, json_number = true,
  json_null = true, wrong_types = true, huge = true, redirect = true }

local function valid_pattern(p)
  return type(p) == "string" and pcall(string.match, "", p)
end

-- One fault from its JSON spec, or nil and why not.
local function parse_fault(spec)
  if type(spec) ~= "table" then return nil, "a fault is a JSON object" end
  local f = {
    mode = spec.mode or "status",
    path = spec.path or "^/api/",
    match = spec.match,
    count = math.tointeger(tonumber(spec.count) or 1),
    status = math.tointeger(tonumber(spec.status)),
    retry_after = spec.retry_after and tostring(spec.retry_after),
    location = spec.location or "file:///etc/passwd",
    body = type(spec.body) == "string" and spec.body or nil,
    seconds = tonumber(spec.seconds) or 20,
    bytes = tonumber(spec.bytes) or 300 * 1000 * 1000,
    at = math.tointeger(tonumber(spec.at)),
  }
  if not MODES[f.mode] then return nil, "unknown mode " .. tostring(f.mode) end
  if not valid_pattern(f.path) then return nil, "'path' is not a Lua pattern" end
  if f.match ~= nil and not valid_pattern(f.match) then
    return nil, "'match' is not a Lua pattern"
  end
  if not f.count or f.count < -1 then return nil, "bad 'count'" end
  if f.status and (f.status < 100 or f.status > 599) then
    return nil, "bad 'status'"
  end
  return f
end

local function dev_fail(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" then return bad_request("expected a JSON object") end
  local list = spec[1] ~= nil and spec or { spec }
  local faults = {}
  for i, one in ipairs(list) do
    local f, why = parse_fault(one)
    if not f then return bad_request("fault " .. i .. ": " .. why) end
    faults[i] = f
  end
  state.faults = faults
  state.generation = state.generation + 1
  say("misbehaving on purpose: %s", req.body)
  return json_reply(200, { success = true })
end

local function dev_clear()
  state.faults = {}
  state.generation = state.generation + 1
  say("misbehaving no more")
  return json_reply(200, { success = true })
end

-- The fault this call gets, if any (and count it used).
local function pick_fault(req)
  if req.path:match("^/dev/") then return nil end
  for _, f in ipairs(state.faults) do
    if f.count ~= 0 and req.path:match(f.path)
        and (f.match == nil or req.body:match(f.match)) then
      if f.count > 0 then f.count = f.count - 1 end
      return f
    end
  end
  return nil
end

local function plain(status, content_type, body, headers)
  headers = headers or {}
  headers["Content-Type"] = content_type
  return { status = status, headers = headers, body = body }
end

-- The reply of a call that gets fault f.
local function misbehave(f)
  local mode = f.mode
  local headers = { ["Retry-After"] = f.retry_after }
  if mode == "status" then
    if f.body then
      return plain(f.status or 503, "text/plain", f.body, headers)
    end
    return json_reply(f.status or 503,
      { error = "injected failure", code = "INTERNAL_ERROR" }, headers)
  elseif mode == "reset" then
    return { abort = true }
  elseif mode == "truncate" then
    local body = f.body or BODIES.truncate
    headers["Content-Type"] = "application/json"
    return { status = f.status or 200, body = body, headers = headers,
      truncate_at = f.at or #body // 2 }
  elseif mode == "hang" then
    local gen = state.generation
    local deadline = host.time.monotonic() + f.seconds
    while host.time.monotonic() < deadline and state.generation == gen do
      host.time.sleep(0.1)
    end
    return json_reply(504, { error = "hung up on purpose", code = "TIMEOUT" })
  elseif mode == "html200" then
    return plain(f.status or 200, "text/html", f.body or BODIES.html200,
      headers)
  elseif mode == "huge" then
    local chunk = ("x"):rep(64 * 1024)
    local head = '{"assigned": false, "padding": "'
    headers["Content-Type"] = "application/json"
    return { status = f.status or 200, headers = headers, body = head,
      body_repeat = { chunk = chunk,
        count = math.max(0, math.ceil((f.bytes - #head) / #chunk)) } }
  elseif mode == "redirect" then
    headers.Location = f.location
    return json_reply(f.status or 302, { error = "moved" }, headers)
  end
  -- 200 with a body of the wrong shape
  return plain(f.status or 200, "application/json", f.body or BODIES[mode],
    headers)
end

local function record(req, fault)
  local r = state.requests
  r[#r + 1] = { method = req.method, path = req.path, at = host.time.now(),
    auth = req.headers.authorization ~= nil, fault = fault and fault.mode }
  if #r > 5000 then table.remove(r, 1) end
end

local function handle(req)
  local p, m = req.path, req.method
  local fault = pick_fault(req)
  if not p:match("^/dev/") then record(req, fault) end
  if fault then
    say("%s %s: %s (as asked)", m, p, fault.mode)
    return misbehave(fault)
  end
  if m == "POST" and p == "/api/heartbeat" then return heartbeat(req) end
  if m == "GET" and p == "/api/assignment" then return assignment(req) end
  if m == "POST" and p == "/api/gui-update" then return gui_update(req) end
  local id = p:match("^/configs/([%w%-_]+)%.json$")
  if m == "GET" and id then return config(id) end
  if m == "POST" and p == "/dev/assignments" then return dev_assignments(req) end
  if m == "GET" and p == "/dev/events" then return dev_events() end
  if m == "POST" and p == "/dev/fail" then return dev_fail(req) end
  if m == "POST" and p == "/dev/clear" then return dev_clear() end
  return json_reply(404, { error = "not found", code = "NOT_FOUND" })
end

local server, err = host.http.serve({ host = "127.0.0.1", port = opts.port },
  handle)
if not server then
  io.stderr:write("dashboard: cannot listen: ", tostring(err), "\n")
  os.exit(1)
end
base_url = string.format("http://127.0.0.1:%d", server:port())
say("development dashboard on %s", base_url)
if opts.port_file then
  assert(host.fs.write_atomic(opts.port_file, tostring(server:port())))
end
for i = 1, opts.demo do
  queue_assignment({ config = { exit_code = (i == 2) and 3 or 0,
    duration_s = 2, steps = 2 } })
end
local function stop()
  state.generation = state.generation + 1 -- ends hanging replies
  server:close()
end
host.sys.on_signal("SIGINT", stop)
host.sys.on_signal("SIGTERM", stop)
