-- Idle VMs (issue 22) with real processes on 127.0.0.1: the development
-- dashboard, the agent, the GOLIAT stand-in as the study, and a real idle
-- command. The policies themselves (the idle clock, the back-off, the disk
-- check) are in spec/agent_idle_spec.lua, on a fake clock.
--
-- No timing is asserted: every wait is bounded, and the one count below
-- (lookups while idle) can only come out lower on a slow machine.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"
local H = require "support.helpers"

local fs = host.fs

describe("an idle agent", function()
  local t = cluster.fixture("idle")
  before_each(t.setup)
  after_each(t.teardown)

  local function start(extra)
    t.agent = cluster.start_agent(cluster.agent_env(t.dash.url, t.work, extra),
      t.work)
    t.recorded[#t.recorded + 1] = t.agent.proc.pid
    return t.agent
  end

  it("runs GOLIAT_IDLE_COMMAND once after GOLIAT_IDLE_AFTER and keeps " ..
    "beating (broken if an idle VM is never stopped)", function()
      local marker = fs.join(t.work, "vm-stopped")
      -- a real command: `goliat-host` running a one-line script that
      -- appends to the marker
      local script = fs.join(t.work, "stop-vm.lua")
      assert(fs.write_atomic(script, 'require("host").fs.append(arg[1], ' ..
        '"stop\\n")'))
      local a = start { GOLIAT_IDLE_AFTER = "2", GOLIAT_POLL_INTERVAL = "0.3",
        GOLIAT_IDLE_COMMAND = cjson.encode { cluster.goliat_host, script,
          marker } }
      assert.is_truthy(cluster.wait_until(function()
        return fs.read(marker)
      end, 60), "the idle command did not run; log: " ..
        tostring(fs.read(a.log)))
      local beats = #cluster.events(t.dash).heartbeats
      assert.is_truthy(cluster.wait_until(function()
        return #cluster.events(t.dash).heartbeats >= beats + 3
      end, 30), "no heartbeat after the idle command")
      assert.is_true(a.proc:running())
      assert.equals("stop\n", fs.read(marker), "the command ran again")
      local log = fs.read(a.log)
      assert.matches("running GOLIAT_IDLE_COMMAND: ", log)
      assert.matches("GOLIAT_IDLE_COMMAND ended with exit code 0", log)
    end)

  it("without GOLIAT_IDLE_COMMAND exits with code 0 by itself", function()
    local a = start { GOLIAT_IDLE_AFTER = "2", GOLIAT_POLL_INTERVAL = "0.3" }
    assert.is_true(cluster.wait_until(function()
      return not a.proc:running()
    end, 60), "the idle agent did not exit")
    assert.same({ 0 }, { a.proc:wait() })
    assert.matches("exiting with code 0", fs.read(a.log))
  end)

  it("looks for work less often while nothing comes, and picks up work " ..
    "that shows up within GOLIAT_IDLE_POLL_MAX", function()
      start { GOLIAT_POLL_INTERVAL = "0.2", GOLIAT_IDLE_POLL_MAX = "3" }
      -- 12 lookups at 0.2 s, then 0.4, 0.8, 1.6, 3, 3, ...
      assert.is_truthy(cluster.wait_until(function()
        return cluster.events(t.dash).polls >= 16
      end, 60))
      local before = cluster.events(t.dash).polls
      host.time.sleep(9)
      local during = cluster.events(t.dash).polls - before
      -- at the poll interval it would be about 45; backed off, 3 or 4
      assert.is_true(during <= 8, during .. " lookups in 9 s")
      cluster.queue(t.dash, { exit_code = 0, duration_s = 0.5 })
      local r = cluster.reports_at_least(t.dash, 1, 60)
      assert.is_truthy(r, "the work was not picked up")
      assert.equals("finished", r[1].type)
    end)
end)

describe("an agent on a full disk", function()
  local t = cluster.fixture("disk")
  before_each(t.setup)
  after_each(t.teardown)

  local has_fallocate = not H.windows and
    H.run { argv = { "sh", "-c", "command -v fallocate" }, stdout = "null" } == 0

  it("takes no work below GOLIAT_MIN_FREE_GB, keeps beating, and takes " ..
    "it once space is freed (a real file of 2 GB)", function()
      if not has_fallocate then pending("needs fallocate (util-linux)") end
      local filler = fs.join(t.work, "filler")
      assert.equals(0, (H.run { argv = { "fallocate", "-l", "2G", filler } }))
      -- the line between the free space with the filler and without it
      local free = fs.space(t.work).free
      local min = string.format("%.3f", (free + 1e9) / 1e9)
      cluster.queue(t.dash, { exit_code = 0, duration_s = 0.5 })
      t.agent = cluster.start_agent(cluster.agent_env(t.dash.url, t.work,
        { GOLIAT_MIN_FREE_GB = min }), t.work)
      t.recorded[#t.recorded + 1] = t.agent.proc.pid
      assert.is_truthy(cluster.wait_until(function()
        return #cluster.events(t.dash).heartbeats >= 4
      end, 30))
      assert.equals(0, cluster.events(t.dash).polls, "work was looked for")
      assert.matches("GOLIAT_MIN_FREE_GB", fs.read(t.agent.log))
      assert(fs.remove(filler))
      local r = cluster.reports_at_least(t.dash, 1, 60)
      assert.is_truthy(r, "no work after the space was freed; log: " ..
        tostring(fs.read(t.agent.log)))
      assert.matches("the disk has room again", fs.read(t.agent.log))
    end)
end)
