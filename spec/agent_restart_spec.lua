-- Integration specs for "nothing lost", with real processes: the agent is
-- killed with SIGKILL at the worst moments and started again; a study that
-- ignores SIGTERM is stopped by the study time limit.
local host = require "host"
local cluster = require "support.cluster"

local queue, reports_at_least = cluster.queue, cluster.reports_at_least

local function count(text, pattern)
  return select(2, (text or ""):gsub(pattern, ""))
end

describe("an agent killed with SIGKILL", function()
  local dash, work, agents

  before_each(function()
    dash = cluster.start_dashboard()
    work = cluster.temp_dir("restart")
    agents = {}
  end)

  after_each(function()
    for _, a in ipairs(agents) do cluster.stop(a.proc) end
    cluster.stop(dash.proc)
  end)

  local function start_agent(extra)
    local a = cluster.start_agent(cluster.agent_env(dash.url, work, extra), work)
    table.insert(agents, a)
    return a
  end

  it("during a study: the next agent takes it back and reports its real exit code",
    function()
      local pid_file = host.fs.join(work, "study.pid")
      queue(dash, { exit_code = 3, duration_s = 6, steps = 3, pid_file = pid_file },
        { id = "survivor", split_index = 2 })
      local first = start_agent()
      local study_pid = cluster.wait_until(function()
        return tonumber(host.fs.read(pid_file) or "")
      end, 30)
      assert(study_pid, "the study did not start")
      assert(first.proc:signal("SIGKILL"))
      first.proc:wait()
      assert.is_true(cluster.alive(study_pid), "the study died with the agent")
      local beats = #cluster.events(dash).heartbeats
      start_agent()
      local m = assert(reports_at_least(dash, 1, 60), "no report")[1]
      assert.equals("fatal_error", m.type)
      assert.equals("survivor", m.assignment_id)
      assert.equals(3, m.exit_code)
      local ev = cluster.events(dash)
      assert.equals(1, #ev.handed)
      assert.is_true(#ev.heartbeats > beats, "the new agent beats")
      -- one study only: the stand-in prints one start line per run
      local log = host.fs.read(host.fs.join(work, "study_2.log"))
      assert.equals(1, count(log, "goliat stand%-in: study"))
      assert.is_false(host.fs.exists(host.fs.join(work, "agent_state.json")))
    end)

  it("after the study ended but before the report went out: it still arrives",
    function()
      queue(dash, { exit_code = 0, duration_s = 1, steps = 1 },
        { id = "pending", split_index = 5 })
      local first = start_agent()
      assert(cluster.wait_until(function()
        return #cluster.events(dash).handed == 1
      end, 30), "not handed out")
      -- from now on the dashboard refuses every API call
      cluster.post_json(dash.url .. "/dev/fail", { status = 503, count = 100000 })
      local outbox = host.fs.join(work, "outbox")
      assert(cluster.wait_until(function()
        local files = host.fs.list(outbox) or {}
        return #files > 0
      end, 30), "the report never reached the outbox")
      assert(first.proc:signal("SIGKILL"))
      first.proc:wait()
      cluster.post_json(dash.url .. "/dev/fail", { status = 503, count = 0 })
      start_agent()
      local m = assert(reports_at_least(dash, 1, 60), "the report was lost")[1]
      assert.equals("finished", m.type)
      assert.equals("pending", m.assignment_id)
      assert(cluster.wait_until(function()
        for _, name in ipairs(host.fs.list(outbox) or {}) do
          if name:match("^%d+%.json$") then return false end
        end
        return true
      end, 30), "the outbox was not emptied: " ..
        table.concat(host.fs.list(outbox) or {}, " "))
    end)
end)

describe("a second agent on the same work dir", function()
  it("is refused with exit code 2 and a message, and the lock goes with a " ..
    "killed agent", function()
      local dash = cluster.start_dashboard()
      local work = cluster.temp_dir("lock")
      local env = cluster.agent_env(dash.url, work)
      local first = cluster.start_agent(env, work)
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= 1
      end, 20), "the first agent does not beat")
      local H = require "support.helpers"
      local r = H.run_host({ host.fs.join(cluster.source_dir,
        "scripts/agent.lua") }, { env = env, timeout = 20 })
      assert.equals(2, r.code)
      assert.matches("GOLIAT_WORK_DIR .-another agent runs with it", r.stderr)
      assert.is_true(first.proc:running())
      assert(first.proc:signal("SIGKILL"))
      first.proc:wait()
      local beats = #cluster.events(dash).heartbeats
      local second = cluster.start_agent(env, work)
      local ok = cluster.wait_until(function()
        return #cluster.events(dash).heartbeats > beats + 1
      end, 20)
      cluster.stop(second.proc)
      cluster.stop(dash.proc)
      assert(ok, "the agent after the killed one does not run")
    end)
end)

describe("a study over its time limit that ignores SIGTERM", function()
  it("is killed with its grandchild after the grace period and reported", function()
    local dash = cluster.start_dashboard()
    local work = cluster.temp_dir("timeout")
    local pid_file = host.fs.join(work, "study.pid")
    local child_file = host.fs.join(work, "child.pid")
    queue(dash, { duration_s = 120, steps = 1, pid_file = pid_file,
      child_pid_file = child_file, ignore_sigterm = true,
      child_ignores_sigterm = true }, { id = "stubborn" })
    local agent = cluster.start_agent(cluster.agent_env(dash.url, work, {
      GOLIAT_STUDY_TIMEOUT = "3", GOLIAT_STUDY_GRACE = "1" }), work)
    local ok, reports = pcall(reports_at_least, dash, 1, 60)
    local pids = { tonumber(host.fs.read(pid_file) or ""),
      tonumber(host.fs.read(child_file) or "") }
    cluster.stop(agent.proc)
    cluster.stop(dash.proc)
    assert.is_true(ok and reports ~= false, "no report")
    local m = reports[1]
    assert.equals("fatal_error", m.type)
    assert.equals("stubborn", m.assignment_id)
    assert.matches("timed out", m.message)
    assert.is_number(pids[1])
    assert.is_number(pids[2])
    assert.is_false(cluster.alive(pids[1]), "the study survived")
    assert.is_false(cluster.alive(pids[2]), "the study's child survived")
  end)
end)
