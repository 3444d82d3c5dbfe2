-- The example dashboard in --mode super-study: the deployed dashboard's API
-- (PROTOCOL.md section 4), awkward parts included. The dashboard runs as a
-- goliat-host child on 127.0.0.1; each case talks HTTP to a fresh one.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"

local SUPER = { "--port", "0", "--mode", "super-study" }

local dash -- the running case's dashboard

local function start(args)
  dash = cluster.start_dashboard(args or SUPER)
  return dash
end

-- One call: status, decoded body (nil when not JSON), response.
local function call(method, path, body)
  local text = body
  if type(body) == "table" then text = cjson.encode(body) end
  local res, err = host.http.request { url = dash.url .. path,
    method = method, body = text, timeout = 5,
    headers = text and { ["Content-Type"] = "application/json" } or nil }
  assert(res, err)
  local ok, value = pcall(cjson.decode, res.body)
  return res.status, ok and value or nil, res
end

local function ok_call(method, path, body)
  local status, value, res = call(method, path, body)
  assert(status == 200, method .. " " .. path .. ": " .. status .. " " ..
    tostring(res.body))
  return value, res
end

local function heartbeat(machine, extra)
  local body = { machineId = machine }
  for k, v in pairs(extra or {}) do body[k] = v end
  return ok_call("POST", "/api/heartbeat", body)
end

local function claim(id, machine)
  return call("POST", "/api/assignments/" .. id .. "/claim",
    { machineId = machine })
end

local function gui(machine, message)
  return ok_call("POST", "/api/gui-update", { machineId = machine,
    message = message, timestamp = host.time.now() })
end

-- A super study made with POST /dev/super-studies; n plain splits, or the
-- given list of splitConfigs.
local function study(name, splits, as_string)
  if type(splits) == "number" then
    local list = {}
    for i = 1, splits do list[i] = { split = i - 1 } end
    splits = list
  end
  return cluster.post_json(dash.url .. "/dev/super-studies",
    { name = name, assignments = splits, as_string = as_string })
end

-- Stored view (GET /api/super-studies/<id>/assignments), by assignment id.
local function stored(ss)
  local out = {}
  for _, a in ipairs(ok_call("GET", "/api/super-studies/" .. ss .. "/assignments")) do
    out[a.id] = a
  end
  return out
end

-- Derived view (GET /api/super-studies/<id>): the study, and its
-- assignments by id.
local function derived(ss)
  local s = ok_call("GET", "/api/super-studies/" .. ss)
  local out = {}
  for _, a in ipairs(s.assignments) do out[a.id] = a end
  return s, out
end

local function workers()
  return ok_call("GET", "/api/workers")
end

local function events()
  return ok_call("GET", "/dev/events")
end

after_each(function()
  if dash then cluster.stop(dash.proc) end
  dash = nil
end)

