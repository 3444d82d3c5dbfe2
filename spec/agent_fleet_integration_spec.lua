-- A fleet that runs unattended (issue 20), with real processes on
-- 127.0.0.1: the development dashboard in super-study mode, agents, and
-- the GOLIAT stand-in (examples/goliat) as the study. Each test names the
-- behaviour of the agent that would break it; the policies themselves are
-- in spec/agent_super_study_spec.lua.
--
-- No timing is asserted (the machine is shared): every wait is bounded
-- (cluster.wait_until with a limit), and every process a test signals is
-- one whose pid it recorded itself.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"

local fs = host.fs

local lines = cluster.lines -- a file's lines

local function count(text, plain)
  local n, at = 0, 1
  while true do
    local i, j = (text or ""):find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

describe("a fleet that runs unattended", function()
  local dash, agents, recorded

  before_each(function()
    dash = cluster.start_dashboard { "--port", "0", "--mode", "super-study" }
    agents, recorded = {}, {}
  end)

  after_each(function()
    for _, a in ipairs(agents) do cluster.stop(a.proc) end
    cluster.stop(dash.proc)
    cluster.kill_recorded(recorded)
  end)

  -- An agent of its own machine: machine id 10.0.0.<n>, hostname
  -- fleet-vm-<n>, its own work dir unless one is given (a restart).
  local function start_agent(n, extra, work)
    work = work or cluster.temp_dir("fleet")
    local env = { GOLIAT_MACHINE_ID = "10.0.0." .. n,
      GOLIAT_HOSTNAME = "fleet-vm-" .. n, GOLIAT_CLAIM_SETTLE = "1" }
    for k, v in pairs(extra or {}) do env[k] = v end
    local a = cluster.start_agent(cluster.agent_env(dash.url, work, env), work)
    a.machine = env.GOLIAT_MACHINE_ID
    agents[#agents + 1] = a
    recorded[#recorded + 1] = a.proc.pid
    return a
  end

  local function log_of(a) return fs.read(a.log) or "" end

  local function create(name, configs)
    return cluster.post_json(dash.url .. "/dev/super-studies",
      { name = name, assignments = configs })
  end

  -- The super study `name` as the dashboard stores it, and its first
  -- assignment.
  local function stored(name)
    for _, st in ipairs(cluster.events(dash).super_studies or {}) do
      if st.name == name then return st, st.assignments[1] end
    end
  end

  local function completed(name, limit)
    return cluster.wait_until(function()
      local _, a = stored(name)
      return a and a.status == "COMPLETED"
    end, limit or 60, 0.25)
  end

  -- The run's pid, once the stand-in has written it to pid_file.
  local function study_pid(pid_file)
    local pid = cluster.wait_until(function()
      return tonumber(fs.read(pid_file) or "")
    end, 30)
    assert(pid, "the study did not start")
    recorded[#recorded + 1] = pid
    return pid
  end

  -- After the agent's report it reads the assignment back and logs what
  -- the dashboard shows: nothing is sent for that work after this line.
  local function read_back(a)
    return cluster.wait_until(function()
      return log_of(a):find("the dashboard shows it", 1, true)
    end, 30)
  end

  local function worker_named(ev, id)
    for _, w in ipairs(ev.workers) do
      if w.id == id then return w end
    end
  end

  it("a worker reset while its study runs: the ownership check stops the " ..
    "study, that run is never reported, and the work (PENDING again) is " ..
    "taken and reported once", function()
      local work = cluster.temp_dir("fleet")
      local pid_file = fs.join(work, "study.pid")
      local starts, runs = fs.join(work, "starts.txt"), fs.join(work, "runs.txt")
      -- long enough that the first run cannot end before two ownership
      -- checks (1 s apart) have seen the reset
      create("reset", { { duration_s = 8, steps = 4, pid_file = pid_file,
        starts_file = starts, runs_file = runs } })
      local a = start_agent(1, { GOLIAT_OWNERSHIP_EVERY = "1" }, work)
      local first = study_pid(pid_file)
      cluster.post_json(dash.url .. "/dev/reset-worker", { machineId = a.machine })
      assert(cluster.wait_until(function() return not cluster.alive(first) end,
        30), "the study still runs after the reset:\n" .. log_of(a))
      local log = log_of(a)
      assert.matches("is no longer this worker's on the dashboard %(" ..
        "assignment %S+ %(index 0%) is PENDING%): stopping its study, " ..
        "reporting nothing", log)
      assert.matches("its study was stopped and is not reported; taking " ..
        "other work", log)
      -- the reset made it PENDING: the agent takes it again, and that run
      -- ends and is reported
      assert(completed("reset", 60), "not COMPLETED:\n" .. log_of(a))
      assert(read_back(a), "no read-back:\n" .. log_of(a))
      local reports = cluster.reports(dash)
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].type)
      assert.equals(0, reports[1].exit_code)
      -- two runs started, one ended: the stopped one sent nothing
      local started = lines(starts)
      assert.equals(2, #started)
      assert.equals(tostring(first), started[1]:match("(%d+)$"))
      assert.are_not.equal(started[1], started[2])
      assert.equals(1, #lines(runs))
      assert.matches(" 10%.0%.0%.1 0$", lines(runs)[1])
      -- claimed, reset, claimed again
      local ev = cluster.events(dash)
      assert.equals(2, #ev.claims)
      local by = {}
      for _, h in ipairs(ev.history) do by[#by + 1] = h.status end
      assert.same({ "RUNNING", "PENDING", "RUNNING", "COMPLETED" }, by)
    end)

  it("a restart while its study runs: SIGTERM ends the study and reports " ..
    "nothing, the state keeps it interrupted, the next agent runs it again " ..
    "without a claim and reports it once", function()
      local work = cluster.temp_dir("fleet")
      local pid_file = fs.join(work, "study.pid")
      local starts, runs = fs.join(work, "starts.txt"), fs.join(work, "runs.txt")
      create("restart", { { duration_s = 4, steps = 4, pid_file = pid_file,
        starts_file = starts, runs_file = runs } })
      local first = start_agent(1, nil, work)
      local pid = study_pid(pid_file)
      assert(first.proc:signal("SIGTERM"))
      assert(cluster.wait_until(function() return not first.proc:running() end,
        60), "the agent did not stop")
      local code, sig = first.proc:wait()
      assert.equals(0, code, "killed by " .. tostring(sig))
      -- (bounded: once ended, the study may wait a moment to be reaped)
      assert(cluster.wait_until(function() return not cluster.alive(pid) end,
        10), "the study outlived the agent")
      local log = log_of(first)
      assert.matches("SIGTERM: stopping", log)
      assert.matches("stopped by SIGTERM: not reported; the next start " ..
        "runs it again", log)
      assert.equals(0, #cluster.reports(dash))
      local state = cjson.decode((assert(fs.read(fs.join(work,
        "agent_state.json")))))
      assert.equals("SIGTERM", state.interrupted)
      assert.equals("restart", state.assignment.super_study_name)
      assert.is_nil(state.pid)
      local _, a = stored("restart")
      assert.equals("RUNNING", a.status) -- still this worker's
      assert.equals(0, #lines(runs))

      local second = start_agent(1, nil, work)
      assert(completed("restart", 60), "not COMPLETED:\n" .. log_of(second))
      assert(read_back(second), "no read-back:\n" .. log_of(second))
      assert.matches("its study was stopped with the agent %(SIGTERM%): " ..
        "running it again", log_of(second))
      local reports = cluster.reports(dash)
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].type)
      assert.equals(2, #lines(starts))
      assert.equals(1, #lines(runs))
      assert.equals(1, #cluster.events(dash).claims)
      assert.is_nil(fs.read(fs.join(work, "agent_state.json")))
    end)

  it("a failure followed by a success (GOLIAT_FAILURE_RETRIES): run again " ..
    "with the same config and no new claim, one report naming the attempts",
    function()
      local work = cluster.temp_dir("fleet")
      local runs = fs.join(work, "runs.txt")
      local st = create("transient", { { exit_codes = { 3, 0 },
        count_file = fs.join(work, "count"), duration_s = 0.3, steps = 1,
        runs_file = runs } })
      local id = st.assignments[1].id
      local a = start_agent(1, { GOLIAT_FAILURE_RETRIES = "1",
        GOLIAT_FAILURE_RETRY_DELAY = "1" }, work)
      assert(completed("transient", 60), "not COMPLETED:\n" .. log_of(a))
      assert(read_back(a), "no read-back:\n" .. log_of(a))
      local log = log_of(a)
      assert.matches("the study failed %(exit code 3%) on attempt 1: " ..
        "running it again in 1 s", log)
      local reports = cluster.reports(dash)
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].type)
      assert.equals(id, reports[1].assignment_id)
      assert.matches("on attempt 2 %(before it: exit code 3%)",
        reports[1].message)
      local codes = {}
      for _, l in ipairs(lines(runs)) do codes[#codes + 1] = l:match("(%d+)$") end
      assert.same({ "3", "0" }, codes)
      -- One claim. The stand-in says `finished` after the failed run too,
      -- as GOLIAT's window does, and on the deployed dashboard that would
      -- complete the assignment, so that the agent would claim it back
      -- before the rerun. With the gateway and its hook on (the default)
      -- the study's `finished` is held by the agent and never reaches the
      -- dashboard: the assignment stays RUNNING between the attempts, and
      -- nothing is claimed back.
      local ev = cluster.events(dash)
      assert.equals(1, #ev.claims)
      assert.equals(0, count(log, "claimed back"))
      local by = {}
      for _, h in ipairs(ev.history) do by[#by + 1] = h.status end
      assert.same({ "RUNNING", "COMPLETED" }, by)
      local _, stored_a = stored("transient")
      assert.equals("10.0.0.1", worker_named(ev, stored_a.workerId).ipAddress)
    end)

  it("a vanished VM's work: RUNNING under a worker the dashboard has not " ..
    "seen for GOLIAT_ABANDONED_AFTER is taken over, with a log line " ..
    "naming the worker", function()
      local work = cluster.temp_dir("fleet")
      local runs = fs.join(work, "runs.txt")
      local st = create("orphaned", { { duration_s = 0.3, steps = 1,
        runs_file = runs } })
      local id = st.assignments[1].id
      -- a VM that beat once, claimed, and is gone: it never beats again.
      -- The dashboard's --stale-after stays at its default (300 s): the
      -- row does not go stale during the test, so the assignment shows
      -- RUNNING under a live-looking worker whose lastSeen only ages,
      -- which is what a VM deleted a few minutes ago looks like.
      local gone = "203.0.113.50"
      cluster.post_json(dash.url .. "/api/heartbeat",
        { machineId = gone, hostname = "gone-vm" })
      local claim = cluster.post_json(dash.url .. "/api/assignments/" .. id ..
        "/claim", { machineId = gone })
      local gone_worker = claim.worker.id
      local a = start_agent(1, { GOLIAT_ABANDONED_AFTER = "3" }, work)
      assert(completed("orphaned", 60), "not taken over:\n" .. log_of(a))
      assert(read_back(a), "no read-back:\n" .. log_of(a))
      local log = log_of(a)
      assert.matches("assignment " .. id .. " was RUNNING under worker " ..
        gone_worker .. " %(203%.0%.113%.50%), which the dashboard last saw " ..
        "%d+ s ago: its VM is gone; taking it over", log)
      local ev = cluster.events(dash)
      assert.equals(2, #ev.claims)
      assert.equals(gone, ev.claims[1].machineId)
      assert.equals("10.0.0.1", ev.claims[2].machineId)
      -- not before the dashboard had not seen it for 3 s, by its own
      -- clock (the claim was the gone worker's last contact; its lastSeen
      -- is kept to the millisecond)
      assert.is_true(ev.claims[2].at - ev.claims[1].at > 2.999)
      local _, stored_a = stored("orphaned")
      assert.equals("10.0.0.1", worker_named(ev, stored_a.workerId).ipAddress)
      local reports = cluster.reports(dash)
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].type)
      assert.same({ id .. " 10.0.0.1 0" }, lines(runs))
    end)

  describe("a history over 64 MiB", function()
    -- 70 finished super studies of 200 assignments, each listed with a
    -- base config of 1 MB: GET /api/super-studies is 70.9 MB (67.6 MiB),
    -- over the default GOLIAT_LOOKUP_MAX_BYTES (64M). (A real history
    -- reaches that with about 2900 super studies of 200 assignments: the
    -- size is what matters to the agent, not what makes it up; this one
    -- the development dashboard makes in about 0.5 s and serves in about
    -- 0.5 s, at a peak of about 250 MB.)
    local function make_history()
      local made = cluster.post_json(dash.url .. "/dev/history", { studies = 70,
        assignments = 200, base_config_bytes = 1000000 })
      assert.is_true(made.list_bytes > 64 * 1024 * 1024, made.list_bytes)
    end

    -- (the probe of protocol detection asks for one name, and a whole
    -- list that cannot be read does not stop the named lookups)
    it("an agent with GOLIAT_SUPER_STUDY looks its study up by name and " ..
      "runs it, whatever the size of the whole list", function()
        make_history()
        local work = cluster.temp_dir("fleet")
        local runs = fs.join(work, "runs.txt")
        create("now", { { duration_s = 0.3, steps = 1, runs_file = runs } })
        local a = start_agent(1, { GOLIAT_SUPER_STUDY = "now" }, work)
        assert(completed("now", 60), "not run:\n" .. log_of(a))
        assert(read_back(a), "no read-back:\n" .. log_of(a))
        assert.equals(1, #lines(runs))
        local reports = cluster.reports(dash)
        assert.equals(1, #reports)
        assert.equals("finished", reports[1].type)
        assert.is_true(count(log_of(a), "super-study poll failed") == 0)
      end)

    it("an agent without GOLIAT_SUPER_STUDY cannot read the list: it " ..
      "keeps beating, logs the reason once, shows it in --status, and " ..
      "claims nothing", function()
        make_history()
        create("now", { { duration_s = 0.3, steps = 1 } })
        -- the protocol detected (its probe reads the list), and given
        -- (the poll reads it)
        local detect = start_agent(2)
        local given = start_agent(3, { GOLIAT_PROTOCOL = "super-study" })
        local function beats(a)
          local n = 0
          for _, b in ipairs(cluster.events(dash).heartbeats) do
            if b.machineId == a.machine then n = n + 1 end
          end
          return n
        end
        local function list_reads()
          local n = 0
          for _, r in ipairs(cluster.events(dash).requests) do
            if r.method == "GET" and r.path == "/api/super-studies" then
              n = n + 1
            end
          end
          return n
        end
        local failed = "super-study poll failed: response body larger " ..
          "than 67108864 bytes (retrying with backoff)"
        for _, a in ipairs({ detect, given }) do
          assert(cluster.wait_until(function()
            return log_of(a):find(failed, 1, true)
          end, 60), "no failure logged:\n" .. log_of(a))
        end
        -- several reads later (three each), and beats all along
        local seen = { beats(detect), beats(given) }
        -- (each /dev/events is 3.5 MB here: asked every half second)
        assert(cluster.wait_until(function() return list_reads() >= 6 end,
          60, 0.5), "the list was not read again")
        assert(cluster.wait_until(function()
          return beats(detect) >= seen[1] + 4 and beats(given) >= seen[2] + 4
        end, 30, 0.5), "the heartbeat stopped")
        for _, a in ipairs({ detect, given }) do
          assert.is_true(a.proc:running(), "the agent ended:\n" .. log_of(a))
          -- one warning for the reason, not one per poll
          assert.equals(1, count(log_of(a), failed), log_of(a))
          local status = cjson.decode((assert(fs.read(fs.join(a.dir,
            "agent_status.json")))))
          assert.same({ step = "super-study poll",
            message = "response body larger than 67108864 bytes" },
            { step = status.last_error.step,
              message = status.last_error.message })
          assert.is_true(status.heartbeat.ok)
        end
        assert.matches("dashboard protocol: super%-study %(GOLIAT_PROTOCOL%)",
          log_of(given))
        assert.equals(0, #cluster.events(dash).claims)
        local _, now = stored("now")
        assert.equals("PENDING", now.status)
      end)
  end)
end)
