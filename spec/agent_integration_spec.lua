-- Integration specs: the real agent (goliat-host scripts/agent.lua), the
-- example dashboard and the GOLIAT stand-in, as separate processes talking
-- HTTP on 127.0.0.1.
local host = require "host"
local cluster = require "support.cluster"

local queue, reports_at_least = cluster.queue, cluster.reports_at_least

describe("the agent with the example dashboard", function()
  local dash, agent, work

  before_each(function()
    dash = cluster.start_dashboard()
    work = cluster.temp_dir("work")
  end)

  after_each(function()
    if agent then cluster.stop(agent.proc) end
    cluster.stop(dash.proc)
    agent = nil
  end)

  it("runs an assignment end to end and reports exit 0 as finished", function()
    queue(dash, { exit_code = 0, duration_s = 0.5, steps = 2 },
      { split_index = 4, id = "ok-1" })
    agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
    local reports = assert(reports_at_least(dash, 1), "no report arrived")
    local m = reports[1]
    assert.equals("finished", m.type)
    assert.equals("ok-1", m.assignment_id)
    assert.equals(0, m.exit_code)
    assert.is_true(m.duration_s >= 0.5)
    -- the config is on disk under the documented name, and the study ran
    -- with it and wrote its output to the assignment's log
    assert.matches('"exit_code":0', host.fs.read(host.fs.join(work,
      "configs", "assigned_config_4.json")))
    local log = assert(host.fs.read(host.fs.join(work, "study_4.log")))
    assert.matches("assignment ok%-1", log)
    assert.matches("step 2/2", log)
    -- the stand-in's own GUI updates reached the dashboard too, through
    -- the gateway (which may send only the newest of two progress updates
    -- that wait together)
    local ev = cluster.events(dash)
    local last
    for _, u in ipairs(ev.gui_updates) do
      if u.message.type == "overall_progress" then last = u.message end
      assert.equals("spec-worker", u.machineId)
    end
    assert.is_table(last, "no progress reached the dashboard")
    assert.equals(2, last.current)
    assert.is_true(#ev.heartbeats >= 1)
    assert.equals("spec-worker", ev.heartbeats[1].machineId)
  end)

  it("reports a study that exits with 3 as fatal_error with exit code 3", function()
    queue(dash, { exit_code = 3, duration_s = 0.2, steps = 1 }, { id = "bad-1" })
    agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
    local m = assert(reports_at_least(dash, 1), "no report arrived")[1]
    assert.equals("fatal_error", m.type)
    assert.equals("bad-1", m.assignment_id)
    assert.equals(3, m.exit_code)
    assert.matches("code 3", m.message)
  end)

  it("keeps beating while a config download hangs (broken if the " ..
    "heartbeat waits behind the download)", function()
    -- the dashboard answers the config request only after 4 s
    queue(dash, { duration_s = 0.1, steps = 1 }, { delay_s = 4, id = "slow" })
    agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
    assert(reports_at_least(dash, 1, 60), "no report arrived")
    local ev = cluster.events(dash)
    local asked_at
    for _, r in ipairs(ev.requests) do
      if r.path == "/configs/slow.json" then asked_at = asked_at or r.at end
    end
    assert(asked_at, "the config was never asked for")
    -- heartbeats every 0.5 s: while the reply is held back for 4 s, a
    -- heartbeat stuck behind the download would give none at all; no
    -- rhythm is asserted (a loaded machine may delay a few)
    local during = 0
    for _, b in ipairs(ev.heartbeats) do
      if b.at > asked_at and b.at < asked_at + 4 then during = during + 1 end
    end
    assert.is_true(during >= 2, "heartbeats during the download: " .. during)
  end)

  it("on SIGHUP logs it and keeps running and beating (it used to die)",
    function()
      agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= 1
      end, 20), "no heartbeat")
      assert(agent.proc:signal("SIGHUP"))
      local beats = #cluster.events(dash).heartbeats
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= beats + 3
      end, 20), "no heartbeats after SIGHUP")
      assert.is_true(agent.proc:running())
      assert.matches("SIGHUP received", host.fs.read(agent.log))
    end)

  it("on SIGTERM stops the study's whole tree, reports it and exits 0", function()
    local pid_file = host.fs.join(work, "study.pid")
    local child_file = host.fs.join(work, "child.pid")
    queue(dash, { duration_s = 120, steps = 1, pid_file = pid_file,
      child_pid_file = child_file }, { id = "long" })
    agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
    local pids = cluster.wait_until(function()
      local a, b = host.fs.read(pid_file), host.fs.read(child_file)
      return a and b and { tonumber(a), tonumber(b) }
    end, 30)
    assert(pids, "the study did not start")
    assert.is_true(cluster.alive(pids[1]) and cluster.alive(pids[2]))
    assert(agent.proc:signal("SIGTERM"))
    local code = agent.proc:wait()
    assert.equals(0, code)
    assert.is_false(cluster.alive(pids[1]), "study still alive")
    assert.is_false(cluster.alive(pids[2]), "study's child still alive")
    local m = assert(reports_at_least(dash, 1, 10))[1]
    assert.equals("fatal_error", m.type)
    assert.equals("long", m.assignment_id)
    assert.matches("SIGTERM", m.message)
  end)
