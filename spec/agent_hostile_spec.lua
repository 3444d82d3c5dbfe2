-- Policy specs for hostile conditions (issue 9): stray state files, a
-- paused agent, a dashboard asking for long waits, signals, and settings
-- that must fail loudly. The real scripts/agent.lua on the fake host.
local cjson = require "cjson"
local agent = require "agent"
local fake_host = require "support.fake_host"
local P = require "support.policy"

local STATE = "/work/agent/agent_state.json"

local fake = P.offline_fake

-- A process of the fake machine that the agent did not start.
local function foreign_process(f, pid)
  local p = { pid = pid, started = -100, exit_at = math.huge, spec = {},
    opts = { argv = {} } }
  function p.running() return not p.ended end
  function p.finish() end
  table.insert(f.procs, p)
  return p
end

describe("a state file naming a process the agent did not start", function()
  for name, state in pairs {
    ["pid 1"] = { pid = 1, start_time = -100 },
    ["the agent's own pid"] = { pid = 4242, start_time = -100 },
    ["no start time"] = { pid = 7001 },
    ["another start time"] = { pid = 7001, start_time = 12345 },
  } do
    it("is never adopted nor signalled: " .. name, function()
      local f = fake { GOLIAT_STUDY_TIMEOUT = "5" }
      P.dashboard(f)
      foreign_process(f, 1)
      foreign_process(f, 4242)
      foreign_process(f, 7001)
      state.assignment = { id = "stray", split_index = 0 }
      state.exit_file = "/work/agent/study_0.exit.json"
      state.started_at = 1800000000 - 3600
      f.files[STATE] = cjson.encode(state)
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      assert.is_nil(f.attached)
      for _, p in ipairs(f.procs) do
        assert.is_nil(p.terminated_with_grace, "signalled pid " .. p.pid)
        assert.is_false(p.ended or false, "ended pid " .. p.pid)
      end
      local m = f:reports()[1].message
      assert.equals("fatal_error", m.type)
      assert.matches("study lost", m.message)
    end)
  end
end)

describe("a paused agent", function()
  it("reports a study that ended in time as finished, not as timed out",
    function()
      local f = fake { GOLIAT_STUDY_TIMEOUT = "8" }
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      -- the study ends at 2 s, but the paused agent notices only at 10 s
      f.spawn_handler = function(opts)
        local exit_file = fake_host.exit_file(opts.argv)
        f:spawn("study", function()
          f.host.time.sleep(2)
          f.files[exit_file] = cjson.encode { exit_code = 0 }
        end)
        return { exit_code = 0, after = 10, no_exit_file = true }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 120))
      local m = f:reports()[1].message
      assert.equals("finished", m.type)
      assert.is_nil(f.procs[1].terminated_with_grace)
    end)
end)

describe("the heartbeat", function()
  it("waits no longer than its cap when the dashboard asks for 600 s", function()
    local f = fake()
    local asked = false
    P.dashboard(f, { override = function(_, path)
      if path == "/api/heartbeat" and not asked then
        asked = true
        return P.json(503, { error = "busy" }, { ["retry-after"] = "600" })
      end
    end })
    P.start(f)
    f:run_for(60)
    local beats = f:requests_to("/api/heartbeat$")
    assert.is_true(asked)
    assert.is_true(beats[2].at - beats[1].at <= 15,
      "next heartbeat after " .. (beats[2].at - beats[1].at) .. " s")
  end)

  it("comes within one interval after the dashboard is back", function()
    local f = fake()
    P.dashboard(f)
    local inner = f.http_handler
    -- five outages of a minute each, every two minutes
    local function down() return f.now % 120 >= 60 and f.now < 600 end
    f.http_handler = function(req, ff)
      if down() then return nil, "connection refused", "connect" end
      return inner(req, ff)
    end
    P.start(f)
    f:run_for(660)
    local beats = f:requests_to("/api/heartbeat$")
    for back = 120, 600, 120 do
      local first
      for _, r in ipairs(beats) do
        if r.delivered and r.at >= back then first = first or r.at end
      end
      assert.is_true(first - back <= 5 * 1.1, "first heartbeat " ..
        (first - back) .. " s after the dashboard came back at " .. back)
    end
  end)
end)

