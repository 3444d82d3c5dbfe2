-- Integration specs: an operator's broken edit of scripts/agent.lua, run by
-- the real host. A copy of scripts/ is edited in a temporary folder.
local host = require "host"
local cluster = require "support.cluster"
local H = require "support.helpers"

-- Copy scripts/ to a temporary folder, applying edit(text) to agent.lua.
local function edited_scripts(edit)
  local dir = cluster.temp_dir("scripts")
  assert(H.run { argv = { "cp", "-r", host.fs.join(cluster.source_dir, "scripts"),
    dir } } == 0)
  local path = host.fs.join(dir, "scripts", "agent.lua")
  local text = assert(host.fs.read(path))
  local edited = edit(text)
  assert.are_not.equal(text, edited, "the edit changed nothing")
  assert(host.fs.write_atomic(path, edited))
  return path
end

local function line_of(text, needle)
  local at = assert(text:find(needle, 1, true), needle)
  return select(2, text:sub(1, at):gsub("\n", "")) + 1
end

describe("an edit of agent.lua", function()
  it("that does not load is reported with file and line at start-up", function()
    local script = edited_scripts(function(text)
      return (text:gsub("function Agent:find_work%(%)", "function Agent:find_work(( -- typo", 1))
    end)
    local line = line_of(host.fs.read(script), "function Agent:find_work((")
    local r = H.run_host({ script }, { env = { GOLIAT_MONITORING_URL = "http://127.0.0.1:9" } })
    assert.is_true(r.code ~= 0)
    assert.matches("agent%.lua:" .. line .. ":", r.stderr)
  end)

  it("that spins without yielding is stopped with file and line; the agent goes on",
    function()
      local script = edited_scripts(function(text)
        return (text:gsub("function Agent:find_work%(%)\n",
          "local spun_once\nfunction Agent:find_work()\n" ..
          "  if not spun_once then spun_once = true; while true do end end\n", 1))
      end)
      local line = line_of(host.fs.read(script), "while true do end")
      local dash = cluster.start_dashboard()
      cluster.post_json(dash.url .. "/dev/assignments",
        { config = { duration_s = 0.1, steps = 1 }, id = "after-spin" })
      local work = cluster.temp_dir("spin")
      local env = cluster.agent_env(dash.url, work, { GOLIAT_TASK_LIMIT = "1" })
      local agent = assert(host.proc.spawn { argv = { cluster.goliat_host, script },
        env = env, stdout = host.fs.join(work, "agent.log"), stderr = "stdout" })
      local reports = cluster.wait_until(function()
        local r = cluster.reports(dash)
        return #r >= 1 and r
      end, 60)
      local ev = cluster.events(dash)
      cluster.stop(agent)
      cluster.stop(dash.proc)
      local log = host.fs.read(host.fs.join(work, "agent.log")) or ""
      assert.matches("agent%.lua:" .. line .. ": ran for more than 1[%.0]* s without yielding", log)
      assert.matches("worker loop stopped", log)
      assert.is_truthy(reports, "the worker did not come back: " .. log)
      assert.equals("finished", reports[1].type)
      -- the heartbeat went on while the worker was stuck
      local beats, max_gap = ev.heartbeats, 0
      for i = 2, #beats do max_gap = math.max(max_gap, beats[i].at - beats[i - 1].at) end
      assert.is_true(max_gap < 5, "heartbeat gap " .. max_gap)
    end)
end)

describe("a reload (SIGHUP) of an edited agent.lua", function()
  local dash, agent, work, script

  before_each(function()
    dash = cluster.start_dashboard()
    work = cluster.temp_dir("reload")
    -- an unedited copy: the edits below are made while the agent runs
    script = edited_scripts(function(text) return text .. "\n" end)
    agent = assert(host.proc.spawn { argv = { cluster.goliat_host, script },
      env = cluster.agent_env(dash.url, work),
      stdout = host.fs.join(work, "agent.log"), stderr = "stdout" })
  end)

  after_each(function()
    cluster.stop(agent)
    cluster.stop(dash.proc)
  end)

  local function log() return host.fs.read(host.fs.join(work, "agent.log")) or "" end

  local function study_running()
    assert(cluster.wait_until(function()
      return log():find("starting", 1, true)
    end, 30), "the study did not start")
  end

  it("takes the edit up in the same process, keeps the study and reports " ..
    "it once", function()
      cluster.post_json(dash.url .. "/dev/assignments",
        { config = { duration_s = 6, steps = 2 }, id = "kept" })
      study_running()
      local text = assert(host.fs.read(script))
      assert(host.fs.write_atomic(script, (text:gsub(
        'self%.log%.info%("goliat agent %%s',
        'self.log.info("edited policy: goliat agent %%s', 1))))
      assert(agent:signal("SIGHUP"))
      local reports = cluster.wait_until(function()
        local r = cluster.reports(dash)
        return #r >= 1 and r
      end, 60)
      assert(reports, "no report: " .. log())
      assert.matches("edited policy: goliat agent", log())
      assert.matches("taking back the running study", log())
      assert.is_true(agent:running(), "the agent process ended")
      assert.equals("finished", reports[1].type)
      assert.equals("kept", reports[1].assignment_id)
      host.time.sleep(2)
      assert.equals(1, #cluster.reports(dash))
      assert.equals(1, #cluster.events(dash).handed)
    end)

  it("refuses an edit that does not load, with file and line, and goes on " ..
    "as it was", function()
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= 1
      end, 30))
      local text = assert(host.fs.read(script))
      local broken = text:gsub("function Agent:find_work%(%)",
        "function Agent:find_work(( -- typo", 1)
      assert(host.fs.write_atomic(script, broken))
      local line = line_of(broken, "function Agent:find_work((")
      assert(agent:signal("SIGHUP"))
      assert(cluster.wait_until(function()
        return log():find("reload refused", 1, true)
      end, 30), "no refusal logged: " .. log())
      assert.matches("reload refused, the agent keeps running as it was: " ..
        "[^\n]*agent%.lua:" .. line .. ":", log())
      local beats = #cluster.events(dash).heartbeats
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= beats + 3
      end, 20), "no heartbeats after the refused reload")
      assert.is_true(agent:running())
    end)

  it("refuses a broken edit of a module loaded only when needed (the " ..
    "gateway's, the other dashboard API's), with file and line (broken if " ..
    "the reload checks only what start-up loads, and the agent restarts " ..
    "into a policy that fails later)", function()
      assert(cluster.wait_until(function()
        return #cluster.events(dash).heartbeats >= 1
      end, 30))
      for _, module in ipairs { "lib/gateway.lua", "protocol/super_study.lua" } do
        local path = script:gsub("agent%.lua$", module)
        local text = assert(host.fs.read(path))
        local broken = text:gsub("\nlocal M = {", "\nlocal M == { -- typo", 1)
        assert.are_not.equal(text, broken, module)
        assert(host.fs.write_atomic(path, broken))
        local line = line_of(broken, "local M == { -- typo")
        local before = select(2, log():gsub("reload refused", ""))
        assert(agent:signal("SIGHUP"))
        assert(cluster.wait_until(function()
          return select(2, log():gsub("reload refused", "")) > before
        end, 30), "no refusal logged: " .. log())
        assert.matches("reload refused, the agent keeps running as it " ..
          "was: [^\n]*" .. module:gsub("%p", "%%%0") .. ":" .. line .. ":", log())
        assert(host.fs.write_atomic(path, text))
      end
      assert.is_true(agent:running())
    end)
end)
