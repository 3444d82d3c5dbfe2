-- A development dashboard for the worker agent: PROTOCOL.md section 1 on
-- 127.0.0.1, plus a few /dev/ calls to queue assignments and see what
-- arrived. It prints every call it receives. With `--mode super-study` it
-- serves instead the deployed dashboard's super-study API (PROTOCOL.md
-- section 4), awkward parts included: see "The deployed dashboard" below.
--
--   goliat-host examples/dashboard.lua [options]
--     --port N               listen on N (default 8080; 0 picks a free port)
--     --port-file PATH       write the port there once listening
--     --demo N               queue N demo assignments (the 2nd exits with 3)
--     --exit-after-reports N exit once N agent reports have arrived
--     --mode MODE            "planned" (default: PROTOCOL.md section 1) or
--                            "super-study" (the deployed dashboard, section 4)
--     --stale-after S        super-study mode: a worker not seen for S seconds
--                            (default 300) becomes stale
--     --super-study NAME:N   create the super study NAME with N demo
--                            assignments (splitConfig {"exit_code": 0,
--                            "duration_s": 2, "steps": 2}) at start-up
--
-- Development calls:
--   POST /dev/assignments  {"config": {...}, "split_index": 0, "delay_s": 0}
--       queues an assignment whose config is served at /configs/<id>.json,
--       delay_s seconds late (to imitate a slow blob store)
--   GET  /dev/events       everything received so far, as JSON; `requests`
--       lists the last 50000 calls but /dev/ ones (method, path, at, auth:
--       whether it carried an Authorization header, fault: the mode of the
--       misbehaviour it got, if any, in_bytes: the size of the request
--       body, bytes: the size of the reply body as sent, machineId: the
--       one a JSON request body names, if any; bench/fleet.py counts them)
--       `results` lists the result uploads (POST /api/assignments/<id>/
--       results, multipart, in both modes) and `screenshots` the
--       POST /api/gui-screenshots calls, by size
--   GET  /dev/results/<n>  the n-th result upload, byte for byte
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
--   POST /dev/mode         {"mode": "planned"|"super-study"} switches the
--       protocol at run time (to test that an agent notices)
--   POST /dev/super-studies {"name": "...", "assignments": [<splitConfig>,
--       ...], "as_string": false}: creates a super study whose assignments
--       have those splitConfigs (stored as JSON strings when as_string is
--       true); replies with the study and its assignments (any mode)
--   POST /dev/reset-worker {"machineId": "..."}: what the operator's
--       DELETE /api/workers/<id> does, for the machine's current worker
--   POST /dev/history {"studies": N, "assignments": M,
--       "base_config_bytes": B}: a long history at once: N finished super
--       studies ("history-<k>", COMPLETED), each of M COMPLETED assignments
--       (default 200) run by a worker long gone, and with a base config of
--       about B bytes (default 0: none), which GET /api/super-studies lists
--       with each of them: the list grows by about B + 60 * M bytes per
--       study (the deployed dashboard's longer ids make it about 115 * M).
--       Replies {success, studies, list_bytes}
--   GET /dev/events also lists `super_studies` (stored statuses),
--       `workers` (stale rows too), `claims` ({assignmentId, machineId,
--       at}) and `history` (each change of an assignment's stored status:
--       {assignmentId, status, at, by}, `by` naming the claim, the
--       `finished` or the reset that made it)
local host = require "host"
local cjson = require "cjson.safe"

local MODES_OF_SERVICE = { planned = true, ["super-study"] = true }

local opts = { port = 8080, demo = 0, mode = "planned", stale_after = 300 }
do
  local function usage(...)
    io.stderr:write("dashboard: ", ...)
    io.stderr:write("\n")
    os.exit(2)
  end
  local args = { ... }
  local i = 1
  while i <= #args do
    local name, value = args[i], args[i + 1]
    if value == nil then usage(name, " needs a value") end
    if name == "--port" then opts.port = tonumber(value)
    elseif name == "--port-file" then opts.port_file = value
    elseif name == "--demo" then opts.demo = tonumber(value)
    elseif name == "--exit-after-reports" then opts.exit_after = tonumber(value)
    elseif name == "--mode" then
      if not MODES_OF_SERVICE[value] then usage("unknown mode ", value) end
      opts.mode = value
    elseif name == "--stale-after" then
      opts.stale_after = tonumber(value)
      if not opts.stale_after or opts.stale_after <= 0 then
        usage("--stale-after needs a positive number of seconds")
      end
    elseif name == "--super-study" then
      local study, n = value:match("^(.+):(%d+)$")
      if not study then usage("--super-study needs NAME:N") end
      opts.super_study = { name = study, count = tonumber(n) }
    else
      usage("unknown option ", tostring(name))
    end
    i = i + 2
  end
end

local state = {
  queue = {},        -- assignments waiting for a worker
  configs = {},      -- id -> { body = json text, delay_s = seconds }
  heartbeats = {},   -- { machineId, at, facts }
  gui_updates = {},  -- { machineId, message, at }
  results = {},      -- result uploads: { assignment_id, content_type, bytes,
                     --   at } (the bodies in result_bodies, same order)
  result_bodies = {},
  screenshots = {},  -- { content_type, bytes, at }
  reports = 0,       -- gui updates that carry an assignment_id
  handed = {},       -- assignments handed out
  polls = 0,
  requests = {},     -- { method, path, at, auth, fault, in_bytes, bytes,
                     --   machineId } (the last REQUEST_LOG_MAX)
  faults = {},       -- what POST /dev/fail asked for, in order
  generation = 0,    -- bumped by /dev/fail, /dev/clear and stopping
  next_id = 1,
  mode = opts.mode,  -- "planned" or "super-study" (POST /dev/mode)
}
local base_url

local function say(fmt, ...)
  if state.quiet then return end -- (POST /dev/history makes many studies)
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

-- Heartbeats and GUI updates are noted the same way in both modes.
local function note_heartbeat(body)
  table.insert(state.heartbeats, { machineId = body.machineId,
    at = host.time.now(), facts = body })
  say("heartbeat from %s", body.machineId)
end

local function note_gui_update(body)
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
end

local function heartbeat(req)
  local body = cjson.decode(req.body)
  if type(body) ~= "table" or type(body.machineId) ~= "string"
      or body.machineId == "" then
    return bad_request("missing or invalid machineId")
  end
  note_heartbeat(body)
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
  note_gui_update(body)
  return json_reply(200, { success = true })
end

-- POST /api/assignments/<id>/results: GOLIAT's upload of result files
-- (multipart), kept as it came; GET /dev/results/<n> gives the n-th back.
local function results_upload(req, id)
  local ctype = req.headers["content-type"] or ""
  if not ctype:match("^multipart/form%-data") then
    return bad_request("expected multipart/form-data")
  end
  table.insert(state.results, { assignment_id = id, content_type = ctype,
    bytes = #req.body, at = host.time.now() })
  table.insert(state.result_bodies, req.body)
  say("results for assignment %s: %d bytes", id, #req.body)
  return json_reply(200, { success = true })
end

local function dev_result(n)
  local body = state.result_bodies[n]
  if not body then return json_reply(404, { error = "no such upload" }) end
  return { status = 200, headers = {
    ["Content-Type"] = state.results[n].content_type }, body = body }
end

-- POST /api/gui-screenshots: recorded (size only), not kept.
local function screenshots(req)
  table.insert(state.screenshots, { content_type =
    req.headers["content-type"], bytes = #req.body, at = host.time.now() })
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

-- The deployed dashboard: super studies (PROTOCOL.md section 4) -----------
--
-- Served in --mode super-study. A faithful stand-in, quirks included: a
-- claim never refuses, `finished` completes whichever RUNNING assignment of
-- the worker comes first, `fatal_error` leaves the assignment RUNNING, the
-- heartbeat matches workers by hostname too (the row's ipAddress flips),
-- and a gui-update from a machine without a worker row falls back to any
-- recent worker with a RUNNING assignment. Nothing here refuses on behalf
-- of the agent: the agent must cope.
--
-- Routes (super-study mode only; in planned mode they are JSON 404s):
--   GET    /api/super-studies[?name=N]         newest first, brief assignments
--                                              (and baseConfig, if it has one)
--   POST   /api/super-studies                  {name, assignments: [...]}
--   GET    /api/super-studies/<id>/assignments stored status, `worker`
--   GET    /api/super-studies/<id>             derived status per assignment
--   POST   /api/assignments/<id>/claim         {machineId}; never refuses
--   POST   /api/heartbeat, /api/gui-update     with the effects below
--   DELETE /api/workers/<id>                   the operator's reset
--   DELETE /api/super-studies/<id>             the super study and its
--                                              assignments deleted
--   GET    /api/workers/<id>                   {worker: {..., lastSeen},
--                                              guiState}
--   GET    /api/workers                        the workers that are not stale
-- Any other /api/ path (GET /api/assignment among them) gets Next.js's HTML
-- 404 page. A body that is not JSON gets 500, as deployed.
--
-- Staleness is applied eagerly: before every call, each worker not seen
-- for --stale-after seconds is marked stale (and stays so). "The most
-- recent" worker of a machine is the one seen last. Ids are "ss1", "as1",
-- "w1"; timestamps ISO-8601 with milliseconds.

local GUI_FALLBACK_S = 120 -- the gui-update fallback's "recent worker" window

local ss = {
  studies = {},        -- in creation order
  study_by_id = {},
  assignments = {},    -- in storage (creation) order, all studies
  assignment_by_id = {},
  workers = {},        -- in creation order; a reset deletes the row
  worker_by_id = {},
  claims = {},         -- { assignmentId, machineId, at }
  history = {},        -- { assignmentId, status, at, by }: every change of
                       --   an assignment's stored status (GET /dev/events)
  counters = { ss = 0, as = 0, w = 0, seq = 0 },
}

local function new_id(kind)
  ss.counters[kind] = ss.counters[kind] + 1
  ss.counters.seq = ss.counters.seq + 1
  return kind .. ss.counters[kind], ss.counters.seq
end

-- ISO-8601 with milliseconds: later times sort after earlier ones.
local function iso_ms(t)
  local s = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", s) ..
    string.format(".%03dZ", math.min(999, math.floor((t - s) * 1000)))
end

-- JSON for this section. lua-cjson 2.1.0 encodes an empty table as {} and
-- has no nil: values are built with these markers instead.
local ARRAY = {}  -- metatable: a JSON array, [] when empty
local OBJECT = {} -- metatable: {names, values}, keys in order, nil is null
local RAW = {}    -- metatable: {text}, JSON text inserted as it is

local function array(t) return setmetatable(t or {}, ARRAY) end
local function raw(text) return setmetatable({ text = text }, RAW) end

-- An ordered object of src's fields `names` (missing ones are null).
local function object(names, src)
  local o = setmetatable({ names = {}, values = {} }, OBJECT)
  for i, k in ipairs(names) do
    o.names[i], o.values[i] = k, src and src[k]
  end
  return o
end

-- Set (or add) field k of an ordered object.
local function set(o, k, v)
  for i, name in ipairs(o.names) do
    if name == k then o.values[i] = v; return o end
  end
  o.names[#o.names + 1] = k
  o.values[#o.names] = v
  return o
end

local function to_json(v)
  if v == nil or v == cjson.null then return "null" end
  if type(v) ~= "table" then return cjson.encode(v) or "null" end
  local mt, parts = getmetatable(v), {}
  if mt == RAW then return v.text end
  if mt == OBJECT then
    for i, k in ipairs(v.names) do
      parts[i] = cjson.encode(k) .. ":" .. to_json(v.values[i])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  local n, keys = 0, {}
  for k in pairs(v) do n = n + 1; keys[n] = k end
  if mt == ARRAY or (n > 0 and n == #v) then
    for i = 1, #v do parts[i] = to_json(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for i, k in ipairs(keys) do
    parts[i] = cjson.encode(tostring(k)) .. ":" .. to_json(v[k])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Every reply carries the dashboard's clock in `Date`, as Next.js does.
local function ss_reply(status, value)
  return { status = status, headers = { ["Content-Type"] = "application/json",
    ["Date"] = os.date("!%a, %d %b %Y %H:%M:%S GMT") },
    body = to_json(value) }
end

local function ss_error(status, text, details)
  local e = { error = text, details = details }
  return ss_reply(status, object(details and { "error", "details" }
    or { "error" }, e))
end

-- What Next.js answers for a route it does not have.
local NEXT_404 = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/>' ..
  '<title>404: This page could not be found.</title></head><body>' ..
  '<div style="font-family:system-ui,sans-serif;text-align:center">' ..
  '<h1>404</h1><h2>This page could not be found.</h2></div></body></html>'

local function next_404()
  return { status = 404, body = NEXT_404, headers = {
    ["Content-Type"] = "text/html; charset=utf-8",
    ["X-Powered-By"] = "Next.js" } }
end

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local WORKER_FIELDS = { "id", "ipAddress", "hostname", "status", "lastSeen",
  "createdAt", "isStale", "gpuName", "cpuCores", "totalRamGB" }
local WORKER_BRIEF = { "id", "ipAddress", "hostname", "isStale", "gpuName",
  "cpuCores", "totalRamGB" }
local WORKER_LIST = { "id", "ipAddress", "hostname", "status", "lastSeen",
  "createdAt" }
local ASSIGNMENT_FIELDS = { "id", "index", "status", "splitConfig",
  "progress", "currentStage", "eta", "startedAt", "completedAt", "workerId",
  "superStudyId" }
local STUDY_FIELDS = { "id", "name", "description", "status",
  "totalAssignments", "completedAssignments", "masterProgress", "createdAt",
  "updatedAt", "baseConfigPath" }
local STATUSES = { PENDING = true, RUNNING = true, COMPLETED = true,
  FAILED = true, CANCELLED = true }

-- Workers --------------------------------------------------------------

local function refresh_stale(now)
  for _, w in ipairs(ss.workers) do
    if not w.isStale and now - w.seen_at > opts.stale_after then
      w.isStale = true
      say("worker %s (%s) is stale: not seen for %.0f s", w.id, w.ipAddress,
        now - w.seen_at)
    end
  end
end

-- The most recently seen worker that pred() accepts.
local function most_recent(pred)
  local best
  for _, w in ipairs(ss.workers) do
    if pred(w) and (not best or w.seen_at > best.seen_at or
        (w.seen_at == best.seen_at and w.seq > best.seq)) then
      best = w
    end
  end
  return best
end

local function worker_of(machine)
  return most_recent(function(w)
    return not w.isStale and w.ipAddress == machine
  end)
end

local function touch(w, now)
  w.seen_at, w.lastSeen = now, iso_ms(now)
end

local function new_worker(machine, now, hostname)
  local id, seq = new_id("w")
  local w = { id = id, seq = seq, ipAddress = machine, hostname = hostname,
    status = "IDLE", isStale = false, created_at = now,
    createdAt = iso_ms(now) }
  touch(w, now)
  table.insert(ss.workers, w)
  ss.worker_by_id[id] = w
  return w
end

local function running_of(w)
  local list = {}
  for _, a in ipairs(ss.assignments) do
    if a.workerId == w.id and a.status == "RUNNING" then
      list[#list + 1] = a
    end
  end
  return list
end

local function ids_of(list)
  local ids = {}
  for i, a in ipairs(list) do ids[i] = a.id end
  return #ids > 0 and table.concat(ids, ", ") or "none"
end

-- Assignments and super studies ----------------------------------------

-- A splitConfig as received: a JSON string stays one; an object is kept as
-- the exact JSON text of the request (at `...` in it), as the deployed
-- dashboard's database keeps it: lua-cjson would turn [] into {}.
local function received_config(body, value, ...)
  if type(value) ~= "table" then return value end
  return raw(assert(host.json.select(body, ...)))
end

-- splitConfig as served: a JSON string holding an object comes back parsed.
local function split_config(a)
  if type(a.splitConfig) == "string" then
    local v = cjson.decode(a.splitConfig)
    if type(v) == "table" then return raw(a.splitConfig) end
  end
  return a.splitConfig
end

-- The worker /assignments shows: a stale worker is replaced by the active
-- worker with the same ipAddress, when there is one.
local function shown_worker(a)
  local w = a.workerId and ss.worker_by_id[a.workerId]
  if w and w.isStale then
    w = worker_of(w.ipAddress) or w
  end
  return w
end

local function derived_status(a)
  if a.status ~= "RUNNING" then return a.status end
  local w = a.workerId and ss.worker_by_id[a.workerId]
  if not w then return "PENDING" end
  if w.isStale or w.status == "IDLE" then
    return a.completedAt and "COMPLETED" or "PENDING"
  end
  if w.status == "ERROR" then return "FAILED" end
  return "RUNNING"
end

-- An assignment as stored (splitConfig as stored too when raw_config).
local function assignment_json(a, raw_config)
  local o = object(ASSIGNMENT_FIELDS, a)
  if not raw_config then set(o, "splitConfig", split_config(a)) end
  return o
end

-- The super study's counters (and COMPLETED status) follow its assignments;
-- status, when given, is set first (a claim sets RUNNING).
local function recount(s, now, status)
  local before = s.status
  s.status = status or s.status
  local done = 0
  for _, a in ipairs(s.list) do
    if a.status == "COMPLETED" then done = done + 1 end
  end
  s.totalAssignments, s.completedAssignments = #s.list, done
  s.masterProgress = #s.list > 0 and done * 100 / #s.list or 0
  if #s.list > 0 and done == #s.list then
    s.status = "COMPLETED"
  elseif s.status == "COMPLETED" then
    s.status = "PENDING"
    for _, a in ipairs(s.list) do
      if a.status == "RUNNING" then s.status = "RUNNING" end
    end
  end
  s.updatedAt = iso_ms(now)
  if s.status ~= before then
    say("super study %s (%s): %s -> %s (%d/%d completed)", s.name, s.id,
      before, s.status, done, #s.list)
  end
end

-- Create a super study; specs is a list of {splitConfig, status}.
local function create_study(name, description, specs, base_config)
  local now = host.time.now()
  local id, seq = new_id("ss")
  local s = { id = id, seq = seq, name = name, description = description,
    status = "PENDING", totalAssignments = #specs, completedAssignments = 0,
    masterProgress = 0, createdAt = iso_ms(now), updatedAt = iso_ms(now),
    baseConfigPath = base_config ~= nil and
      ("super-studies/" .. id .. "/base_config.json") or nil,
    baseConfig = base_config, list = {} }
  for i, spec in ipairs(specs) do
    local a = { id = new_id("as"), index = i - 1,
      status = spec.status or "PENDING", splitConfig = spec.splitConfig,
      progress = 0, superStudyId = id }
    s.list[i] = a
    table.insert(ss.assignments, a)
    ss.assignment_by_id[a.id] = a
  end
  table.insert(ss.studies, s)
  ss.study_by_id[id] = s
  recount(s, now)
  say("super study %s (%s) created: %d assignment(s): %s", name, id, #s.list,
    ids_of(s.list))
  return s
end

-- A study with its assignments, each shown by view(a).
local function study_json(s, view)
  local list = array()
  for i, a in ipairs(s.list) do list[i] = view(a) end
  return set(object(STUDY_FIELDS, s), "assignments", list)
end

local function full_view(a) return assignment_json(a) end

-- An assignment's stored status changes (kept in ss.history, for tests
-- that look at what the dashboard showed and for how long).
local function set_status(a, status, by, now)
  if a.status ~= status then
    table.insert(ss.history, { assignmentId = a.id, status = status,
      at = now, by = by })
  end
  a.status = status
end

-- The operator's reset: all of w's assignments back to PENDING, row deleted.
local function reset_worker(w, how)
  local now, n, touched = host.time.now(), 0, {}
  for _, a in ipairs(ss.assignments) do
    if a.workerId == w.id then
      set_status(a, "PENDING", "reset", now)
      a.progress, a.workerId = 0, nil
      a.startedAt, a.completedAt = nil, nil
      n = n + 1
      touched[a.superStudyId] = true
    end
  end
  for _, s in ipairs(ss.studies) do
    if touched[s.id] then recount(s, now) end
  end
  for i, row in ipairs(ss.workers) do
    if row == w then table.remove(ss.workers, i); break end
  end
  ss.worker_by_id[w.id] = nil
  say("worker %s reset by operator%s: %d assignment(s) back to PENDING",
    w.id, how or "", n)
  return n
end

-- Routes ---------------------------------------------------------------

-- The body as JSON; nil and a 500 reply when it is not JSON (as deployed).
local function ss_body(req, what)
  local body, err = cjson.decode(req.body)
  if body == nil then
    return nil, ss_error(500, "Failed to process " .. what, tostring(err))
  end
  return type(body) == "table" and body or {}
end

local function ss_heartbeat(req)
  local body, failed = ss_body(req, "heartbeat")
  if not body then return failed end
  local machine = nonempty(body.machineId)
  if not machine then return ss_error(400, "machineId is required") end
  note_heartbeat(body)
  local now = host.time.now()
  local hostname = nonempty(body.hostname)
  local w = worker_of(machine)
  if not w and hostname then
    w = most_recent(function(row)
      return not row.isStale and row.hostname == hostname
    end)
    if w then
      say("worker %s: hostname %s shared: ipAddress %s -> %s", w.id,
        hostname, w.ipAddress, machine)
      w.ipAddress = machine
    end
  end
  if not w then
    w = new_worker(machine, now, hostname)
    local moved = {}
    for _, a in ipairs(ss.assignments) do
      local old = a.workerId and ss.worker_by_id[a.workerId]
      if a.status == "RUNNING" and old and old.isStale
          and old.ipAddress == machine then
        a.workerId = w.id
        moved[#moved + 1] = a
      end
    end
    say("worker %s created for %s (hostname %s)%s", w.id, machine,
      tostring(hostname), #moved > 0 and ("; RUNNING assignment(s) " ..
      ids_of(moved) .. " moved to it from stale worker(s)") or "")
  end
  touch(w, now)
  if hostname then w.hostname = hostname end
  if math.tointeger(body.cpuCores) then w.cpuCores = math.tointeger(body.cpuCores) end
  if type(body.totalRamGB) == "number" then w.totalRamGB = body.totalRamGB end
  if type(body.gpuName) == "string" then w.gpuName = body.gpuName end
  return ss_reply(200, object({ "success", "timestamp" },
    { success = true, timestamp = iso_ms(now) }))
end

local function ss_gui_update(req)
  local body, failed = ss_body(req, "GUI update")
  if not body then return failed end
  local machine = nonempty(body.machineId)
  if not machine then return ss_error(400, "machineId is required") end
  local m = body.message
  if type(m) ~= "table" or type(m.type) ~= "string" then
    return ss_error(400, "message.type is required")
  end
  note_gui_update(body)
  local now = host.time.now()
  local w = worker_of(machine)
  if not w then
    -- the deployed dashboard's dangerous fallback
    local best
    for _, row in ipairs(ss.workers) do
      if now - row.created_at <= GUI_FALLBACK_S and #running_of(row) > 0
          and (not best or row.seq > best.seq) then
        best = row
      end
    end
    w = best
    if not w then
      say("gui update from %s: no worker row: recorded only", machine)
      return ss_reply(200, object({ "success" }, { success = true }))
    end
    say("gui update from %s: no worker row of its own: FELL BACK to worker " ..
      "%s (%s), created %.0f s ago", machine, w.id, w.ipAddress,
      now - w.created_at)
  end
  local running = running_of(w)
  local function worker_status(status)
    if w.status ~= status then
      say("worker %s (%s): %s -> %s by %s", w.id, w.ipAddress, w.status,
        status, m.type)
      w.status = status
    end
  end
  if m.type == "overall_progress" or m.type == "stage_progress" then
    worker_status("RUNNING")
    for _, a in ipairs(running) do
      if m.type == "overall_progress" then
        local cur, total = tonumber(m.current), tonumber(m.total)
        if cur and total and total > 0 then a.progress = cur * 100 / total end
      elseif m.name ~= nil then
        a.currentStage = tostring(m.name)
      end
    end
  elseif m.type == "finished" then
    worker_status("IDLE")
    local a = running[1] -- the first one found, whichever it is
    if a then
      set_status(a, "COMPLETED", "finished from " .. machine, now)
      a.completedAt = iso_ms(now)
      local note = ""
      if m.assignment_id ~= nil and tostring(m.assignment_id) ~= a.id then
        note = string.format(" (but the report was for %s!)",
          tostring(m.assignment_id))
      end
      say("assignment %s COMPLETED by finished from %s%s", a.id, machine, note)
      recount(ss.study_by_id[a.superStudyId], now)
    else
      say("finished from %s: worker %s has no RUNNING assignment", machine,
        w.id)
    end
  elseif m.type == "fatal_error" then
    worker_status("ERROR")
    say("fatal_error from %s: assignment(s) %s stay RUNNING (shown FAILED)",
      machine, ids_of(running))
  end
  return ss_reply(200, object({ "success" }, { success = true }))
end

local function ss_claim(req, id)
  local body, failed = ss_body(req, "claim")
  if not body then return failed end
  local machine = nonempty(body.machineId)
  if not machine then return ss_error(400, "machineId is required") end
  local now = host.time.now()
  local w = worker_of(machine)
  if not w then
    w = new_worker(machine, now, nil)
    say("worker %s created for %s by a claim (no hostname)", w.id, machine)
  end
  local a = ss.assignment_by_id[id]
  if not a then
    say("claim of unknown assignment %s by %s: 500 (worker %s stays)", id,
      machine, w.id)
    return ss_error(500, "Failed to claim assignment",
      "Record to update not found: no assignment " .. id)
  end
  local note = ""
  if a.status == "RUNNING" and a.workerId and a.workerId ~= w.id then
    note = " (taken over from " .. a.workerId .. ")"
  elseif a.status ~= "PENDING" then
    note = " (was " .. a.status .. ")"
  end
  set_status(a, "RUNNING", "claim by " .. machine, now)
  a.workerId, a.startedAt = w.id, iso_ms(now)
  w.status = "RUNNING"
  touch(w, now)
  local s = ss.study_by_id[a.superStudyId]
  recount(s, now, "RUNNING")
  table.insert(ss.claims, { assignmentId = a.id, machineId = machine,
    at = now })
  say("claim of %s (index %d of %s) by %s: RUNNING under %s%s", a.id, a.index,
    s.name, machine, w.id, note)
  return ss_reply(200, set(assignment_json(a), "worker",
    object(WORKER_FIELDS, w)))
end

local function ss_list_studies(req)
  local name = query_param(req.query, "name")
  local list = array()
  for _, s in ipairs(ss.studies) do
    if name == nil or s.name == name then list[#list + 1] = s end
  end
  table.sort(list, function(a, b)
    if a.createdAt ~= b.createdAt then return a.createdAt > b.createdAt end
    return a.seq > b.seq
  end)
  -- built as one text: a long history's list is large (POST /dev/history),
  -- and its base configs are not copied more than once
  local parts = { "[" }
  for i, s in ipairs(list) do
    local entry = to_json(study_json(s, function(a)
      return object({ "id", "status", "workerId" }, a)
    end))
    if i > 1 then parts[#parts + 1] = "," end
    if s.baseConfig ~= nil then
      parts[#parts + 1] = entry:sub(1, -2)
      parts[#parts + 1] = ',"baseConfig":'
      parts[#parts + 1] = to_json(s.baseConfig)
      parts[#parts + 1] = "}"
    else
      parts[#parts + 1] = entry
    end
  end
  parts[#parts + 1] = "]"
  return ss_reply(200, raw(table.concat(parts)))
end

local function ss_study_assignments(id)
  local s = ss.study_by_id[id]
  local list = array()
  for i, a in ipairs(s and s.list or {}) do
    local w = shown_worker(a)
    list[i] = set(assignment_json(a), "worker", w and object(WORKER_BRIEF, w))
  end
  return ss_reply(200, list)
end

local function ss_study(id)
  local s = ss.study_by_id[id]
  if not s then return ss_error(404, "Super study not found") end
  return ss_reply(200, study_json(s, function(a)
    local w = a.workerId and ss.worker_by_id[a.workerId]
    return set(set(assignment_json(a), "status", derived_status(a)), "worker",
      w and object(WORKER_FIELDS, w))
  end))
end

local function ss_create_study(req)
  local body, failed = ss_body(req, "super study")
  if not body then return failed end
  if not nonempty(body.name) or not is_array(body.assignments) then
    return ss_error(400, "name and assignments are required")
  end
  local specs = {}
  for i, one in ipairs(body.assignments) do
    if type(one) ~= "table" or one.splitConfig == nil then
      return ss_error(400, "assignment " .. (i - 1) .. " needs a splitConfig")
    end
    if one.status ~= nil and not STATUSES[one.status] then
      return ss_error(400, "assignment " .. (i - 1) .. ": invalid status")
    end
    specs[i] = { splitConfig = received_config(req.body, one.splitConfig,
      "assignments", i, "splitConfig"), status = one.status }
  end
  local s = create_study(body.name, nonempty(body.description), specs,
    received_config(req.body, body.baseConfig, "baseConfig"))
  return ss_reply(200, study_json(s, full_view))
end

local function ss_delete_worker(id)
  local w = ss.worker_by_id[id]
  if not w then return ss_error(404, "Worker not found") end
  reset_worker(w)
  return ss_reply(200, object({ "success" }, { success = true }))
end

-- DELETE /api/super-studies/<id>: the super study and its assignments
-- go (a cascade); an unknown id is a 500, as the deployed one's.
local function ss_delete_study(id)
  local s = ss.study_by_id[id]
  if not s then
    return ss_error(500, "Failed to delete super study",
      "Record to delete does not exist.")
  end
  for i, x in ipairs(ss.studies) do
    if x == s then table.remove(ss.studies, i); break end
  end
  ss.study_by_id[id] = nil
  local kept = {}
  for _, a in ipairs(ss.assignments) do
    if a.superStudyId == id then
      ss.assignment_by_id[a.id] = nil
    else
      kept[#kept + 1] = a
    end
  end
  ss.assignments = kept
  say("super study %s (%s) deleted with its assignments", s.name, id)
  return ss_reply(200, object({ "success", "message" }, { success = true,
    message = "Super study deleted successfully" }))
end

-- GET /api/workers/<id>: the worker with its lastSeen (and the latest GUI
-- state, which this dashboard does not keep: null).
local function ss_get_worker(id)
  local w = ss.worker_by_id[id]
  if not w then return ss_error(404, "Worker not found") end
  return ss_reply(200, object({ "worker", "guiState" }, {
    worker = object({ "id", "ipAddress", "hostname", "status", "lastSeen",
      "machineLabel" }, w), guiState = cjson.null }))
end

local function ss_list_workers()
  local list = array()
  for _, w in ipairs(ss.workers) do
    if not w.isStale then list[#list + 1] = w end
  end
  table.sort(list, function(a, b)
    if a.seen_at ~= b.seen_at then return a.seen_at > b.seen_at end
    return a.seq > b.seq
  end)
  for i, w in ipairs(list) do list[i] = object(WORKER_LIST, w) end
  return ss_reply(200, list)
end

-- The reply of a super-study mode call, or nil for the calls both modes
-- share (/configs/, /dev/).
local function super_study_route(req)
  local p, m = req.path, req.method
  if not p:match("^/api/") then return nil end
  if m == "POST" and p == "/api/heartbeat" then return ss_heartbeat(req) end
  if m == "POST" and p == "/api/gui-update" then return ss_gui_update(req) end
  if m == "GET" and p == "/api/super-studies" then return ss_list_studies(req) end
  if m == "POST" and p == "/api/super-studies" then return ss_create_study(req) end
  if m == "GET" and p == "/api/workers" then return ss_list_workers() end
  local id = p:match("^/api/super%-studies/([^/]+)/assignments$")
  if m == "GET" and id then return ss_study_assignments(id) end
  id = p:match("^/api/super%-studies/([^/]+)$")
  if m == "GET" and id then return ss_study(id) end
  if m == "DELETE" and id then return ss_delete_study(id) end
  id = p:match("^/api/assignments/([^/]+)/claim$")
  if m == "POST" and id then return ss_claim(req, id) end
  id = p:match("^/api/assignments/([^/]+)/results$")
  if m == "POST" and id then return results_upload(req, id) end
  if m == "POST" and p == "/api/gui-screenshots" then return screenshots(req) end
  id = p:match("^/api/workers/([^/]+)$")
  if m == "DELETE" and id then return ss_delete_worker(id) end
  if m == "GET" and id then return ss_get_worker(id) end
  return next_404() -- /api/assignment among them: the deployed has none
end

-- Development calls for super studies (any mode) -----------------------

local function dev_mode(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" or not MODES_OF_SERVICE[spec.mode] then
    return bad_request('expected {"mode": "planned"|"super-study"}')
  end
  say("mode: %s (was %s)", spec.mode, state.mode)
  state.mode = spec.mode
  return json_reply(200, { success = true, mode = state.mode })
end

local function dev_super_studies(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" or not is_array(spec.assignments) then
    return bad_request('expected {"name": "...", "assignments": [...]}')
  end
  local specs = {}
  for i, split in ipairs(spec.assignments) do
    local text = assert(host.json.select(req.body, "assignments", i))
    specs[i] = { splitConfig = spec.as_string == true and text or
      received_config(req.body, split, "assignments", i) }
  end
  local name = nonempty(spec.name) or ("dev-study-" .. (ss.counters.ss + 1))
  local s = create_study(name, nonempty(spec.description), specs)
  return ss_reply(200, study_json(s, full_view))
end

local function dev_reset_worker(req)
  local spec = cjson.decode(req.body)
  local machine = type(spec) == "table" and nonempty(spec.machineId)
  if not machine then return bad_request("missing machineId") end
  local w = worker_of(machine)
  if not w then
    return json_reply(404, { error = "no worker for " .. machine,
      code = "NOT_FOUND" })
  end
  local n = reset_worker(w, " (POST /dev/reset-worker)")
  return json_reply(200, { success = true, workerId = w.id, reset = n })
end

-- POST /dev/history: N finished super studies at once (see the header).
local HISTORY_WORKER = "w-history" -- the worker that ran them: gone
local HISTORY_CONFIG = raw('{"history": true}')

local function dev_history(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" then return bad_request("expected a JSON object") end
  local n = math.tointeger(tonumber(spec.studies))
  local m = math.tointeger(tonumber(spec.assignments or 200))
  local bytes = math.tointeger(tonumber(spec.base_config_bytes or 0))
  if not (n and n >= 1 and n <= 100000 and m and m >= 0 and m <= 10000 and
      bytes and bytes >= 0 and bytes <= 64 * 1024 * 1024) then
    return bad_request('expected {"studies": 1..100000, "assignments": ' ..
      '0..10000, "base_config_bytes": 0..67108864}')
  end
  local base -- one text for all: the dashboard holds it once
  if bytes > 0 then
    local head = '{"study_type": "far_field", "note": "POST /dev/history", ' ..
      '"filler": "'
    base = raw(head .. ("x"):rep(math.max(0, bytes - #head - 2)) .. '"}')
  end
  local now = host.time.now()
  local first = ss.counters.ss + 1
  state.quiet = true -- (no yield in here: nothing else is kept quiet)
  for k = first, first + n - 1 do
    local specs = {}
    for i = 1, m do
      specs[i] = { splitConfig = HISTORY_CONFIG, status = "COMPLETED" }
    end
    local s = create_study("history-" .. k, "finished (POST /dev/history)",
      specs, base)
    for _, a in ipairs(s.list) do
      a.workerId, a.progress = HISTORY_WORKER, 100
      a.startedAt, a.completedAt = iso_ms(now), iso_ms(now)
    end
  end
  state.quiet = false
  local res = ss_list_studies({ query = "" })
  say("history: %d finished super studies of %d assignment(s) added " ..
    "(history-%d to history-%d); GET /api/super-studies is %d bytes now",
    n, m, first, first + n - 1, #res.body)
  return json_reply(200, { success = true, studies = n,
    list_bytes = #res.body })
end

-- The super-study part of GET /dev/events (stored state, stale rows too).
local function super_study_events()
  local studies, workers, claims, history = array(), array(), array(), array()
  for i, s in ipairs(ss.studies) do
    studies[i] = study_json(s, function(a) return assignment_json(a, true) end)
  end
  for i, w in ipairs(ss.workers) do workers[i] = object(WORKER_FIELDS, w) end
  for i, c in ipairs(ss.claims) do
    claims[i] = object({ "assignmentId", "machineId", "at" }, c)
  end
  for i, c in ipairs(ss.history) do
    history[i] = object({ "assignmentId", "status", "at", "by" }, c)
  end
  return studies, workers, claims, history
end

-- Development calls ----------------------------------------------------------

local function dev_assignments(req)
  local spec = cjson.decode(req.body)
  if type(spec) ~= "table" then return bad_request("expected a JSON object") end
  return json_reply(200, queue_assignment(spec))
end

local function dev_events()
  local studies, workers, claims, history = super_study_events()
  local ev = {
    heartbeats = state.heartbeats,
    gui_updates = state.gui_updates,
    results = state.results,
    screenshots = state.screenshots,
    handed = state.handed,
    polls = state.polls,
    requests = state.requests,
    queued = #state.queue,
    mode = state.mode,
  }
  local names = {}
  for k, v in pairs(ev) do -- encoded by cjson, as always
    names[#names + 1] = k
    ev[k] = raw(cjson.encode(v))
  end
  table.sort(names)
  local o = object(names, ev)
  set(o, "super_studies", studies)
  set(o, "workers", workers)
  set(o, "claims", claims)
  set(o, "history", history)
  return ss_reply(200, o)
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

-- The request log (GET /dev/events `requests`): about 200 bytes a call.
local REQUEST_LOG_MAX = 50000

-- The machineId a JSON request body names (heartbeats, claims, GUI
-- updates), or nil; large bodies (result uploads) are not parsed.
local function machine_of(req)
  local body = req.body or ""
  if #body > 64 * 1024 or not body:find('"machineId"', 1, true) then
    return nil
  end
  local v = cjson.decode(body)
  return type(v) == "table" and type(v.machineId) == "string" and
    v.machineId or nil
end

-- The size of a reply's body as sent: 0 for a reset connection, the part
-- before the cut for a truncated one, the whole stream for a huge one.
local function reply_bytes(reply)
  if type(reply) ~= "table" or reply.abort then return 0 end
  local n = #(reply.body or "")
  local rep = reply.body_repeat
  if rep then n = n + #rep.chunk * rep.count end
  if reply.truncate_at then n = math.min(n, reply.truncate_at) end
  return n
end

local function record(req, fault)
  local r = state.requests
  local entry = { method = req.method, path = req.path, at = host.time.now(),
    auth = req.headers.authorization ~= nil, fault = fault and fault.mode,
    in_bytes = #(req.body or ""), machineId = machine_of(req) }
  r[#r + 1] = entry
  if #r > REQUEST_LOG_MAX then table.remove(r, 1) end
  return entry
end

local route

local function handle(req)
  local fault = pick_fault(req)
  local entry = not req.path:match("^/dev/") and record(req, fault)
  local reply = route(req, fault)
  if entry then entry.bytes = reply_bytes(reply) end
  return reply
end

route = function(req, fault)
  local p, m = req.path, req.method
  if fault then
    say("%s %s: %s (as asked)", m, p, fault.mode)
    return misbehave(fault)
  end
  refresh_stale(host.time.now())
  if state.mode == "super-study" then
    local reply = super_study_route(req)
    if reply then return reply end
  end
  if m == "POST" and p == "/api/heartbeat" then return heartbeat(req) end
  if m == "GET" and p == "/api/assignment" then return assignment(req) end
  if m == "POST" and p == "/api/gui-update" then return gui_update(req) end
  local id = p:match("^/api/assignments/([^/]+)/results$")
  if m == "POST" and id then return results_upload(req, id) end
  if m == "POST" and p == "/api/gui-screenshots" then return screenshots(req) end
  id = p:match("^/dev/results/(%d+)$")
  if m == "GET" and id then return dev_result(tonumber(id)) end
  id = p:match("^/configs/([%w%-_]+)%.json$")
  if m == "GET" and id then return config(id) end
  if m == "POST" and p == "/dev/assignments" then return dev_assignments(req) end
  if m == "GET" and p == "/dev/events" then return dev_events() end
  if m == "POST" and p == "/dev/fail" then return dev_fail(req) end
  if m == "POST" and p == "/dev/clear" then return dev_clear() end
  if m == "POST" and p == "/dev/mode" then return dev_mode(req) end
  if m == "POST" and p == "/dev/super-studies" then
    return dev_super_studies(req)
  end
  if m == "POST" and p == "/dev/reset-worker" then return dev_reset_worker(req) end
  if m == "POST" and p == "/dev/history" then return dev_history(req) end
  return json_reply(404, { error = "not found", code = "NOT_FOUND" })
end

-- result uploads are larger than the server's 1 MiB default
local server, err = host.http.serve({ host = "127.0.0.1", port = opts.port,
  max_body = 256 * 1024 * 1024 }, handle)
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
if opts.super_study then
  local specs = {}
  for i = 1, opts.super_study.count do
    specs[i] = { splitConfig = { exit_code = 0, duration_s = 2, steps = 2 } }
  end
  create_study(opts.super_study.name, "demo super study", specs)
end
say("mode: %s", state.mode)
local function stop()
  state.generation = state.generation + 1 -- ends hanging replies
  server:close()
end
host.sys.on_signal("SIGINT", stop)
host.sys.on_signal("SIGTERM", stop)