describe("SIGHUP", function()
  it("reloads the agent, which keeps running (Linux; it used to die)",
    function()
    local f = fake()
    P.dashboard(f)
    P.start(f)
    f:run_for(5)
    f:signal("SIGHUP")
    f:run_for(30)
    assert.is_nil(f.exit_code)
    assert.matches("SIGHUP received", f:log_text())
    assert.is_true(#f:requests_to("/api/heartbeat$") >= 6)
  end)
end)

describe("settings that must fail loudly", function()
  it("trim a token pasted with its newline", function()
    local f = fake { GOLIAT_API_TOKEN = "  s3cret-token\n" }
    local s = assert(agent.load_settings(f.host))
    assert.equals("s3cret-token", s.api_token)
  end)

  for var, bad in pairs {
    GOLIAT_MACHINE_ID = "vm-1\n2026-01-01T00:00:00Z error forged",
    GOLIAT_API_TOKEN = "abc\rdef",
    GOLIAT_MONITORING_URL = "http://dash.test/\tx",
    GOLIAT_HEARTBEAT_INTERVAL = "1e-9",
    GOLIAT_POLL_INTERVAL = "0.001",
  } do
    it("refuse " .. var .. " = " .. cjson.encode(bad) .. ", naming it, exit 2",
      function()
        local f = fake { [var] = bad }
        local s, err = agent.load_settings(f.host)
        assert.is_nil(s)
        assert.matches(var, err)
        local said = P.start_refused(f)
        assert.matches(var, said)
        assert.equals(2, f.exit_code)
        assert.equals(0, #f.requests)
      end)
  end

  it("refuse a work dir that cannot be written, naming GOLIAT_WORK_DIR",
    function()
      local f = fake_host.new { env = { GOLIAT_MONITORING_URL = P.DASH,
        GOLIAT_WORK_DIR = "/ro" } }
      local write = f.host.fs.write_atomic
      f.host.fs.write_atomic = function(path, data)
        if path:sub(1, 4) == "/ro/" then
          return nil, path .. ": read-only file system", "EROFS"
        end
        return write(path, data)
      end
      local s, err = agent.load_settings(f.host)
      assert.is_nil(s)
      assert.matches("GOLIAT_WORK_DIR: cannot write in /ro", err)
    end)
end)

describe("a config that downloads whole but is not JSON", function()
  it("is reported at once, not retried for ten minutes (an HTML page is " ..
    "retried: a proxy's error)", function()
    local f = fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = {
      [P.BLOB .. "/c3.json"] = 'study = "not json"\n' } })
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    assert.equals(1, #f:requests_to("^" .. P.BLOB))
    assert.matches("not a JSON object", f:reports()[1].message.message)
  end)
end)

describe("the GPU probe", function()
  local function with_smi(after)
    local f = P.new_fake { GOLIAT_PUBLIC_IP_URL = "", PATH = "/usr/bin" }
    f.files["/usr/bin/nvidia-smi"] = ""
    P.dashboard(f)
    f.spawn_handler = function(opts)
      if opts.argv[1]:match("nvidia%-smi$") then
        f.beats_before_probe = #f:requests_to("/api/heartbeat$")
        f.files[opts.stdout] = "NVIDIA RTX A6000\n"
        return { exit_code = 0, after = after }
      end
      return { exit_code = 0, after = 1 }
    end
    P.start(f)
    return f
  end

  it("that hangs neither delays the first heartbeat nor runs for ever, " ..
    "and starts once the first heartbeat is out (broken if nvidia-smi is " ..
    "spawned before the first heartbeat's request)", function()
      local f = with_smi(3600)
      f:run_for(60)
      local beats = f:requests_to("/api/heartbeat$")
      assert.equals(0, beats[1].at)
      assert.equals(1, f.beats_before_probe)
      assert.is_true(f.procs[1].ended, "the hung nvidia-smi was not stopped")
      assert.is_nil(cjson.decode(beats[#beats].body).gpuName)
    end)

  it("writes its output in the work dir, never in a shared folder, and the " ..
    "name reaches the heartbeat", function()
      local f = with_smi(1)
      f:run_for(20)
      assert.equals("/work/agent/.gpu_name.txt", f.spawned[1].stdout)
      local beats = f:requests_to("/api/heartbeat$")
      assert.equals("NVIDIA RTX A6000", cjson.decode(beats[#beats].body).gpuName)
      assert.is_nil(f.files["/work/agent/.gpu_name.txt"])
    end)
end)

describe("a password in a URL", function()
  it("is never logged", function()
    local f = fake { GOLIAT_MONITORING_URL = "http://agent:pa55word@dash.test" }
    P.start(f)
    f:run_for(30)
    assert.matches("http://%*%*%*@dash%.test", f:log_text())
    assert.is_nil(f:log_text():find("pa55word", 1, true))
  end)
end)

describe("a report the dashboard refuses for good", function()
  it("is set aside in rejected/ and work goes on", function()
    local f = fake()
    P.dashboard(f, {
      queue = { P.assignment(), P.assignment { id = "a-2" } },
      configs = { [P.BLOB .. "/c3.json"] = "{}" },
      override = function(req, path)
        if path == "/api/gui-update" and req.body:match('"a%-1"') then
          return P.json(400, { error = "invalid payload" })
        end
      end })
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.equals("a-2", f:reports()[1].message.assignment_id)
    assert.equals(2, #f.spawned)
    local kept = f.host.fs.list("/work/agent/rejected")
    assert.equals(1, #kept)
    assert.matches('"a%-1"', f.files["/work/agent/rejected/" .. kept[1]])
    assert.equals(1, #f:requests_to("/api/gui%-update$") - 1)
    assert.matches("refused by the dashboard for good", f:log_text())
  end)

  it("but a 429 or a 408 is retried", function()
    assert.is_false(agent.refused_for_good(429))
    assert.is_false(agent.refused_for_good(408))
    assert.is_false(agent.refused_for_good(503))
    assert.is_true(agent.refused_for_good(400))
  end)
end)

describe("a damaged state file", function()
  for name, text in pairs {
    ["with a started_at of the wrong type"] = cjson.encode { assignment =
      { id = "dmg" }, started_at = "yesterday", pid = 5001 },
    ["with a negative pid"] = cjson.encode { assignment = { id = "dmg" },
      pid = -5 },
  } do
    it(name .. " is set aside, its assignment reported, and work goes on",
      function()
        local f = fake()
        P.dashboard(f, { queue = { P.assignment() },
          configs = { [P.BLOB .. "/c3.json"] = "{}" } })
        f.files[STATE] = text
        P.start(f)
        assert.is_true(f:run_until(function() return #f:reports() >= 2 end, 600))
        local first = f:reports()[1].message
        assert.equals("dmg", first.assignment_id)
        assert.equals("fatal_error", first.type)
        assert.matches("state file was damaged", first.message)
        assert.equals("a-1", f:reports()[2].message.assignment_id)
        assert.equals(text, f.files[STATE .. ".bad"])
      end)
  end
end)

describe("the study log", function()
  it("starts fresh for each assignment, the last one kept as .1", function()
    local f = fake()
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [P.BLOB .. "/c3.json"] = "{}" } })
    f.files["/work/agent/study_3.log"] = "an earlier run's 200 MB"
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.is_nil(f.files["/work/agent/study_3.log"])
    assert.equals("an earlier run's 200 MB", f.files["/work/agent/study_3.log.1"])
  end)
end)

describe("a stop (SIGTERM)", function()
  it("during an in-flight poll lets it finish and reports what it handed " ..
    "out", function()
      local f = fake()
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" },
        override = function(_, path)
          if path:match("^/api/assignment") then f.host.time.sleep(5) end
        end })
      P.start(f)
      f:run_for(1) -- the first poll is under way
      f:signal("SIGTERM")
      f:run_for(60)
      assert.equals(0, f.exit_code)
      assert.equals(0, #f.spawned)
      local m = assert(f:reports()[1], "the assignment was never reported").message
      assert.equals("a-1", m.assignment_id)
      assert.equals("fatal_error", m.type)
      assert.matches("before the study started", m.message)
    end)

  it("during a slow config download reports the assignment without waiting " ..
    "for it", function()
      local f = fake()
      P.dashboard(f, { queue = { P.assignment() }, configs = {
        [P.BLOB .. "/c3.json"] = function()
          f.host.time.sleep(100)
          return { status = 200, body = "{}" }
        end } })
      P.start(f)
      f:run_for(5)
      f:signal("SIGTERM")
      f:run_for(30)
      assert.equals(0, f.exit_code)
      local m = assert(f:reports()[1], "the assignment was never reported").message
      assert.equals("fatal_error", m.type)
      assert.matches("during the config download", m.message)
      assert.is_true(f:reports()[1] and true)
      assert.equals(0, #f.spawned)
    end)
end)

describe("a full disk when the study ends", function()
  -- The outbox cannot be written, the dashboard answers 503, and the
  -- agent is killed: the state file is all that is left of the assignment.
  local function full_disk_then_kill()
    local f = fake()
    local full, down = false, false
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [P.BLOB .. "/c3.json"] = "{}" },
      override = function(_, path)
        if down and path == "/api/gui-update" then
          return P.json(503, { error = "busy" })
        end
      end })
    local write = f.host.fs.write_atomic
    f.host.fs.write_atomic = function(path, data)
      if full then return nil, path .. ": no space left on device", "ENOSPC" end
      return write(path, data)
    end
    f.spawn_handler = function()
      -- the wrapper cannot write its exit file either: exit status only
      return { exit_code = 3, after = 10, no_exit_file = true }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned >= 1 end, 60))
    full, down = true, true
    f:run_for(60) -- the study has ended; the report cannot be stored nor sent
    assert.equals(0, #f:reports())
    return f, function() full, down = false, false end
  end

  it("keeps the state file, so that the next start reports the assignment",
    function()
      local f, recover = full_disk_then_kill()
      assert.is_truthy(f.files[STATE], "the state file was removed")
      f:kill_agent()
      recover()
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      local m = f:reports()[1].message
      assert.equals("fatal_error", m.type)
      assert.equals("a-1", m.assignment_id)
    end)

  it("reports the study's exit code from the wrapper's exit status, and " ..
    "stores the report once the disk has room again", function()
      local f, recover = full_disk_then_kill()
      recover()
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 120))
      local m = f:reports()[1].message
      assert.equals(3, m.exit_code)
      assert.matches("code 3 %(its exit file could not be written", m.message)
      assert.is_nil(f.files[STATE])
    end)
end)

describe("a study that exits 0 but whose wrapper cannot write the exit file",
  function()
    it("is reported as finished with exit code 0, not as killed", function()
      local f = fake()
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      f.spawn_handler = function()
        return { exit_code = 0, after = 5, no_exit_file = true }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      local m = f:reports()[1].message
      assert.equals("finished", m.type)
      assert.equals(0, m.exit_code)
      assert.matches("is the disk full", m.message)
    end)
end)

describe("processes the study leaves running", function()
  it("are ended (SIGTERM, then SIGKILL after the grace) before the report",
    function()
      local f = fake { GOLIAT_STUDY_GRACE = "4" }
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      f.spawn_handler = function()
        -- two stubborn orphans appear when the study (wrapper) ends
        f:spawn("orphans", function()
          f.host.time.sleep(4)
          f.orphans = 2
        end)
        return { exit_code = 0, after = 5 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      assert.equals(0, f.orphans)
      assert.equals("SIGTERM", f.orphan_signals[1])
      assert.equals("SIGKILL", f.orphan_signals[#f.orphan_signals])
      assert.matches("left 2 process%(es%) running", f:log_text())
    end)
end)

describe("a reload (SIGHUP)", function()
  local function validating(f, code, text)
    f.spawn_handler = function(opts)
      if opts.argv[3] == "--validate" then
        f.files[opts.stdout] = text
        return { exit_code = code }
      end
      return { exit_code = 0, after = 60 }
    end
  end

  it("while a study runs restarts the agent, which takes the study back " ..
    "and reports it once", function()
      local f = fake()
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      validating(f, 0, "")
      P.start(f)
      assert.is_true(f:run_until(function() return #f.procs >= 1 end, 60))
      f:signal("SIGHUP")
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 120))
      f:run_for(30)
      assert.equals(1, f.restarts)
      assert.equals(1, f.attached) -- the study was taken back, not rerun
      local studies = 0
      for _, p in ipairs(f.spawned) do
        if p.argv[3] ~= "--validate" then studies = studies + 1 end
      end
      assert.equals(1, studies)
      assert.equals(1, #f:reports())
      assert.equals("finished", f:reports()[1].message.type)
    end)

  it("on Windows comes from the service's reload control, while SIGHUP " ..
    "(the console closing) still stops the agent (broken if the two are " ..
    "mixed up)", function()
      local function windows_fake()
        local f = fake_host.new { platform = "windows", env = {
          GOLIAT_MONITORING_URL = P.DASH, GOLIAT_WORK_DIR = "/work/agent",
          GOLIAT_PUBLIC_IP_URL = "" } }
        P.dashboard(f)
        validating(f, 0, "")
        P.start(f)
        f:run_for(5)
        return f
      end
      local f = windows_fake()
      f:signal("reload")
      f:run_for(30)
      assert.equals(1, f.restarts)
      assert.is_nil(f.exit_code)
      assert.matches("a service reload received", f:log_text())
      f = windows_fake()
      f:signal("SIGHUP")
      f:run_for(30)
      assert.is_nil(f.restarts)
      assert.equals(0, f.exit_code)
    end)

  it("whose edit does not load is refused with the file and line, and the " ..
    "agent keeps running as it was", function()
      local f = fake()
      P.dashboard(f)
      validating(f, 1, "goliat-host: /work/scripts/agent.lua:12: " ..
        "unexpected symbol near 'x'\n")
      P.start(f)
      f:run_for(5)
      f:signal("SIGHUP")
      f:run_for(30)
      assert.is_nil(f.restarts)
      assert.is_nil(f.exit_code)
      assert.matches("reload refused, the agent keeps running as it was: " ..
        "goliat%-host: /work/scripts/agent%.lua:12: unexpected symbol",
        f:log_text())
      assert.is_true(#f:requests_to("/api/heartbeat$") >= 6)
    end)
end)
