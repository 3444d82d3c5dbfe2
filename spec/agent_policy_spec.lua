-- Policy specs: the real scripts/agent.lua against a fake host (fake clock,
-- HTTP, processes and files). An edit of agent.lua that breaks the policy
-- fails here, in milliseconds.
local agent = require "agent"
local fake_host = require "support.fake_host"
local cjson = require "cjson"

local P = require "support.policy"
-- scripts/ as the fake machine sees it (run from a checkout, or by
-- `agent.lua --test` from where the agent is installed)
local SCRIPTS = require("lib.settings").scripts_dir(
  require("support.fake_host").new {}.host)
local DASH, BLOB, TOKEN = P.DASH, P.BLOB, P.TOKEN
local json, dashboard, new_fake, assignment = P.json, P.dashboard, P.new_fake,
  P.assignment
local start, data_writes, study_argv, poll_times = P.start, P.data_writes,
  P.study_argv, P.poll_times

describe("settings", function()
  it("refuses to start without GOLIAT_MONITORING_URL, naming it, exit 2", function()
    local f = fake_host.new { env = {} }
    local _, err = agent.load_settings(f.host)
    assert.matches("GOLIAT_MONITORING_URL", err)
    local said = P.start_refused(f)
    assert.matches("GOLIAT_MONITORING_URL", said)
    assert.equals(2, f.exit_code)
    assert.equals(0, #f.requests)
  end)

  it("takes every documented variable from the environment", function()
    local f = new_fake {
      GOLIAT_MACHINE_ID = "vm-7",
      GOLIAT_API_TOKEN = TOKEN,
      GOLIAT_HEARTBEAT_INTERVAL = "2.5",
      GOLIAT_POLL_INTERVAL = "0.5",
      GOLIAT_STUDY_COMMAND = '["py","-3","-m","goliat","study"]',
      GOLIAT_MONITORING_URL = DASH .. "//",
    }
    local s = assert(agent.load_settings(f.host))
    assert.equals("vm-7", s.machine_id)
    assert.equals(TOKEN, s.api_token)
    assert.equals(2.5, s.heartbeat_interval)
    assert.equals(0.5, s.poll_interval)
    assert.same({ "py", "-3", "-m", "goliat", "study" }, s.study_command)
    assert.equals(DASH, s.monitoring_url)
    assert.equals("/work/agent", s.work_dir)
  end)

  it("has the documented defaults", function()
    local f = new_fake { GOLIAT_WORK_DIR = "" }
    local s = assert(agent.load_settings(f.host))
    assert.equals(5, s.heartbeat_interval)
    assert.equals(10, s.poll_interval)
    assert.equals("auto", s.protocol)
    assert.equals("https://api.ipify.org", s.public_ip_url)
    assert.equals(3, s.oom_retries)
    assert.is_nil(s.super_study)                -- any super study
    assert.equals("/work", s.work_dir)          -- the current directory
    assert.equals("/work", s.project_dir)       -- the work dir
    assert.equals("fake-vm", s.hostname)
    assert.equals("goliat", s.study_command[3])
    assert.is_nil(s.api_token)
  end)

  for var, bad in pairs {
    GOLIAT_HEARTBEAT_INTERVAL = "-1",
    GOLIAT_POLL_INTERVAL = "ten",
    GOLIAT_STUDY_COMMAND = '"python -m goliat"',
    GOLIAT_MONITORING_URL = "ftp://dash.test",
  } do
    it("rejects " .. var .. "=" .. bad .. " at start-up", function()
      local f = new_fake { [var] = bad }
      local s, err = agent.load_settings(f.host)
      assert.is_nil(s)
      assert.matches(var, err)
    end)
  end

  it("finds the Python Windows users have, skipping the Store stub", function()
    local f = fake_host.new { platform = "windows", env = {
      GOLIAT_MONITORING_URL = DASH,
      PATH = "C:/Users/u/AppData/Local/Microsoft/WindowsApps;C:/Python312",
    } }
    f.files["C:/Users/u/AppData/Local/Microsoft/WindowsApps/python.exe"] = ""
    f.files["C:/Python312/python.exe"] = ""
    local s = assert(agent.load_settings(f.host))
    assert.same({ "C:/Python312/python.exe", "-m", "goliat", "study" },
      s.study_command)
  end)

  it("falls back to the py launcher on Windows", function()
    local f = fake_host.new { platform = "windows", env = {
      GOLIAT_MONITORING_URL = DASH, PATH = "C:/Windows" } }
    f.files["C:/Windows/py.exe"] = ""
    local s = assert(agent.load_settings(f.host))
    assert.same({ "py", "-3", "-m", "goliat", "study" }, s.study_command)
  end)

  it("rejects a study command with a non-string element", function()
    local f = new_fake { GOLIAT_STUDY_COMMAND = '["python", 3]' }
    local _, err = agent.load_settings(f.host)
    assert.matches("GOLIAT_STUDY_COMMAND", err)
  end)
end)

describe("heartbeat", function()
  it("beats from start-up every interval with the host facts", function()
    local f = new_fake()
    dashboard(f)
    start(f)
    f:run_for(60)
    local beats = f:requests_to("/api/heartbeat$")
    assert.is_true(#beats >= 11 and #beats <= 13, "beats: " .. #beats)
    assert.equals(0, beats[1].at)
    local body = cjson.decode(beats[1].body)
    assert.equals("198.51.100.7", body.machineId)
    assert.equals("fake-vm", body.hostname)
    assert.equals(8, body.cpuCores)
    assert.equals(32, body.totalRamGB)
    for i = 2, #beats do
      local gap = beats[i].at - beats[i - 1].at
      assert.is_true(gap >= 4.5 and gap <= 5.5, "gap " .. gap)
    end
  end)

  it("says which agent runs: its version, its policy's hash and, once " ..
    "known, the dashboard protocol, as extra fields of every heartbeat",
    function()
      local f = new_fake()
      -- the policy files as the fake machine has them: an edit changes
      -- the hash
      local dir = require("lib.settings").scripts_dir(f.host)
      f.files[dir .. "/agent.lua"] = "-- the policy"
      dashboard(f)
      start(f)
      f:run_for(30)
      local beats = f:requests_to("/api/heartbeat$")
      local first = cjson.decode(beats[1].body)
      assert.equals("fake", first.agentVersion)
      assert.matches("^%x%x%x%x%x%x%x%x$", first.agentPolicy)
      assert.is_nil(first.agentProtocol) -- not detected yet
      local last = cjson.decode(beats[#beats].body)
      assert.equals("assignment", last.agentProtocol)
      assert.equals(first.agentPolicy, last.agentPolicy)
      local g = new_fake()
      g.files[dir .. "/agent.lua"] = "-- the policy, edited"
      dashboard(g)
      start(g)
      g:run_for(1)
      local edited = cjson.decode(g:requests_to("/api/heartbeat$")[1].body)
      assert.are_not.equal(first.agentPolicy, edited.agentPolicy)
    end)

  -- A fake dashboard whose heartbeat replies take `seconds`.
  local function slow_heartbeats(seconds)
    -- (no idle back-off: these count polls at the poll interval)
    local f = new_fake { GOLIAT_IDLE_POLL_MAX = "10" }
    dashboard(f)
    local inner = f.http_handler
    f.http_handler = function(req, ff)
      if req.url:match("/api/heartbeat$") then ff.host.time.sleep(seconds) end
      return inner(req, ff)
    end
    return f
  end

  it("starts each beat at most one interval after the start of the one " ..
    "before, so that a connection is never idle for a whole interval " ..
    "(broken if jitter or the request's own time makes a beat late: a " ..
    "server that closes connections idle for 5 s then costs a TLS " ..
    "handshake per beat)", function()
      local f = slow_heartbeats(0.4)
      start(f)
      f:run_for(300)
      local beats = f:requests_to("/api/heartbeat$")
      assert.is_true(#beats >= 55, "beats: " .. #beats)
      for i = 2, #beats do
        local gap = beats[i].at - beats[i - 1].at
        assert.is_true(gap >= 4.5 - 1e-9 and gap <= 5 + 1e-9, "gap " .. gap)
      end
    end)

  it("goes first at start-up: the first poll waits for the first " ..
    "heartbeat's reply, and so reuses its connection (broken if both " ..
    "start at once and open two connections)", function()
      local f = slow_heartbeats(0.4)
      start(f)
      f:run_for(5)
      local polls = f:requests_to("/api/assignment")
      assert.is_true(#polls >= 1)
      assert.is_true(polls[1].at >= 0.4, "first poll at " .. polls[1].at)
    end)

  -- idle polls come a poll interval (10 s, jitter 10%) apart, give or
  -- take half a heartbeat interval
  local function assert_poll_gaps(polls)
    for i = 2, #polls do
      local gap = polls[i].at - polls[i - 1].at
      assert.is_true(gap >= 6.5 - 1e-9 and gap <= 13.5 + 1e-9, "gap " .. gap)
    end
  end

  it("sends each idle poll right as a heartbeat ends, about a poll interval " ..
    "after the last poll, so that an idle agent wakes once for both " ..
    "(broken if the poll keeps a timer of its own: the process then wakes " ..
    "three times per 10 s instead of twice)", function()
      local f = slow_heartbeats(0.4)
      start(f)
      f:run_for(300)
      local ends = {}
      for _, b in ipairs(f:requests_to("/api/heartbeat$")) do
        ends[string.format("%.6f", b.at + 0.4)] = true
      end
      local polls = f:requests_to("/api/assignment")
      assert.is_true(#polls >= 25, "polls: " .. #polls)
      for i = 2, #polls do
        assert.is_true(ends[string.format("%.6f", polls[i].at)],
          "poll at " .. polls[i].at .. " is not at a heartbeat's end")
      end
      assert_poll_gaps(polls)
    end)

  it("still polls on time when no heartbeat ends (broken if the poll waits " ..
    "for a heartbeat that hangs)", function()
      local f = slow_heartbeats(1000)
      start(f)
      f:run_for(300)
      local polls = f:requests_to("/api/assignment")
      assert.is_true(#polls >= 20, "polls: " .. #polls)
      assert_poll_gaps(polls)
    end)

  it("keeps beating while a study runs", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { exit_code = 0, after = 100 } end
    start(f)
    f:run_for(90)
    assert.equals(1, #f.spawned)
    assert.is_true(f.procs[1]:running())
    local beats = f:requests_to("/api/heartbeat$")
    assert.is_true(#beats >= 17, "beats during the study: " .. #beats)
  end)
end)

describe("an assignment", function()
  local f
  before_each(function()
    f = new_fake { GOLIAT_API_TOKEN = TOKEN }
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = '{"study": "x"}' } })
    f.spawn_handler = function() return { exit_code = 0, after = 30 } end
    start(f)
    f:run_until(function() return #f:reports() >= 1 end, 600)
  end)

  it("is downloaded to <project dir>/configs/assigned_config_<split_index>.json",
    function()
      assert.same({ "/work/agent/configs/assigned_config_3.json" }, data_writes(f))
      assert.equals('{"study": "x"}',
        f.files["/work/agent/configs/assigned_config_3.json"])
    end)

  it("runs the study command with the config path, in the project dir", function()
    local p = f.spawned[1]
    assert.same({ "python", "-m", "goliat", "study",
      "/work/agent/configs/assigned_config_3.json" }, study_argv(p))
    -- under the wrapper that records the exit code beside the study, ends
    -- what the study leaves (in half the grace) and caps its log (100 MB)
    assert.same({ "/opt/goliat/goliat-host", SCRIPTS .. "/study_wrapper.lua",
      "--grace", "15", "--log", "/work/agent/study_3.log",
      "--log-max", "104857600", "/work/agent/study_3.exit.json" },
      { table.unpack(p.argv, 1, 9) })
    assert.equals("/work/agent", p.cwd)
    assert.equals("/work/agent/study_3.log", p.stdout)
    assert.equals("stdout", p.stderr)
  end)

  it("gives the study the monitoring environment, its gateway's URL and " ..
    "the hook that sends GOLIAT's own requests there", function()
      local env = f.spawned[1].env
      local gw = env.GOLIAT_MONITORING_URL
      assert.matches("^http://127%.0%.0%.1:%d+/gw/%x+$", gw)
      assert.same({
        GOLIAT_WEBGUI_ENABLED = "true",
        GOLIAT_MONITORING_URL = gw,
        GOLIAT_MACHINE_ID = "198.51.100.7",
        GOLIAT_ASSIGNMENT_ID = "a-1",
        GOLIAT_API_TOKEN = "",
        PYTHONPATH = SCRIPTS .. "/pyhook",
        GOLIAT_GATEWAY_HOOK_TARGET = gw,
        GOLIAT_GATEWAY_HOOK_URLS = cjson.encode {
          "https://monitor.goliat.waves-ugent.be", DASH },
        no_proxy = "127.0.0.1,localhost",
        NO_PROXY = "127.0.0.1,localhost",
      }, env)
    end)

  it("is reported as finished with exit code and duration", function()
    local r = f:reports()[1]
    assert.equals("198.51.100.7", r.machineId)
    assert.equals("finished", r.message.type)
    assert.equals("a-1", r.message.assignment_id)
    assert.equals(0, r.message.exit_code)
    assert.is_true(r.message.duration_s >= 30 and r.message.duration_s < 31)
    assert.is_number(r.timestamp)
  end)

  it("sends the token to the dashboard only, and never logs it", function()
    for _, r in ipairs(f.requests) do
      if r.url:sub(1, #DASH) == DASH then
        assert.equals("Bearer " .. TOKEN, r.headers.Authorization)
      else
        assert.is_nil(r.headers.Authorization)
      end
    end
    assert.is_nil(f:log_text():find(TOKEN, 1, true))
  end)

  it("goes back to polling afterwards, one study at a time", function()
    local before = #poll_times(f)
    f:run_for(60)
    assert.is_true(#poll_times(f) >= before + 5)
    assert.equals(1, #f.spawned)
  end)

  it("is not polled for while the study runs", function()
    local times = poll_times(f)
    local started = f.procs[1].started
    for _, t in ipairs(times) do
      assert.is_false(t > started and t < started + 30, "poll at " .. t)
    end
  end)
end)

describe("a failed study", function()
  it("is reported as fatal_error with its exit code", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { exit_code = 3, after = 5 } end
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.equals(3, m.exit_code)
    assert.equals(cjson.null, m.signal)
    assert.matches("code 3", m.message)
  end)

  it("killed by a signal is reported with the signal", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { signal = "SIGKILL", after = 5 } end
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.equals(cjson.null, m.exit_code)
    assert.equals("SIGKILL", m.signal)
  end)

  it("that cannot start is reported as fatal_error", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return nil, "no such file", "ENOENT" end
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.matches("failed to start", m.message)
  end)
end)

describe("the report", function()
  it("is retried until the dashboard answers 2xx", function()
    local f = new_fake()
    local failures = 0
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" },
      override = function(_, path)
        if path == "/api/gui-update" and failures < 4 then
          failures = failures + 1
          return json(500, { error = "db down" })
        end
      end })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    assert.equals(4, failures)
    assert.equals(5, #f:requests_to("/api/gui%-update$"))
  end)
end)

describe("backoff", function()
  it("grows with consecutive failures, with jitter, up to the cap", function()
    local f = new_fake()
    dashboard(f, { down_until = 1e9 })
    start(f)
    f:run_for(3600)
    local times = poll_times(f)
    local max_gap, big_gaps = 0, 0
    for i = 2, #times do
      local gap = times[i] - times[i - 1]
      max_gap = math.max(max_gap, gap)
      if gap > 12 then big_gaps = big_gaps + 1 end
    end
    assert.is_true(max_gap <= 60, "never more than the cap: " .. max_gap)
    assert.is_true(big_gaps > 10, "backs off beyond the interval")
    assert.is_true(#times < 3600 / 11, "fewer polls than without backoff")
  end)

  it("recovers once the dashboard is back", function()
    local f = new_fake()
    dashboard(f, { down_until = 300, queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
  end)

  it("logs a failing step once, not once per retry", function()
    local f = new_fake()
    dashboard(f, { down_until = 1e9 })
    start(f)
    f:run_for(600)
    local warns = 0
    for _, l in ipairs(f.logs) do
      if l.level == "warn" and l.text:match("^assignment poll failed") then
        warns = warns + 1
      end
    end
    assert.equals(1, warns)
  end)

  for _, status in ipairs { 429, 503 } do
    it("honours Retry-After on " .. status, function()
      local f = new_fake()
      local refused
      dashboard(f, { override = function(req, path)
        if path:match("^/api/assignment") and not refused then
          refused = req.at
          return json(status, { error = "slow down" }, { ["retry-after"] = "42" })
        end
      end })
      start(f)
      f:run_for(100)
      local times = poll_times(f)
      assert.equals(refused, times[1])
      assert.equals(42, times[2] - times[1])
    end)
  end

  it("honours Retry-After given as an HTTP date", function()
    local f = new_fake()
    local refused
    dashboard(f, { override = function(req, path)
      if path:match("^/api/assignment") and not refused then
        refused = req.at
        -- the fake wall clock starts at 1800000000 = 2027-01-15T08:00:00Z
        return json(503, {}, { ["retry-after"] = "Fri, 15 Jan 2027 08:02:00 GMT" })
      end
    end })
    start(f)
    f:run_for(200)
    local times = poll_times(f)
    assert.equals(120, times[2] - times[1])
  end)

  for name, reply in pairs {
    ["an HTML page with status 200"] = { status = 200, body = "<html>oops</html>" },
    ["truncated JSON"] = { status = 200, body = '{"assigned": tr' },
    ["a JSON array"] = { status = 200, body = "[1,2]" },
    ["JSON null"] = { status = 200, body = "null" },
    ["a 500 without JSON"] = { status = 500, body = "Internal error" },
  } do
    it("survives " .. name .. " and keeps polling and beating", function()
      local f = new_fake()
      dashboard(f, { override = function(_, path)
        if path:match("^/api/") then
          return { status = reply.status, body = reply.body }
        end
      end })
      start(f)
      f:run_for(300)
      assert.is_nil(f.exit_code)
      assert.is_true(#poll_times(f) >= 5)
      assert.is_true(#f:requests_to("/api/heartbeat$") >= 20)
      assert.equals(0, #f.spawned)
    end)
  end
end)

describe("config download", function()
  it("is retried with backoff and then succeeds", function()
    local f = new_fake()
    local tries = 0
    dashboard(f, { queue = { assignment() }, configs = {
      [BLOB .. "/c3.json"] = function()
        tries = tries + 1
        if tries < 3 then return json(503, {}) end
        return { status = 200, body = "{}" }
      end } })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    assert.equals(3, tries)
    assert.equals("finished", f:reports()[1].message.type)
  end)

  it("that keeps failing is reported as failed after the retry period", function()
    local f = new_fake()
    local first
    dashboard(f, { queue = { assignment() }, configs = {
      [BLOB .. "/c3.json"] = function(req)
        first = first or req.at
        return nil, "connection reset", "transfer"
      end } })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 7200))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.matches("config download failed", m.message)
    assert.equals(cjson.null, m.exit_code)
    assert.is_true(f.now - first <= 600 + 60)
    assert.is_true(#f:requests_to("^" .. BLOB) > 3)
    assert.equals(0, #f.spawned)
    assert.equals(0, #data_writes(f))
  end)

  it("that is not JSON is not written and is retried", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() }, configs = {
      [BLOB .. "/c3.json"] = "<html>not json</html>" } })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 7200))
    assert.equals(0, #data_writes(f))
    assert.equals("fatal_error", f:reports()[1].message.type)
  end)
end)

describe("an invalid assignment", function()
  local cases = {
    ["without id"] = { id = cjson.null },
    ["with a numeric id"] = { id = 12 },
    ["without split_index"] = { split_index = cjson.null },
    ["with split_index '../x'"] = { split_index = "../x" },
    ["with split_index 1.5"] = { split_index = 1.5 },
    ["with a negative split_index"] = { split_index = -1 },
    ["with a file:// config_url"] = { config_url = "file:///etc/passwd" },
    ["without config_url"] = { config_url = cjson.null },
  }
  for name, over in pairs(cases) do
    it(name .. " is rejected, reported and touches no file", function()
      local f = new_fake()
      dashboard(f, { queue = { assignment(over) } })
      start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      local m = f:reports()[1].message
      assert.equals("fatal_error", m.type)
      assert.matches("invalid assignment", m.message)
      if over.id == nil then assert.equals("a-1", m.assignment_id) end
      assert.equals(0, #data_writes(f))
      assert.equals(0, #f.spawned)
      assert.equals(0, #f:requests_to("^" .. BLOB))
    end)
  end

  it("that is not an object at all is reported too", function()
    local f = new_fake()
    dashboard(f, { override = function(_, path)
      if path:match("^/api/assignment") then
        return json(200, { assigned = true, assignment = "oops" })
      end
    end })
    start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    assert.equals(cjson.null, f:reports()[1].message.assignment_id)
  end)
end)

describe("stopping", function()
  it("terminates the study, reports the assignment failed and exits 0", function()
    local f = new_fake()
    dashboard(f, { queue = { assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { exit_code = 0, after = 3600 } end
    start(f)
    f:run_for(60)
    assert.equals(1, #f.procs)
    f:signal("SIGTERM")
    f:run_for(60)
    assert.equals(0, f.exit_code)
    assert.equals(30, f.procs[1].terminated_with_grace)
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.matches("SIGTERM", m.message)
    assert.equals("SIGTERM", m.signal)
  end)

  it("while idle exits 0 at once", function()
    local f = new_fake()
    dashboard(f)
    start(f)
    f:run_for(20)
    f:signal("SIGINT")
    f:run_for(5)
    assert.equals(0, f.exit_code)
    assert.equals(0, #f:reports())
  end)

  it("listens for Ctrl-Break and console close on Windows", function()
    local f = fake_host.new { platform = "windows",
      env = { GOLIAT_MONITORING_URL = DASH } }
    dashboard(f)
    start(f)
    f:run_for(1)
    assert.is_function(f.signal_handlers.SIGINT)
    assert.is_function(f.signal_handlers.SIGBREAK)
    assert.is_function(f.signal_handlers.SIGHUP)
    assert.is_function(f.signal_handlers.reload)
  end)
end)
