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
--   GET  /dev/events       everything received so far, as JSON
--   POST /dev/fail         {"status": 503, "count": 3, "retry_after": "1"}
--       the next `count` API calls get that status
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
  fail = nil,        -- { status, count, retry_after }
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
    queued = #state.queue,
  })
end

local function dev_fail(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" then return bad_request("expected a JSON object") end
  state.fail = { status = tonumber(spec.status) or 503,
    count = tonumber(spec.count) or 1, retry_after = spec.retry_after }
  return json_reply(200, { success = true })
end

local function injected_failure(path)
  local f = state.fail
  if not f or f.count <= 0 or not path:match("^/api/") then return nil end
  f.count = f.count - 1
  say("failing %s with %d (as asked)", path, f.status)
  return json_reply(f.status, { error = "injected", code = "INTERNAL_ERROR" },
    { ["Retry-After"] = f.retry_after })
end

local function handle(req)
  local p, m = req.path, req.method
  local failed = injected_failure(p)
  if failed then return failed end
  if m == "POST" and p == "/api/heartbeat" then return heartbeat(req) end
  if m == "GET" and p == "/api/assignment" then return assignment(req) end
  if m == "POST" and p == "/api/gui-update" then return gui_update(req) end
  local id = p:match("^/configs/([%w%-_]+)%.json$")
  if m == "GET" and id then return config(id) end
  if m == "POST" and p == "/dev/assignments" then return dev_assignments(req) end
  if m == "GET" and p == "/dev/events" then return dev_events() end
  if m == "POST" and p == "/dev/fail" then return dev_fail(req) end
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
host.sys.on_signal("SIGINT", function() server:close() end)
host.sys.on_signal("SIGTERM", function() server:close() end)
