-- Policy specs for hostile conditions, round 2 (issue 21): a token
-- rotation while a study ends, rejected reports across restarts, wall
-- clock steps, and the wait of a report after an outage. The real
-- scripts/agent.lua on the fake host.
local cjson = require "cjson"
local P = require "support.policy"

local CONFIG = { [P.BLOB .. "/c3.json"] = "{}" }
local STATUS = "/work/agent/agent_status.json"

local function status_of(f)
  return cjson.decode(f.files[STATUS] or "null")
end

local function rejected(f)
  return f.host.fs.list("/work/agent/rejected") or {}
end

-- A dashboard that answers `status` to every request while `window(now)`.
local function refusing(f, opts, status, window)
  P.dashboard(f, opts)
  local inner = f.http_handler
  f.http_handler = function(req, ff)
    if req.url:sub(1, #P.DASH) == P.DASH and window(f.now, req) then
      return P.json(status, { error = "refused" })
    end
    return inner(req, ff)
  end
end

describe("a token rotation while a study ends (401 for 8 s)", function()
  it("keeps the report and sends it once the token works again: only " ..
    "the report's own reply can set it aside", function()
      local f = P.offline_fake()
      -- the heartbeat sent before the report meets the 401; the report
      -- itself would have been accepted
      refusing(f, { queue = { P.assignment() }, configs = CONFIG }, 401,
        function(now) return now >= 29 and now < 37 end)
      f.spawn_handler = function() return { exit_code = 0, after = 30 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals("a-1", f:reports()[1].message.assignment_id)
      assert.equals(0, #rejected(f), "a report was set aside")
      assert.is_nil(f:log_text():find("refused by the dashboard for good", 1,
        true))
    end)

  for _, status in ipairs { 401, 403, 404, 407 } do
    it("keeps a report refused with HTTP " .. status .. " on its own, " ..
      "says why in --status, and sends it once the operator fixed it",
      function()
        local f = P.offline_fake()
        refusing(f, { queue = { P.assignment() }, configs = CONFIG }, status,
          function(now, req)
            return now < 300 and req.url:match("/api/gui%-update$")
          end)
        f.spawn_handler = function() return { exit_code = 3, after = 10 } end
        P.start(f)
        f:run_for(200)
        assert.equals(0, #rejected(f))
        local w = status_of(f).report_waiting
        assert.is_table(w, "--status does not show the waiting report")
        assert.equals("a-1", w.assignment_id)
        assert.matches("HTTP " .. status, w.error)
        assert.matches("kept and sent again", w.error)
        assert.is_true(f:run_until(function() return #f:reports() >= 1 end,
          600))
        f:run_for(40)
        assert.is_nil(status_of(f).report_waiting)
      end)
  end

  it("sets aside a report whose own reply says it is bad (400, 413, 422)",
    function()
      for _, status in ipairs { 400, 413, 422 } do
        local f = P.offline_fake()
        refusing(f, { queue = { P.assignment() }, configs = CONFIG }, status,
          function(_, req) return req.url:match("/api/gui%-update$") end)
        P.start(f)
        assert.is_true(f:run_until(function() return #rejected(f) >= 1 end,
          600), "HTTP " .. status .. " was not set aside")
      end
    end)
end)

describe("reports refused for good across restarts", function()
  it("are all kept: a second one with the same outbox number does not " ..
    "overwrite the first", function()
      local f = P.offline_fake()
      refusing(f, { queue = { P.assignment(), P.assignment { id = "a-2" } },
        configs = CONFIG }, 400,
        function(_, req) return req.url:match("/api/gui%-update$") end)
      P.start(f)
      assert.is_true(f:run_until(function() return #rejected(f) >= 1 end, 600))
      -- a restart: the outbox numbers start again from the empty outbox/
      f:kill_agent()
      P.start(f)
      assert.is_true(f:run_until(function() return #rejected(f) >= 2 end, 600),
        "the second rejected report replaced the first")
      local ids = {}
      for _, name in ipairs(rejected(f)) do
        local item = cjson.decode(f.files["/work/agent/rejected/" .. name])
        ids[#ids + 1] = item.body.message.assignment_id
      end
      table.sort(ids)
      assert.same({ "a-1", "a-2" }, ids)
    end)
end)

describe("the wall clock stepped back 3 h", function()
  it("does not hold back agent_status.json (due by the monotonic clock)",
    function()
      local f = P.offline_fake()
      P.dashboard(f)
      P.start(f)
      f:run_for(60)
      f.wall_step = -3 * 3600
      f:run_for(100)
      local st = status_of(f)
      local wall = 1800000000 + f.now + f.wall_step
      -- written since the step: not "in the future", and recent
      assert.is_true(st.updated_at <= wall and st.updated_at > wall - 40,
        string.format("status last written %.0f s before the wall " ..
          "clock's now", wall - st.updated_at))
      assert.is_true(st.heartbeat_at <= wall and st.heartbeat_at > wall - 40)
    end)
end)

describe("the wall clock stepped forward 2 h, then a restart", function()
  it("neither times a 6 s old study out nor counts the step in its " ..
    "duration (monotonic, same boot)", function()
      local f = P.offline_fake { GOLIAT_STUDY_TIMEOUT = "3600" }
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      f.spawn_handler = function() return { exit_code = 0, after = 200 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.procs == 1 end, 60))
      f:run_for(6)
      f.wall_step = 2 * 3600
      f:kill_agent()
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      local m = f:reports()[1].message
      assert.equals("finished", m.type, m.message)
      assert.is_nil(f:log_text():find("timed out", 1, true))
      assert.is_true(m.duration_s < 300, "duration " .. m.duration_s)
    end)

  it("after a reboot (another boot id) falls back to the wall clock",
    function()
      local f = P.offline_fake()
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      f.spawn_handler = function() return { exit_code = 0, after = 200 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.procs == 1 end, 60))
      f:run_for(6)
      f:kill_agent()
      f.procs[1].finish() -- the study wrote its exit file, then the reboot
      f.boot_id = "fake-boot-2"
      f.wall_step = 1000 -- the machine was off for 1000 s
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      local m = f:reports()[1].message
      assert.is_true(m.duration_s >= 1000, "duration " .. m.duration_s)
    end)
end)

describe("a report held back by an outage", function()
  it("is sent at once when a heartbeat works again, not after the grown " ..
    "backoff", function()
      local f = P.offline_fake()
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      local inner = f.http_handler
      f.http_handler = function(req, ff)
        if f.now >= 25 and f.now < 400 then
          return nil, "connection refused", "connect"
        end
        return inner(req, ff)
      end
      f.spawn_handler = function() return { exit_code = 0, after = 30 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 900))
      local back
      for _, r in ipairs(f:requests_to("/api/heartbeat$")) do
        if r.at >= 400 then back = r.at; break end
      end
      local sent = f:requests_to("/api/gui%-update$")
      local at = sent[#sent].at
      -- the heartbeat loop's first beat after the outage wakes the report
      assert.is_true(at - back <= 1, string.format(
        "the report went %.1f s after the dashboard answered again",
        at - back))
    end)
end)

describe("a reload", function()
  -- the validator (--validate) ends as `check` says; studies run 120 s
  local function validating(f, check)
    f.spawn_handler = function(opts)
      if opts.argv[3] == "--validate" then
        f.files[opts.stdout] = ""
        return check
      end
      return { exit_code = 0, after = 120 }
    end
  end

  local function validators(f)
    local n = 0
    for _, p in ipairs(f.spawned) do
      if p.argv[3] == "--validate" then n = n + 1 end
    end
    return n
  end

  it("whose check blocks is stopped after its limit and refused; the " ..
    "next SIGHUP is heard", function()
      local f = P.offline_fake()
      P.dashboard(f)
      validating(f, { exit_code = 0, after = 1e9 }) -- blocks while loading
      P.start(f)
      f:run_for(5)
      f:signal("SIGHUP")
      f:run_for(60)
      assert.is_nil(f.restarts)
      assert.is_nil(f.exit_code)
      assert.matches("reload refused, the agent keeps running as it was: " ..
        "the check of the edited agent%.lua and settings did not end " ..
        "within 30 s", f:log_text())
      assert.is_true(f.procs[1].ended, "the blocked check was left running")
      f:signal("SIGHUP")
      f:run_for(5)
      assert.equals(2, validators(f), "the second SIGHUP was ignored")
    end)

  it("whose settings fail after the check passed keeps the agent, with " ..
    "the settings from before, supervising its study", function()
      local f = P.offline_fake()
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      validating(f, { exit_code = 0 })
      P.start(f)
      assert.is_true(f:run_until(function() return #f.procs >= 1 end, 60))
      -- the project folder becomes unusable between the check and the
      -- restart
      f.files["/blocked"] = "a file"
      f.env.GOLIAT_PROJECT_DIR = "/blocked/project"
      f:signal("SIGHUP")
      f:run_for(10)
      assert.equals(1, f.restarts)
      assert.is_nil(f.exit_code, "the reloaded agent exited")
      assert.matches("reload: the edited settings are refused %(" ..
        "GOLIAT_PROJECT_DIR", f:log_text())
      assert.is_nil(f.env.GOLIAT_AGENT_RELOAD_SETTINGS_FILE,
        "the saved settings' file is still named in the environment")
      assert.is_nil(f.files["/work/agent/.goliat-reload-settings.json"],
        "the saved settings (with the token) stay on disk")
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals(1, f.attached, "the study was not taken back")
    end)
end)

describe("a SIGTERM during a reload's last status write", function()
  it("stops the agent, which does not restart after it", function()
    local f = P.offline_fake()
    P.dashboard(f)
    f.spawn_handler = function(opts)
      if opts.argv[3] == "--validate" then
        f.files[opts.stdout] = ""
        return { exit_code = 0 }
      end
      return { exit_code = 0, after = 120 }
    end
    local sent = false
    f.fs_wait_for = function(op, path)
      if op == "write" and path:match("agent_status%.json$") and not sent and
          f:log_text():find("reloading agent.lua", 1, true) then
        sent = true
        f:signal("SIGTERM")
        return 5
      end
    end
    P.start(f)
    f:run_for(5)
    f:signal("SIGHUP")
    f:run_for(60)
    assert.is_true(sent)
    assert.equals(0, f.exit_code)
    assert.is_nil(f.restarts, "the reload went on after the stop")
  end)
end)

describe("a reload from an older agent.lua", function()
  it("whose settings lack this one's (an upgrade) fills them from the " ..
    "defaults: work goes on and is reported once", function()
      local f = P.offline_fake()
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      -- what the older agent saved: its settings, without the new ones
      local old = assert(require("agent").load_settings(f.host))
      old.machine_id = "198.51.100.9"
      for _, k in ipairs { "keep_finished", "keep_finished_mb", "idle_after",
        "idle_poll_max", "idle_quiet_polls", "min_free_gb" } do
        old[k] = nil
      end
      f.files["/work/agent/.goliat-reload-settings.json"] = cjson.encode(old)
      f.env.GOLIAT_AGENT_RELOAD_SETTINGS_FILE =
        "/work/agent/.goliat-reload-settings.json"
      -- and the new settings fail
      f.files["/blocked"] = "a file"
      f.env.GOLIAT_PROJECT_DIR = "/blocked/project"
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      f:run_for(120)
      assert.equals(1, #f:reports())
      assert.equals("finished", f:reports()[1].message.type)
      assert.same({}, f.task_errors)
      assert.matches("goes on with the settings it had", f:log_text())
    end)
end)

describe("--validate", function()
  it("checks the folders as a start does: an unusable GOLIAT_PROJECT_DIR " ..
    "fails it", function()
      local f = P.offline_fake { GOLIAT_PROJECT_DIR = "/blocked/project" }
      f.files["/blocked"] = "a file"
      local written = {}
      local old = io.stdout
      io.stdout = { write = function(_, ...) -- luacheck: ignore
        for _, piece in ipairs { ... } do written[#written + 1] = piece end
      end }
      local ok, err = pcall(function()
        f:start(function(host) require("agent").main(host, "--validate") end)
        f:run_for(1)
      end)
      io.stdout = old -- luacheck: ignore
      assert(ok, err)
      assert.equals(2, f.exit_code)
      assert.matches("GOLIAT_PROJECT_DIR: cannot create /blocked/project",
        table.concat(written))
    end)
end)

describe("the files of finished work", function()
  -- n assignments with split indices 1..n, each study writing a log of
  -- `log_bytes`
  local function run_many(env, n, log_bytes)
    local f = P.offline_fake(env)
    local queue, configs = {}, {}
    for i = 1, n do
      local url = P.BLOB .. "/c" .. i .. ".json"
      queue[i] = P.assignment { id = "a-" .. i, split_index = i,
        config_url = url }
      configs[url] = "{}"
    end
    P.dashboard(f, { queue = queue, configs = configs })
    f.spawn_handler = function(opts)
      if opts.stdout then f.files[opts.stdout] = string.rep("x", log_bytes) end
      return { exit_code = 0, after = 10 }
    end
    -- not the agent's: never removed
    f.files["/work/agent/configs/my_own.json"] = "mine"
    f.files["/work/agent/study_99.log"] = "from before the ledger"
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= n end,
      100 * n))
    f:run_for(5)
    return f
  end

  local function kept(f)
    local out = {}
    for path in pairs(f.files) do
      local n = path:match("/study_(%d+)%.log$") or
        path:match("/study_(%d+)%.exit%.json$") or
        path:match("/assigned_config_(%d+)%.json$")
      if n and n ~= "99" then out[tonumber(n)] = (out[tonumber(n)] or 0) + 1 end
    end
    return out
  end

  it("are removed for the oldest assignments beyond GOLIAT_KEEP_FINISHED, " ..
    "and nothing the agent did not make is touched", function()
      local f = run_many({ GOLIAT_KEEP_FINISHED = "3" }, 7, 100)
      -- log, exit file and config of the newest 3 (5, 6, 7) only
      assert.same({ [5] = 3, [6] = 3, [7] = 3 }, kept(f))
      assert.equals("mine", f.files["/work/agent/configs/my_own.json"])
      assert.is_string(f.files["/work/agent/study_99.log"])
      assert.matches("retention: removed the files of the 1 oldest",
        f:log_text())
    end)

  it("are kept within GOLIAT_KEEP_FINISHED_MB, the newest assignment's " ..
    "always", function()
      -- 2 KB a log: 0.005 MB (5243 bytes) holds two assignments' files
      local f = run_many({ GOLIAT_KEEP_FINISHED_MB = "0.005" }, 5, 2048)
      assert.same({ [4] = 3, [5] = 3 }, kept(f))
      f = run_many({ GOLIAT_KEEP_FINISHED_MB = "0.0001" }, 3, 2048)
      assert.same({ [3] = 3 }, kept(f))
    end)

  it("never include a file the ledger names that the agent does not make " ..
    "(a ledger edited by a user cannot make the root agent delete it)",
    function()
      local f = P.offline_fake { GOLIAT_KEEP_FINISHED = "1" }
      f.files["/etc/secret"] = "root's"
      f.files["/work/agent/notes.txt"] = "the operator's"
      f.files["/work/agent/study_5.log"] = "an old log"
      f.files["/work/agent/retention.json"] = cjson.encode { groups = {
        { id = "x", at = 1, files = { "/etc/secret", "/work/agent/notes.txt",
          "/work/agent/configs/../../../etc/secret",
          "/work/agent/study_5.log" } } } }
      P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      f:run_for(10)
      assert.equals("root's", f.files["/etc/secret"])
      assert.equals("the operator's", f.files["/work/agent/notes.txt"])
      assert.is_nil(f.files["/work/agent/study_5.log"],
        "an agent's own old log was kept")
    end)

  it("are all kept by default over 60 assignments (weeks of history)",
    function()
      local f = run_many({}, 60, 10)
      local n = 0
      for _ in pairs(kept(f)) do n = n + 1 end
      assert.equals(60, n)
    end)
end)

-- host.fs waits (issue 21, item 9): other tasks run while a file operation
-- is under way. The fake host's f.fs_wait_for makes one wait.
describe("a file operation that waits", function()
  it("on agent_status.json does not hold the heartbeat up (the status is " ..
    "written by a task of its own)", function()
      local f = P.offline_fake()
      P.dashboard(f)
      f.fs_wait_for = function(op, path)
        if op == "write" and path:match("agent_status%.json$") and
            f.now > 10 then
          return 1000 -- a hung share
        end
      end
      P.start(f)
      f:run_for(70)
      local late = 0
      for _, r in ipairs(f:requests_to("/api/heartbeat$")) do
        if r.at > 20 then late = late + 1 end
      end
      assert.is_true(late >= 9, late .. " heartbeats in the 50 s after the " ..
        "status file hung")
    end)

  it("while a stop comes as finished work is cleared does not bring that " ..
    "work back as interrupted (it would run again at the next start)",
    function()
      local super = require "support.super_dashboard"
      local f = P.offline_fake()
      local d = super.new(f)
      d:add_study("s", { { n = 0 } })
      f.spawn_handler = function() return { exit_code = 0, after = 20 } end
      local slow_state = false
      f.fs_wait_for = function(op, path)
        if op == "write" and path:match("/retention%.json$") and
            not slow_state then
          -- the report is under way (past the stop's check): a stop now,
          -- whose read of the state file returns after the work loop
          -- cleared it
          slow_state = true
          f:signal("SIGTERM")
          return 1
        elseif op == "read" and path:match("/agent_state%.json$") and
            slow_state then
          return 5
        end
      end
      P.start(f)
      assert.is_true(f:run_until(function() return f.exit_code ~= nil end,
        600))
      assert.equals(1, #f:reports())
      assert.equals("finished", f:reports()[1].message.type)
      assert.is_nil(f.files["/work/agent/agent_state.json"],
        "the finished work's state came back: " ..
        tostring(f.files["/work/agent/agent_state.json"]))
    end)
end)