describe("the dashboard's modes", function()
  it("answers /api/assignment in super-study mode with Next.js's HTML 404", function()
    start()
    local status, value, res = call("GET", "/api/assignment?machineId=m1")
    assert.equals(404, status)
    assert.is_nil(value)
    assert.matches("^text/html", res.headers["content-type"])
    assert.matches("<html", res.body)
    assert.matches("404", res.body)
  end)

  it("switches between planned and super-study with POST /dev/mode", function()
    start { "--port", "0" }
    -- planned (the default): the super-study routes are JSON 404s
    local status, value, res = call("GET", "/api/super-studies")
    assert.equals(404, status)
    assert.matches("^application/json", res.headers["content-type"])
    assert.equals("NOT_FOUND", value.code)
    status = claim("as1", "m1")
    assert.equals(404, status)
    assert.same({ assigned = false }, ok_call("GET", "/api/assignment?machineId=m1"))
    heartbeat("m1")
    local ev = events()
    assert.equals("planned", ev.mode)
    assert.equals(0, #ev.workers, "a planned-mode heartbeat made a worker row")
    assert.equals(1, #ev.heartbeats)

    cluster.post_json(dash.url .. "/dev/mode", { mode = "super-study" })
    status, value, res = call("GET", "/api/assignment?machineId=m1")
    assert.equals(404, status)
    assert.is_nil(value, "not JSON")
    assert.matches("^text/html", res.headers["content-type"])
    local _, list = ok_call("GET", "/api/super-studies")
    assert.equals("[]", list.body)
    heartbeat("m1")
    assert.equals(1, #workers())

    cluster.post_json(dash.url .. "/dev/mode", { mode = "planned" })
    assert.same({ assigned = false }, ok_call("GET", "/api/assignment?machineId=m1"))
    ev = events()
    assert.equals("planned", ev.mode)
    assert.equals(2, #ev.heartbeats, "heartbeats are recorded in both modes")

    status = call("POST", "/dev/mode", { mode = "deployed" })
    assert.equals(400, status)
  end)
end)

describe("super studies", function()
  before_each(function() start() end)

  it("lists studies newest first, by exact name, and [] for an unknown name", function()
    local a = study("alpha", 2)
    local b = study("beta", 1)
    local list = ok_call("GET", "/api/super-studies")
    assert.equals(2, #list)
    assert.equals(b.id, list[1].id)
    assert.equals(a.id, list[2].id)
    assert.is_true(list[1].createdAt >= list[2].createdAt)
    assert.equals(2, list[2].totalAssignments)
    assert.equals(2, #list[2].assignments)
    assert.same({ id = a.assignments[1].id, status = "PENDING",
      workerId = cjson.null }, list[2].assignments[1])
    local named = ok_call("GET", "/api/super-studies?name=alpha")
    assert.equals(1, #named)
    assert.equals(a.id, named[1].id)
    assert.equals(0, #ok_call("GET", "/api/super-studies?name=alph"))
    local _, res = ok_call("GET", "/api/super-studies?name=nope")
    assert.equals("[]", res.body)
  end)

  it("deletes a study with its assignments (DELETE /api/super-studies/<id>), " ..
    "and answers 500 for an unknown one, as deployed", function()
      local a = study("alpha", 2)
      local b = study("beta", 1)
      local done = ok_call("DELETE", "/api/super-studies/" .. a.id)
      assert.is_true(done.success)
      local list = ok_call("GET", "/api/super-studies")
      assert.equals(1, #list)
      assert.equals(b.id, list[1].id)
      assert.equals(0, #ok_call("GET", "/api/super-studies/" .. a.id ..
        "/assignments"))
      assert.equals(500, (call("DELETE", "/api/super-studies/" .. a.id)))
      assert.equals(500, (call("POST", "/api/assignments/" ..
        a.assignments[1].id .. "/claim", { machineId = "10.0.0.1" })))
    end)

  it("creates a study with POST /api/super-studies and refuses one without name", function()
    local s = ok_call("POST", "/api/super-studies", { name = "sweep",
      description = "two splits", assignments = {
        { splitConfig = { n = 0 } }, { splitConfig = { n = 1 } } } })
    assert.equals("PENDING", s.status)
    assert.equals(2, s.totalAssignments)
    assert.equals(0, s.completedAssignments)
    assert.equals(0, s.assignments[1].index)
    assert.equals(1, s.assignments[2].index)
    assert.equals("PENDING", s.assignments[2].status)
    assert.same({ n = 1 }, s.assignments[2].splitConfig)
    local got = derived(s.id)
    assert.equals("sweep", got.name)
    assert.equals("two splits", got.description)

    local status, value = call("POST", "/api/super-studies", { assignments = {} })
    assert.equals(400, status)
    assert.is_string(value.error)
    status = call("POST", "/api/super-studies", { name = "x" })
    assert.equals(400, status)
    status, value = call("GET", "/api/super-studies/nope")
    assert.equals(404, status)
    assert.is_string(value.error)
    local _, res = ok_call("GET", "/api/super-studies/nope/assignments")
    assert.equals("[]", res.body)
  end)

  it("returns a splitConfig stored as a JSON string parsed", function()
    local split = { exit_code = 0, steps = 2, nested = { name = "x" } }
    local s = study("strings", { split }, true)
    local id = s.assignments[1].id
    -- stored as a string (as /dev/events shows)...
    local ev = events()
    assert.equals("string", type(ev.super_studies[1].assignments[1].splitConfig))
    -- ...served as the object in every view
    assert.same(split, stored(s.id)[id].splitConfig)
    local _, view = derived(s.id)
    assert.same(split, view[id].splitConfig)
    heartbeat("m1")
    local status, a = claim(id, "m1")
    assert.equals(200, status)
    assert.same(split, a.splitConfig)
    -- the same through the API
    local made = ok_call("POST", "/api/super-studies", { name = "api-strings",
      assignments = { { splitConfig = cjson.encode(split) } } })
    assert.same(split, stored(made.id)[made.assignments[1].id].splitConfig)
  end)
end)

describe("super studies at start-up", function()
  it("--super-study NAME:N creates a study of N demo splits", function()
    start { "--port", "0", "--mode", "super-study", "--super-study", "demo:3" }
    local list = ok_call("GET", "/api/super-studies?name=demo")
    assert.equals(1, #list)
    assert.equals(3, list[1].totalAssignments)
    local view = ok_call("GET", "/api/super-studies/" .. list[1].id .. "/assignments")
    assert.equals(3, #view)
    for i, a in ipairs(view) do
      assert.equals(i - 1, a.index)
      assert.same({ exit_code = 0, duration_s = 2, steps = 2 }, a.splitConfig)
    end
  end)
end)

describe("claims", function()
  before_each(function() start() end)

  it("never refuses: a second machine's claim takes the assignment over", function()
    local s = study("race", 2)
    local id = s.assignments[1].id
    heartbeat("10.0.0.1", { hostname = "vm1" })
    heartbeat("10.0.0.2", { hostname = "vm2" })
    local status, first = claim(id, "10.0.0.1")
    assert.equals(200, status)
    assert.equals("RUNNING", first.status)
    assert.equals("10.0.0.1", first.worker.ipAddress)
    assert.equals("RUNNING", first.worker.status)
    assert.is_string(first.startedAt)
    local second
    status, second = claim(id, "10.0.0.2")
    assert.equals(200, status, "the second claim was refused")
    assert.equals("10.0.0.2", second.worker.ipAddress)
    assert.are_not.equal(first.workerId, second.workerId)
    local a = stored(s.id)[id]
    assert.equals("RUNNING", a.status)
    assert.equals(second.workerId, a.workerId)
    assert.equals("RUNNING", derived(s.id).status)
    -- even a COMPLETED assignment is taken again
    gui("10.0.0.2", { type = "finished" })
    assert.equals("COMPLETED", stored(s.id)[id].status)
    local third
    status, third = claim(id, "10.0.0.1")
    assert.equals(200, status)
    assert.equals("RUNNING", third.status)
    assert.equals(first.workerId, stored(s.id)[id].workerId)
    assert.is_true(third.startedAt >= second.startedAt)
    local claims = events().claims
    assert.equals(3, #claims)
    assert.same({ id, "10.0.0.2" }, { claims[2].assignmentId, claims[2].machineId })
  end)

  it("answers 500 for an unknown assignment, after creating a worker row", function()
    local status, value = claim("as999", "10.0.0.7")
    assert.equals(500, status)
    assert.is_string(value.error)
    assert.is_string(value.details)
    local rows = workers()
    assert.equals(1, #rows)
    assert.equals("10.0.0.7", rows[1].ipAddress)
    assert.equals(cjson.null, rows[1].hostname)
    assert.equals("IDLE", rows[1].status)
    -- a claim without a machineId is refused before anything else
    status, value = call("POST", "/api/assignments/as999/claim", {})
    assert.equals(400, status)
    assert.same({ error = "machineId is required" }, value)
    assert.equals(1, #workers())
  end)
end)

describe("gui updates", function()
  before_each(function() start() end)

  it("copies progress and stage to the worker's RUNNING assignment", function()
    local s = study("progress", 1)
    local id = s.assignments[1].id
    heartbeat("m1")
    claim(id, "m1")
    gui("m1", { type = "overall_progress", current = 1, total = 4 })
    gui("m1", { type = "stage_progress", name = "Simulating", current = 1, total = 2 })
    local a = stored(s.id)[id]
    assert.equals(25, a.progress)
    assert.equals("Simulating", a.currentStage)
    assert.equals("RUNNING", workers()[1].status)
  end)

  it("completes exactly one RUNNING assignment of the worker on finished", function()
    local s = study("two", 2)
    local a1, a2 = s.assignments[1].id, s.assignments[2].id
    heartbeat("m1")
    assert.equals(200, (claim(a1, "m1")))
    assert.equals(200, (claim(a2, "m1")))
    -- the report names a2, but the first RUNNING one (a1) is completed
    gui("m1", { type = "finished", assignment_id = a2, exit_code = 0 })
    local view = stored(s.id)
    assert.equals("COMPLETED", view[a1].status)
    assert.is_string(view[a1].completedAt)
    assert.equals("RUNNING", view[a2].status)
    assert.equals(cjson.null, view[a2].completedAt)
    assert.equals("IDLE", workers()[1].status)
    -- stored RUNNING under an IDLE worker without completedAt: derived PENDING
    local study_view, shown = derived(s.id)
    assert.equals("COMPLETED", shown[a1].status)
    assert.equals("PENDING", shown[a2].status)
    assert.equals(1, study_view.completedAssignments)
    assert.equals(50, study_view.masterProgress)
    assert.equals("RUNNING", study_view.status)
    -- the report was still counted
    local reports = 0
    for _, u in ipairs(events().gui_updates) do
      if u.message.assignment_id then reports = reports + 1 end
    end
    assert.equals(1, reports)
    -- the second finished completes the other one, and the study
    claim(a2, "m1")
    gui("m1", { type = "finished" })
    study_view = derived(s.id)
    assert.equals(2, study_view.completedAssignments)
    assert.equals("COMPLETED", study_view.status)
  end)

  it("leaves the assignment RUNNING on fatal_error; the derived view shows FAILED", function()
    local s = study("fail", 1)
    local id = s.assignments[1].id
    heartbeat("m1")
    claim(id, "m1")
    gui("m1", { type = "fatal_error", message = "exit code 3",
      assignment_id = id, exit_code = 3 })
    assert.equals("RUNNING", stored(s.id)[id].status)
    local study_view, shown = derived(s.id)
    assert.equals("FAILED", shown[id].status)
    assert.equals("ERROR", shown[id].worker.status)
    assert.equals(0, study_view.completedAssignments)
    assert.equals("ERROR", workers()[1].status)
  end)

  it("falls back, for a machine without a worker row, to a recent worker's work", function()
    local s = study("fallback", 1)
    local id = s.assignments[1].id
    heartbeat("10.0.0.1")
    -- nothing RUNNING anywhere: recorded only, no row made
    gui("10.0.0.9", { type = "finished" })
    assert.equals(1, #workers())
    assert.equals("PENDING", stored(s.id)[id].status)
    -- now 10.0.0.1 runs it, and 10.0.0.9's finished completes it
    claim(id, "10.0.0.1")
    gui("10.0.0.9", { type = "finished" })
    local a = stored(s.id)[id]
    assert.equals("COMPLETED", a.status)
    assert.equals("10.0.0.1", a.worker.ipAddress)
    local rows = workers()
    assert.equals(1, #rows)
    assert.equals("IDLE", rows[1].status)
  end)

  it("refuses bad payloads: 400 without machineId or type, 500 for non-JSON", function()
    local status, value = call("POST", "/api/gui-update",
      { message = { type = "status" } })
    assert.equals(400, status)
    assert.same({ error = "machineId is required" }, value)
    status, value = call("POST", "/api/gui-update",
      { machineId = "m1", message = { text = "no type" } })
    assert.equals(400, status)
    assert.is_string(value.error)
    status = call("POST", "/api/gui-update", { machineId = "m1" })
    assert.equals(400, status)
    status = call("POST", "/api/gui-update", "{not json")
    assert.equals(500, status)
    status, value = call("POST", "/api/heartbeat", { hostname = "vm" })
    assert.equals(400, status)
    assert.same({ error = "machineId is required" }, value)
    status, value = call("POST", "/api/heartbeat", "not json")
    assert.equals(500, status)
    assert.is_string(value.error)
    assert.equals(0, #workers())
  end)
end)

describe("workers", function()
  it("lets machines sharing a hostname share one row whose ipAddress flips", function()
    start()
    heartbeat("10.0.0.1", { hostname = "vm", cpuCores = 4 })
    local id = workers()[1].id
    heartbeat("10.0.0.2", { hostname = "vm", cpuCores = 8, gpuName = "RTX" })
    local rows = workers()
    assert.equals(1, #rows)
    assert.equals(id, rows[1].id)
    assert.equals("10.0.0.2", rows[1].ipAddress)
    local row = events().workers[1]
    assert.equals(8, row.cpuCores)
    assert.equals("RTX", row.gpuName)
    heartbeat("10.0.0.1", { hostname = "vm" })
    rows = workers()
    assert.equals(1, #rows)
    assert.equals(id, rows[1].id)
    assert.equals("10.0.0.1", rows[1].ipAddress)
    -- another hostname gets its own row
    heartbeat("10.0.0.3", { hostname = "other" })
    assert.equals(2, #workers())
  end)

  it("on reset puts all the worker's assignments back to PENDING and deletes it", function()
    start()
    local s = study("reset", 3)
    local a1, a2 = s.assignments[1].id, s.assignments[2].id
    heartbeat("m1")
    claim(a1, "m1")
    gui("m1", { type = "overall_progress", current = 1, total = 1 })
    gui("m1", { type = "finished" })
    claim(a2, "m1")
    assert.equals(1, derived(s.id).completedAssignments)
    local wid = workers()[1].id
    assert.same({ success = true }, ok_call("DELETE", "/api/workers/" .. wid))
    for _, a in pairs(stored(s.id)) do
      assert.equals("PENDING", a.status)
      assert.equals(0, a.progress)
      assert.equals(cjson.null, a.workerId)
      assert.equals(cjson.null, a.startedAt)
      assert.equals(cjson.null, a.completedAt)
      assert.equals(cjson.null, a.worker)
    end
    local study_view = derived(s.id)
    assert.equals(0, study_view.completedAssignments)
    assert.equals(0, study_view.masterProgress)
    assert.equals(0, #workers())
    assert.equals(0, #events().workers, "the row was not deleted")
    assert.equals(404, (call("DELETE", "/api/workers/" .. wid)))
    -- the next heartbeat makes a fresh row; /dev/reset-worker resets it
    heartbeat("m1")
    local fresh = workers()[1].id
    assert.are_not.equal(wid, fresh)
    claim(a1, "m1")
    local r = cluster.post_json(dash.url .. "/dev/reset-worker", { machineId = "m1" })
    assert.equals(fresh, r.workerId)
    assert.equals(1, r.reset)
    assert.equals("PENDING", stored(s.id)[a1].status)
    assert.equals(0, #workers())
    assert.equals(404, (call("POST", "/dev/reset-worker", { machineId = "m1" })))
  end)

  it("marks a silent worker stale; the next heartbeat starts a new row", function()
    start { "--port", "0", "--mode", "super-study", "--stale-after", "1" }
    local s = study("stale", 2)
    local a1, a2 = s.assignments[1].id, s.assignments[2].id
    heartbeat("m1", { hostname = "vm" })
    claim(a1, "m1")
    gui("m1", { type = "finished" })
    claim(a2, "m1")
    local old = workers()[1].id
    host.time.sleep(1.5)
    -- stale: gone from /api/workers; its RUNNING assignment shows PENDING
    assert.equals(0, #workers())
    local _, shown = derived(s.id)
    assert.equals("PENDING", shown[a2].status)
    assert.equals("COMPLETED", shown[a1].status)
    local view = stored(s.id)
    assert.equals("RUNNING", view[a2].status)
    assert.is_true(view[a2].worker.isStale)
    -- the next heartbeat: a new row, which takes the RUNNING assignment
    heartbeat("m1", { hostname = "vm" })
    local rows = workers()
    assert.equals(1, #rows)
    local new = rows[1].id
    assert.are_not.equal(old, new)
    view = stored(s.id)
    assert.equals(new, view[a2].workerId)
    -- the COMPLETED one stays with the stale row, shown with the active one
    assert.equals(old, view[a1].workerId)
    assert.equals(new, view[a1].worker.id)
    assert.is_false(view[a1].worker.isStale)
    local all = events().workers
    assert.equals(2, #all)
    assert.is_true(all[1].isStale)
  end)
end)

describe("faults and reports in super-study mode", function()
  it("applies /dev/fail to the super-study routes", function()
    start()
    local s = study("faulty", 1)
    local id = s.assignments[1].id
    cluster.post_json(dash.url .. "/dev/fail",
      { status = 503, path = "^/api/assignments/", count = 1 })
    assert.equals(503, (claim(id, "m1")))
    assert.equals("PENDING", stored(s.id)[id].status)
    assert.equals(200, (claim(id, "m1")))
    assert.equals("RUNNING", stored(s.id)[id].status)
  end)

  it("still exits after --exit-after-reports reports", function()
    start { "--port", "0", "--mode", "super-study", "--exit-after-reports", "1" }
    local s = study("exit", 1)
    local id = s.assignments[1].id
    heartbeat("m1")
    claim(id, "m1")
    gui("m1", { type = "finished", assignment_id = id, exit_code = 0 })
    local ended = cluster.wait_until(function()
      return not dash.proc:running()
    end, 10)
    assert.is_true(ended, "the dashboard did not exit")
    assert.equals(0, (dash.proc:wait()))
    local log = host.fs.read(host.fs.join(dash.dir, "dashboard.log"))
    assert.matches("assignment " .. id .. " COMPLETED by finished from m1", log, 1, true)
  end)
end)
