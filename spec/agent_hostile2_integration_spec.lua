-- Hostile conditions, round 2 (issue 21), with real processes on
-- 127.0.0.1: the development dashboard, the agent and the GOLIAT stand-in.
-- A FIFO left in outbox/ and symbolic links planted where the agent writes
-- a split config. POSIX only (mkfifo, symbolic links without privileges);
-- the host's side of both is in spec/fs_spec.lua, under wine too.
--
-- Every wait is bounded; no timing is asserted.
local host = require "host"
local cluster = require "support.cluster"
local H = require "support.helpers"

local fs = host.fs

local describe_posix = H.windows and pending or describe

describe_posix("a hostile work dir", function()
  local t = cluster.fixture("hostile2")
  before_each(t.setup)
  after_each(t.teardown)

  it("with a FIFO in outbox/ keeps the heartbeat and the work going: " ..
    "the FIFO is skipped, never opened", function()
      local outbox = fs.join(t.work, "outbox")
      assert(fs.mkdir_p(outbox))
      local fifo = fs.join(outbox, "000000000001.json")
      assert.equals(0, (H.run { argv = { "mkfifo", fifo } }))
      assert.equals("other", fs.stat(fifo).type)
      cluster.queue(t.dash, { exit_code = 0, duration_s = 0.5 },
        { split_index = 1 })
      t.agent = cluster.start_agent(cluster.agent_env(t.dash.url, t.work),
        t.work)
      t.recorded[#t.recorded + 1] = t.agent.proc.pid
      local r = cluster.reports_at_least(t.dash, 1, 60)
      assert.is_truthy(r, "no report: the agent is stuck on the FIFO; log: " ..
        tostring(fs.read(t.agent.log)))
      assert.equals("finished", r[1].type)
      assert.is_true(#cluster.events(t.dash).heartbeats >= 2)
      assert.matches("not a regular file", fs.read(t.agent.log))
      assert.equals("other", fs.stat(fifo).type, "the FIFO was moved")
    end)

  it("with links planted at the names of the agent's temporary files " ..
    "never writes through them (the split config goes where it belongs)",
    function()
      local victim_dir = cluster.temp_dir("victim")
      local victim = fs.join(victim_dir, "precious.txt")
      assert(fs.write_atomic(victim, "precious\n"))
      t.agent = cluster.start_agent(cluster.agent_env(t.dash.url, t.work),
        t.work)
      local pid = t.agent.proc.pid
      t.recorded[#t.recorded + 1] = pid
      -- the old names were <path>.tmp-<pid>-<n>, n counting from 1
      local configs = fs.join(t.work, "configs")
      assert(fs.mkdir_p(configs))
      local config = fs.join(configs, "assigned_config_7.json")
      for n = 1, 300 do
        assert.equals(0, (H.run { argv = { "ln", "-s", victim,
          string.format("%s.tmp-%d-%d", config, pid, n) } }))
      end
      cluster.queue(t.dash, { exit_code = 0, duration_s = 0.5 },
        { split_index = 7 })
      local r = cluster.reports_at_least(t.dash, 1, 60)
      assert.is_truthy(r, "no report; log: " .. tostring(fs.read(t.agent.log)))
      assert.equals("finished", r[1].type)
      assert.equals("precious\n", fs.read(victim))
      assert.equals("file", fs.stat(config).type)
      assert.matches('"exit_code"', fs.read(config))
    end)
end)
