-- Policy specs for "nothing lost": the outbox, taking a study back after the
-- agent died, study time limits, secrets and faults in an edited policy.
-- The real scripts/agent.lua against the fake host.
local cjson = require "cjson"
local P = require "support.policy"
local BLOB, TOKEN = P.BLOB, P.TOKEN

local CONFIG = { [P.BLOB .. "/c3.json"] = "{}" }

local function outbox_files(f)
  local out = {}
  for path in pairs(f.files) do
    if path:match("^/work/agent/outbox/%d+%.json$") then table.insert(out, path) end
  end
  table.sort(out)
  return out
end

-- A dashboard that answers connection refused while `down()` is true.
local function flaky_dashboard(f, opts, down)
  P.dashboard(f, opts)
  local inner = f.http_handler
  f.http_handler = function(req, ff)
    if req.url:sub(1, #P.DASH) == P.DASH and down() then
      return nil, "connection refused", "connect"
    end
    return inner(req, ff)
  end
end

describe("the outbox", function()
  it("holds the report on disk until the dashboard answers 2xx", function()
    local f = P.new_fake()
    local down = false
    flaky_dashboard(f, { queue = { P.assignment() }, configs = CONFIG },
      function() return down end)
    f.spawn_handler = function() return { exit_code = 0, after = 30 } end
    P.start(f)
    f:run_for(20)
    down = true
    f:run_for(60)
    local files = outbox_files(f)
    assert.equals(1, #files)
    local item = cjson.decode(f.files[files[1]])
    assert.equals("/api/gui-update", item.path)
    assert.equals("finished", item.body.message.type)
    down = false
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.same({}, outbox_files(f))
  end)

  it("is sent after a restart, oldest first, before anything new", function()
    local f = P.new_fake()
    local down = true
    flaky_dashboard(f, {
      queue = { P.assignment(), P.assignment { id = "a-2", split_index = 4,
        config_url = BLOB .. "/c4.json" } },
      configs = { [BLOB .. "/c3.json"] = "{}", [BLOB .. "/c4.json"] = "{}" },
    }, function() return down end)
    -- two reports pile up while the dashboard is unreachable for reports
    local inner = f.http_handler
    f.http_handler = function(req, ff)
      if req.url:match("gui%-update") and down then
        return nil, "connection refused", "connect"
      end
      return inner(req, ff)
    end
    down = false
    f.spawn_handler = function() return { exit_code = 0, after = 10 } end
    P.start(f)
    f:run_for(5)
    down = true
    f:run_for(11)
    -- the first report is stuck: the agent retries it and takes no new work
    f:kill_agent()
    -- an unreadable leftover must not block the rest
    f.files["/work/agent/outbox/000000000000.json"] = "{garbage"
    down = false
    f:start(function(host) require("agent").main(host) end)
    assert.is_true(f:run_until(function() return #f:reports() >= 2 end, 600))
    local r = f:reports()
    assert.equals("a-1", r[1].message.assignment_id)
    assert.equals("a-2", r[2].message.assignment_id)
    assert.is_string(f.files["/work/agent/outbox/000000000000.json.bad"])
  end)

  it("delivered twice after a crash is harmless (the same report again)", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    -- as if the agent died between the 2xx and removing the file
    f.files["/work/agent/outbox/000000000007.json"] = cjson.encode {
      path = "/api/gui-update", body = f:reports()[1] }
    f:kill_agent()
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 2 end, 600))
    assert.same(f:reports()[1], f:reports()[2])
  end)
end)

describe("a study that outlives the agent", function()
  local function run_until_study(f)
    assert.is_true(f:run_until(function() return #f.procs == 1 end, 600))
    f:run_for(10)
  end

  it("is taken back after a restart: not started twice, real exit code", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function() return { exit_code = 3, after = 300 } end
    P.start(f)
    run_until_study(f)
    f:kill_agent()
    f:run_for(5)
    P.start(f)
    local beats_before = #f:requests_to("/api/heartbeat$")
    f:run_for(120)
    assert.equals(1, #f.spawned, "the study was started again")
    assert.equals(1, f.attached)
    assert.is_true(#f:requests_to("/api/heartbeat$") >= beats_before + 20)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.equals(3, m.exit_code)
    assert.equals("a-1", m.assignment_id)
    assert.is_true(m.duration_s >= 299, "duration across the restart")
    assert.is_nil(f.files["/work/agent/agent_state.json"])
  end)

  it("that ended while the agent was down is reported with its exit code", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function() return { exit_code = 0, after = 60 } end
    P.start(f)
    run_until_study(f)
    f:kill_agent()
    f:run_for(120) -- the study ends meanwhile; nobody reports it
    assert.equals(0, #f:reports())
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    local m = f:reports()[1].message
    assert.equals("finished", m.type)
    assert.equals(0, m.exit_code)
    assert.equals(1, #f.spawned)
  end)

  it("gone without an exit code is reported as lost (stale state file)", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function()
      return { signal = "SIGKILL", after = 60, no_exit_file = true }
    end
    P.start(f)
    run_until_study(f)
    f:kill_agent()
    f:run_for(120)
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.matches("lost", m.message)
    assert.equals(cjson.null, m.exit_code)
  end)

  it("whose pid now belongs to another program is not taken back", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function() return { exit_code = 0, after = 3600 } end
    P.start(f)
    run_until_study(f)
    f:kill_agent()
    -- same pid, different start time: the pid was reused
    local state = cjson.decode(f.files["/work/agent/agent_state.json"])
    state.start_time = tostring(tonumber(state.start_time) + 12345)
    f.files["/work/agent/agent_state.json"] = cjson.encode(state)
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    assert.matches("lost", f:reports()[1].message.message)
    assert.is_nil(f.attached)
  end)

  it("received but not started yet is reported after a restart", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = {
      [BLOB .. "/c3.json"] = function()
        f.host.time.sleep(1000) -- a very slow download
        return { status = 200, body = "{}" }
      end } })
    P.start(f)
    f:run_for(30)
    f:kill_agent()
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.equals("a-1", m.assignment_id)
    assert.matches("before the study started", m.message)
    assert.equals(0, #f.spawned)
  end)

  it("an unreadable state file is set aside and the agent goes on", function()
    local f = P.new_fake()
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.files["/work/agent/agent_state.json"] = "{not json"
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.equals("{not json", f.files["/work/agent/agent_state.json.bad"])
    assert.equals("finished", f:reports()[1].message.type)
  end)
end)

describe("a study time limit", function()
  it("stops the study's tree and reports the assignment as timed out", function()
    local f = P.new_fake { GOLIAT_STUDY_TIMEOUT = "120", GOLIAT_STUDY_GRACE = "7" }
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function() return { exit_code = 0, after = 3600 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.matches("timed out after 120 s", m.message)
    assert.equals("SIGTERM", m.signal)
    assert.equals(7, f.procs[1].terminated_with_grace)
    assert.is_true(m.duration_s >= 120 and m.duration_s < 130)
  end)

  it("does not touch a study that ends in time", function()
    local f = P.new_fake { GOLIAT_STUDY_TIMEOUT = "120" }
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    f.spawn_handler = function() return { exit_code = 0, after = 100 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    f:run_for(300)
    assert.equals("finished", f:reports()[1].message.type)
    assert.is_nil(f.procs[1].terminated_with_grace)
  end)

  it("rejects a study timeout that is not a positive number", function()
    local f = P.new_fake { GOLIAT_STUDY_TIMEOUT = "0" }
    local _, err = require("agent").load_settings(f.host)
    assert.matches("GOLIAT_STUDY_TIMEOUT", err)
  end)
end)

describe("the API token", function()
  it("never appears in a log line, a report or a file, even inside a URL", function()
    local f = P.new_fake { GOLIAT_API_TOKEN = TOKEN }
    P.dashboard(f, { queue = { P.assignment { config_url = BLOB .. "/c3.json?sig=" ..
      TOKEN } }, configs = { [BLOB .. "/c3.json?sig=" .. TOKEN] = "{}" } })
    f.spawn_handler = function() return nil, "cannot run " .. TOKEN, "ENOENT" end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.is_nil(f:log_text():find(TOKEN, 1, true), f:log_text())
    for path, data in pairs(f.files) do
      assert.is_nil(data:find(TOKEN, 1, true), path)
    end
    for _, r in ipairs(f:reports()) do
      assert.is_nil(cjson.encode(r):find(TOKEN, 1, true))
    end
  end)
end)

describe("a fault in an edited policy", function()
  it("is logged, the loop restarts and the heartbeat never stops", function()
    local f = P.new_fake()
    f.raise_errors = false
    P.dashboard(f, { queue = { P.assignment() }, configs = CONFIG })
    local inner = f.http_handler
    local broken = 3
    f.http_handler = function(req, ff)
      if req.url:match("/api/assignment") and broken > 0 then
        broken = broken - 1
        error("operator typo in the poll step")
      end
      return inner(req, ff)
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.equals(3, #f.task_errors)
    assert.matches("operator typo", f:log_text())
    assert.matches("worker loop stopped", f:log_text())
    local beats = f:requests_to("/api/heartbeat$")
    for i = 2, #beats do
      assert.is_true(beats[i].at - beats[i - 1].at <= 6, "heartbeat gap")
    end
  end)
end)

describe("logging a failing step", function()
  it("logs again when the error changes, not on every retry", function()
    local f = P.new_fake()
    P.dashboard(f)
    local inner = f.http_handler
    f.http_handler = function(req, ff)
      if req.url:match("/api/assignment") then
        if f.now < 300 then return nil, "connection refused", "connect" end
        if f.now < 600 then return P.json(500, {}) end
      end
      return inner(req, ff)
    end
    P.start(f)
    f:run_for(900)
    local warns = {}
    for _, l in ipairs(f.logs) do
      if l.level == "warn" and l.text:match("^assignment poll failed") then
        table.insert(warns, l.text)
      end
    end
    assert.equals(2, #warns)
    assert.matches("connection refused", warns[1])
    assert.matches("HTTP 500", warns[2])
    assert.matches("works again", f:log_text())
  end)
end)