end)

describe("the agent started before the dashboard", function()
  it("keeps trying and registers once the dashboard is up", function()
    -- find a free port, then leave it closed for a while
    local probe = assert(host.http.serve({ port = 0 }, function() return 200 end))
    local port = probe:port()
    probe:close()
    local work = cluster.temp_dir("late")
    local agent = cluster.start_agent(cluster.agent_env(
      "http://127.0.0.1:" .. port, work), work)
    host.time.sleep(2)
    assert.is_true(agent.proc:running(), "the agent gave up")
    local dash = cluster.start_dashboard { "--port", tostring(port) }
    queue(dash, { duration_s = 0.1, steps = 1 }, { id = "late-1" })
    local ok, reports = pcall(reports_at_least, dash, 1, 60)
    cluster.stop(agent.proc)
    cluster.stop(dash.proc)
    assert.is_true(ok and reports and reports[1].type == "finished",
      "no finished report after the dashboard came up")
  end)
end)

describe("the agent without GOLIAT_MONITORING_URL", function()
  it("names the variable and exits with code 2", function()
    local work = cluster.temp_dir("nourl")
    local env = cluster.agent_env("", work)
    local agent = cluster.start_agent(env, work)
    local code = agent.proc:wait()
    assert.equals(2, code)
    local log = host.fs.read(agent.log)
    assert.matches("GOLIAT_MONITORING_URL", log)
    assert.equals(1, select(2, log:gsub("\n", "")), "one line: " .. log)
  end)
end)

describe("what a study leaves running", function()
  local t = cluster.fixture("leftovers") -- t.agent is stopped after each test
  local dash, work, recorded
  before_each(function()
    t.setup()
    dash, work, recorded = t.dash, t.work, t.recorded
  end)
  after_each(t.teardown)

  -- Queue a study that starts a child in its group and one that leaves
  -- the group and session (setsid) and ignores SIGTERM; returns a function
  -- that waits for both pids.
  local function queue_with_children(config, id)
    local group, detached = host.fs.join(work, "group.pid"),
      host.fs.join(work, "detached.pid")
    config.child_pid_file, config.detached_pid_file = group, detached
    config.detached_ignores_sigterm = true
    queue(dash, config, { id = id })
    return function()
      local pids = cluster.wait_until(function()
        local a, b = host.fs.read(group), host.fs.read(detached)
        return a and b and { tonumber(a), tonumber(b) }
      end, 30)
      assert(pids, "the study did not start its children")
      recorded[1], recorded[2] = pids[1], pids[2]
      return pids
    end
  end

  local function assert_gone(pids)
    assert.is_false(cluster.alive(pids[1]), "the study's child still runs")
    assert.is_false(cluster.alive(pids[2]), "the setsid child still runs")
  end

  it("is ended before the study is reported finished", function()
    local pids = queue_with_children({ duration_s = 0.5, steps = 1 }, "done")
    t.agent = cluster.start_agent(cluster.agent_env(dash.url, work,
      { GOLIAT_STUDY_GRACE = "2" }), work)
    local m = assert(reports_at_least(dash, 1), "no report arrived")[1]
    assert.equals("finished", m.type)
    assert_gone(pids())
    assert.matches("left 2 process%(es%) running", host.fs.read(host.fs.join(
      work, "study_0.log")))
  end)

  it("is ended when the study times out", function()
    local pids = queue_with_children({ duration_s = 120, steps = 1 }, "slow")
    t.agent = cluster.start_agent(cluster.agent_env(dash.url, work,
      { GOLIAT_STUDY_GRACE = "2", GOLIAT_STUDY_TIMEOUT = "4" }), work)
    local m = assert(reports_at_least(dash, 1), "no report arrived")[1]
    assert.matches("timed out", m.message)
    assert_gone(pids())
  end)

  it("is ended when the agent is stopped", function()
    local pids = queue_with_children({ duration_s = 120, steps = 1 }, "stop")
    t.agent = cluster.start_agent(cluster.agent_env(dash.url, work,
      { GOLIAT_STUDY_GRACE = "2" }), work)
    local both = pids()
    assert(t.agent.proc:signal("SIGTERM"))
    assert.equals(0, t.agent.proc:wait())
    assert_gone(both)
  end)
end)

describe("a study whose exit file cannot be written", function()
  it("is reported with its real exit code 0 as finished, not as SIGKILL",
    function()
      local dash = cluster.start_dashboard()
      local work = cluster.temp_dir("noexit")
      -- a folder with a file in it where the exit file should go
      local exit_file = host.fs.join(work, "study_0.exit.json")
      assert(host.fs.mkdir_p(exit_file))
      assert(host.fs.write_atomic(host.fs.join(exit_file, "keep"), "x"))
      queue(dash, { duration_s = 0.2, steps = 1 }, { id = "nofile" })
      local agent = cluster.start_agent(cluster.agent_env(dash.url, work), work)
      local reports = reports_at_least(dash, 1)
      cluster.stop(agent.proc)
      cluster.stop(dash.proc)
      local m = assert(reports, "no report arrived")[1]
      assert.equals("finished", m.type)
      assert.equals(0, m.exit_code)
      assert.matches("is the disk full", m.message)
    end)
end)
