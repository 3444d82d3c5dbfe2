-- Policy specs for idle VMs (issue 22): the idle stop (GOLIAT_IDLE_AFTER,
-- GOLIAT_IDLE_COMMAND), the idle back-off of work lookups
-- (GOLIAT_IDLE_POLL_MAX) and the disk check (GOLIAT_MIN_FREE_GB). The real
-- scripts/agent.lua on the fake host and its fake clock.
local cjson = require "cjson"
local P = require "support.policy"
local status = require "lib.status"

local CONFIG = { [P.BLOB .. "/c3.json"] = "{}" }
local POWEROFF = '["systemctl","poweroff"]'

local function idle_commands(f)
  local out = {}
  for _, p in ipairs(f.procs) do
    if p.opts.argv[1] == "systemctl" then out[#out + 1] = p end
  end
  return out
end

local function status_of(f)
  return cjson.decode(f.files["/work/agent/agent_status.json"] or "null")
end

-- A planned-API dashboard that hands out `queue` from `from` seconds on,
-- and is unreachable while down(now).
local function dashboard(f, opts)
  opts = opts or {}
  local queue = opts.queue or {}
  P.dashboard(f, { configs = CONFIG, override = function(_, path)
    if opts.down and opts.down(f.now) then
      return nil, "connection refused", "connect"
    end
    if path:match("^/api/assignment%?") then
      if f.now >= (opts.from or 0) and #queue > 0 then
        return P.json(200, { assigned = true,
          assignment = table.remove(queue, 1) })
      end
      return P.json(200, { assigned = false })
    end
  end })
end

describe("an idle VM (GOLIAT_IDLE_AFTER)", function()
  it("runs GOLIAT_IDLE_COMMAND once after the idle time, logs it, and " ..
    "takes no work while the VM goes down", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF }
      dashboard(f)
      f.spawn_handler = function() return { exit_code = 0, after = 1 } end
      P.start(f)
      f:run_for(280)
      assert.equals(0, #idle_commands(f), "ran before the idle time")
      f:run_for(60)
      local cmds = idle_commands(f)
      assert.equals(1, #cmds)
      assert.is_true(cmds[1].started >= 300 and cmds[1].started <= 340)
      assert.matches("idle for %d+ s with no work %(GOLIAT_IDLE_AFTER=300%)" ..
        ": running GOLIAT_IDLE_COMMAND: systemctl poweroff", f:log_text())
      assert.matches("GOLIAT_IDLE_COMMAND ended with exit code 0",
        f:log_text())
      local polls = #f:requests_to("/api/assignment")
      f:run_for(300)
      assert.equals(polls, #f:requests_to("/api/assignment"),
        "work was looked for while the VM goes down")
      assert.is_true(#f:requests_to("/api/heartbeat$") > 50)
      f:run_for(3000)
      assert.equals(1, #idle_commands(f), "the command ran again")
      assert.is_nil(f.exit_code)
    end)

  it("does not count an outage: the clock stops while the dashboard " ..
    "cannot be asked", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF }
      dashboard(f, { down = function(now) return now >= 100 and now < 1000 end })
      P.start(f)
      f:run_for(990)
      assert.equals(0, #idle_commands(f), "an outage counted as idle")
      assert.is_true(f:run_until(function() return #idle_commands(f) > 0 end,
        600))
      -- about 100 s idle before the outage, 200 more after it
      local at = idle_commands(f)[1].started
      assert.is_true(at >= 1150 and at <= 1300, "ran at " .. at)
    end)

  it("is not idle while a report waits to be sent", function()
    local f = P.offline_fake { GOLIAT_IDLE_AFTER = "100",
      GOLIAT_IDLE_COMMAND = POWEROFF }
    dashboard(f, { queue = { P.assignment() } })
    local inner = f.http_handler
    f.http_handler = function(req, ff)
      if f.now < 1000 and req.url:match("/api/gui%-update$") then
        return P.json(503, { error = "busy" })
      end
      return inner(req, ff)
    end
    f.spawn_handler = function(opts)
      if opts.argv[1] == "systemctl" then return { exit_code = 0 } end
      return { exit_code = 0, after = 10 }
    end
    P.start(f)
    f:run_for(900)
    assert.equals(0, #idle_commands(f))
    assert.is_true(f:run_until(function() return #idle_commands(f) > 0 end,
      600))
    assert.is_true(idle_commands(f)[1].started > 1000)
  end)

  it("starts from zero when work comes, and may stop the VM again once " ..
    "that work is done", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF }
      -- work at 200 s (before the first stop), and again at 2000 s
      local queue = { P.assignment() }
      dashboard(f, { queue = queue, from = 200 })
      f.spawn_handler = function(opts)
        if opts.argv[1] == "systemctl" then return { exit_code = 0 } end
        return { exit_code = 0, after = 100 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #idle_commands(f) > 0 end,
        1500))
      local first = idle_commands(f)[1].started
      assert.is_true(first >= 600, "stopped " .. first ..
        " s in: the study's time counted as idle")
      f:run_for(2000 - f.now)
      queue[1] = P.assignment { id = "a-2" }
      assert.is_true(f:run_until(function() return #idle_commands(f) > 1 end,
        1500), "no second stop after the second assignment")
      assert.equals(2, #f:reports())
    end)

  it("without GOLIAT_IDLE_COMMAND exits with code 0", function()
    local f = P.offline_fake { GOLIAT_IDLE_AFTER = "60" }
    dashboard(f)
    P.start(f)
    f:run_for(200)
    assert.equals(0, f.exit_code)
    assert.matches("idle for %d+ s with no work %(GOLIAT_IDLE_AFTER=60%): " ..
      "exiting with code 0", f:log_text())
  end)

  it("shows in --status how long it has been idle and when the VM is " ..
    "stopped", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "1800",
        GOLIAT_IDLE_COMMAND = POWEROFF }
      dashboard(f)
      P.start(f)
      f:run_for(610)
      local st = status_of(f)
      assert.is_true(st.idle.seconds >= 540 and st.idle.seconds <= 610,
        "idle " .. st.idle.seconds)
      assert.equals(1800, st.idle.seconds + st.idle.stop_in)
      assert.equals("systemctl poweroff", st.idle.stop)
      local text = status.text { running = true, now = st.updated_at,
        status = st, outbox = 0, rejected = 0, work_dir = "/work/agent" }
      assert.matches("idle: for %d+ min; the VM is stopped %(systemctl " ..
        "poweroff%) in about %d+ min, GOLIAT_IDLE_AFTER", text)
    end)
end)

describe("idle lookups", function()
  local function gaps(f)
    local out, last = {}, nil
    for _, r in ipairs(f:requests_to("/api/assignment")) do
      if last then out[#out + 1] = { at = r.at, gap = r.at - last } end
      last = r.at
    end
    return out
  end

  it("back off to GOLIAT_IDLE_POLL_MAX after a while with no work, and " ..
    "come back to the poll interval as soon as work shows up", function()
      local f = P.offline_fake()
      local queue = {}
      dashboard(f, { queue = queue })
      f.spawn_handler = function() return { exit_code = 0, after = 30 } end
      P.start(f)
      f:run_for(1200)
      local g = gaps(f)
      -- at the poll interval at first
      for i = 1, 10 do
        assert.is_true(g[i].gap <= 13.5, "gap " .. g[i].gap)
      end
      -- then up to 60 s, plus jitter and the wait for a heartbeat, never
      -- more: the longest a new super study waits before it is seen
      local longest = 0
      for _, x in ipairs(g) do longest = math.max(longest, x.gap) end
      assert.is_true(longest > 50, "no back-off: longest gap " .. longest)
      assert.is_true(longest <= 60 * 1.1 + 2.5, "gap " .. longest)
      assert.is_true(#f:requests_to("/api/assignment") < 50)
      -- work: picked up at the next lookup, and the lookups after the
      -- study are at the poll interval again
      queue[1] = P.assignment()
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 200))
      local after = f.now
      f:run_for(60)
      local n = 0
      for _, x in ipairs(gaps(f)) do
        if x.at - x.gap > after then
          n = n + 1
          assert.is_true(x.gap <= 13.5, "gap after the study " .. x.gap)
        end
      end
      assert.is_true(n >= 4)
      -- the heartbeat kept its pace throughout
      local beats = f:requests_to("/api/heartbeat$")
      for i = 2, #beats do
        assert.is_true(beats[i].at - beats[i - 1].at <= 5.01)
      end
    end)
end)

describe("a disk below GOLIAT_MIN_FREE_GB", function()
  it("takes no new work, warns once, says why in --status, keeps beating, " ..
    "and resumes by itself once there is room", function()
      local f = P.offline_fake { GOLIAT_MIN_FREE_GB = "50",
        GOLIAT_PROJECT_DIR = "/data/project" }
      dashboard(f, { queue = { P.assignment() } })
      f.free = function(path)
        return path:match("^/data") and 12e9 or 500e9
      end
      P.start(f)
      f:run_for(300)
      assert.equals(0, #f:requests_to("/api/assignment"))
      assert.is_true(#f:requests_to("/api/heartbeat$") > 50)
      local _, warnings = f:log_text():gsub("only 12%.0 GB free: less than " ..
        "50 GB free in /data/project %(GOLIAT_MIN_FREE_GB%)", "")
      assert.equals(1, warnings)
      assert.matches("GOLIAT_MIN_FREE_GB", status_of(f).waiting)
      f.free = nil -- room again
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 120))
      assert.matches("the disk has room again", f:log_text())
      f:run_for(10)
      assert.is_nil(status_of(f).waiting)
    end)

  it("still reports the study that was running when the disk filled",
    function()
      local f = P.offline_fake { GOLIAT_MIN_FREE_GB = "50" }
      dashboard(f, { queue = { P.assignment() } })
      f.spawn_handler = function()
        f.free = 1e9 -- the study fills the disk
        return { exit_code = 0, after = 30 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 200))
      assert.equals("finished", f:reports()[1].message.type)
    end)
end)

describe("idleness, from a review", function()
  it("does not count a round in which a super study could not be read " ..
    "(its PENDING work is unknown, not absent)", function()
      local super = require "support.super_dashboard"
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF, GOLIAT_FAILURE_RETRIES = "0" }
      local d = super.new(f, { override = function(_, path)
        if path:match("/assignments$") then
          return P.json(500, { error = "database timeout" })
        end
      end })
      d:add_study("s", { { n = 0 }, { n = 1 } })
      P.start(f)
      f:run_for(1200)
      assert.equals(0, #idle_commands(f), "the VM was stopped with work " ..
        "pending in a super study it could not read")
    end)

  it("counts a disk too full for work as idle (the VM is billed all the " ..
    "same), and first lets the retention make room", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF, GOLIAT_MIN_FREE_GB = "50",
        GOLIAT_KEEP_FINISHED = "1" }
      dashboard(f, { queue = { P.assignment() } })
      f.free = 5e9
      -- two finished assignments in the ledger, one more than now kept
      f.files["/work/agent/study_1.log"] = "old"
      f.files["/work/agent/study_2.log"] = "newer"
      f.files["/work/agent/retention.json"] = cjson.encode { groups = {
        { id = "o-1", at = 1, files = { "/work/agent/study_1.log" } },
        { id = "o-2", at = 2, files = { "/work/agent/study_2.log" } } } }
      P.start(f)
      f:run_for(400)
      assert.equals(1, #idle_commands(f))
      assert.equals(0, #f:requests_to("/api/assignment"))
      assert.is_nil(f.files["/work/agent/study_1.log"],
        "the retention did not run when the disk ran low")
      assert.equals("newer", f.files["/work/agent/study_2.log"])
    end)

  it("tries a failed GOLIAT_IDLE_COMMAND again after another idle time, " ..
    "and takes work meanwhile", function()
      local f = P.offline_fake { GOLIAT_IDLE_AFTER = "300",
        GOLIAT_IDLE_COMMAND = POWEROFF }
      dashboard(f)
      f.spawn_handler = function() return { exit_code = 1, after = 1 } end
      P.start(f)
      f:run_for(340)
      assert.equals(1, #idle_commands(f))
      assert.matches("GOLIAT_IDLE_COMMAND ended with exit code 1", f:log_text())
      local polls = #f:requests_to("/api/assignment")
      f:run_for(100)
      assert.is_true(#f:requests_to("/api/assignment") > polls,
        "no work looked for after the command failed")
      f:run_for(300)
      assert.equals(2, #idle_commands(f))
      -- without the agent's token
      assert.equals("", idle_commands(f)[1].opts.env.GOLIAT_API_TOKEN)
    end)
end)
