-- True outcomes on the deployed dashboard, whatever GOLIAT's own window
-- sends (PROTOCOL.md section 6): the development dashboard in super-study
-- mode, one agent, and the GOLIAT stand-in, which says `finished` after
-- every run as GOLIAT does. Each way the study may post (to
-- GOLIAT_MONITORING_URL, or to a dashboard URL fixed in its code, under
-- its own machine id) with the gateway and its hook on, the hook off and
-- the gateway off; each with a failure, out of memory then a success, and
-- out of memory on every run.
--
-- With GOLIAT_OUTCOMES_TABLE=<file> each case appends one line there: the
-- final stored status and the longest time a wrong COMPLETED showed (a
-- measurement for the notes, never asserted: no timing in tests).
local host = require "host"
local cluster = require "support.cluster"

local fs = host.fs

local lines = cluster.lines -- a file's lines

-- GOLIAT's own id, as its window finds it (not the agent's).
local GOLIAT_ID = "203.0.113.77"

-- The ways GOLIAT may post, and what the agent does about it. `fixed`:
-- the study posts to a URL of its own (`localhost` in place of
-- 127.0.0.1: another spelling of the dashboard, as GOLIAT's built-in one
-- is another URL than GOLIAT_MONITORING_URL), under GOLIAT_ID.
-- `held`: GOLIAT's finished never reaches the dashboard.
local MODES = {
  { name = "gateway and hook on, GOLIAT posting to its own URL",
    fixed = true, held = true },
  { name = "gateway and hook on, GOLIAT posting to GOLIAT_MONITORING_URL",
    held = true },
  { name = "hook off, GOLIAT posting to its own URL", fixed = true,
    env = { GOLIAT_GATEWAY_HOOK = "off" } },
  { name = "gateway off, GOLIAT posting to its own URL", fixed = true,
    env = { GOLIAT_GATEWAY = "off" } },
  { name = "gateway off, GOLIAT posting to GOLIAT_MONITORING_URL",
    env = { GOLIAT_GATEWAY = "off" } },
}

local OUTCOMES = {
  { name = "a failure (exit 3)", codes = { 3 }, ok = false },
  { name = "out of memory, then a success (42, 0)", codes = { 42, 0 },
    ok = true },
  { name = "out of memory on every run (42 x 4)", codes = { 42, 42, 42, 42 },
    ok = false },
}

-- The windows in which the assignment showed COMPLETED although the run
-- had not succeeded (or not yet): each COMPLETED in the dashboard's
-- history that a later change undid. Returns how many and the longest.
local function wrong_completions(history, id)
  local n, longest, since = 0, 0, nil
  for _, h in ipairs(history) do
    if h.assignmentId == id then
      if h.status == "COMPLETED" then
        since = h.at
      elseif since then
        n, longest = n + 1, math.max(longest, h.at - since)
        since = nil
      end
    end
  end
  return n, longest, since
end

describe("the dashboard ends up showing how each run really ended", function()
  local t = cluster.fixture("outcomes")
  before_each(function()
    t.dash = cluster.start_dashboard { "--port", "0", "--mode",
      "super-study" }
    t.work = cluster.temp_dir("outcomes")
    t.recorded = {}
  end)
  after_each(t.teardown)

  for _, mode in ipairs(MODES) do
    for _, outcome in ipairs(OUTCOMES) do
      it(mode.name .. ": " .. outcome.name, function()
        local dash, work = t.dash, t.work
        local fixed_url = "http://localhost:" .. dash.port
        local status_file = fs.join(work, "status.txt")
        local runs_file = fs.join(work, "runs.txt")
        local config = { exit_codes = outcome.codes,
          count_file = fs.join(work, "count"), duration_s = 0.3, steps = 2,
          status_file = status_file, probe_url = dash.url,
          runs_file = runs_file }
        local env = { GOLIAT_MACHINE_ID = "10.0.0.1",
          GOLIAT_HOSTNAME = "outcomes-vm", GOLIAT_CLAIM_SETTLE = "1" }
        if mode.fixed then
          config.dashboard_url, config.machine_id = fixed_url, GOLIAT_ID
          env.GOLIAT_GATEWAY_URLS = fixed_url .. "," .. dash.url
        end
        for k, v in pairs(mode.env or {}) do env[k] = v end
        local st = cluster.post_json(dash.url .. "/dev/super-studies",
          { name = "outcomes", assignments = { config } })
        local id = st.assignments[1].id
        t.agent = cluster.start_agent(cluster.agent_env(dash.url, work, env),
          work)
        local reports = assert(cluster.reports_at_least(dash, 1, 90),
          "no report: " .. tostring(fs.read(t.agent.log)))
        -- the agent reads the status back after its report, and says so
        assert(cluster.wait_until(function()
          return (fs.read(t.agent.log) or ""):find("the dashboard shows it",
            1, true)
        end, 30), "no read-back: " .. tostring(fs.read(t.agent.log)))
        local ev = cluster.events(dash)
        local log = fs.read(t.agent.log)

        -- one report, of the true outcome
        assert.equals(1, #cluster.reports(dash))
        assert.equals(outcome.ok and "finished" or "fatal_error",
          reports[1].type)
        assert.equals(#outcome.codes, #lines(runs_file))

        -- every run, the first and each rerun, started RUNNING
        local seen = lines(status_file)
        assert.equals(#outcome.codes, #seen)
        for i, s in ipairs(seen) do
          assert.equals("RUNNING", s, "run " .. i .. " started " .. s)
        end

        -- the final stored status
        local a, worker = ev.super_studies[1].assignments[1], nil
        for _, w in ipairs(ev.workers) do
          if w.id == a.workerId then worker = w end
        end
        assert.is_table(worker, "no worker holds the assignment")
        assert.equals("10.0.0.1", worker.ipAddress)
        if outcome.ok then
          assert.equals("COMPLETED", a.status)
        else
          assert.equals("RUNNING", a.status)
          assert.equals("ERROR", worker.status) -- shown FAILED
        end

        -- a wrong COMPLETED never stays: with the gateway holding GOLIAT's
        -- finished it never shows at all
        local n, longest, open = wrong_completions(ev.history, id)
        if not outcome.ok then
          assert.is_nil(open, "the failure ended COMPLETED")
        end
        if mode.held then
          assert.equals(0, n)
          assert.equals(0, select(2, log:gsub("claimed back", "")))
        else
          -- the study's window did complete it, and the agent put it back
          assert.is_true(n >= 1, "GOLIAT's finished did not reach the " ..
            "dashboard: this case tests nothing")
          assert.equals(n, select(2, log:gsub("claimed back", "")))
        end
        local table_file = host.sys.getenv("GOLIAT_OUTCOMES_TABLE")
        if table_file and table_file ~= "" then
          local f = assert(io.open(table_file, "a"))
          f:write(string.format("| %s | %s | %s%s | %d | %.2f s |\n",
            mode.name, outcome.name, a.status,
            a.status == "RUNNING" and " (worker " .. worker.status .. ")" or "",
            n, longest))
          f:close()
        end
      end)
    end
  end
end)
