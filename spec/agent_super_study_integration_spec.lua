-- Integration specs for super studies (PROTOCOL.md section 4), with real
-- processes on 127.0.0.1: the example dashboard in super-study mode, one or
-- more agents, and the GOLIAT stand-in (examples/goliat) as the study.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"

local fs = host.fs

local lines = cluster.lines -- a file's lines

local function count(text, pattern)
  return select(2, (text or ""):gsub(pattern, ""))
end

describe("super-study mode", function()
  local dash, dirs, agents

  before_each(function()
    dash = cluster.start_dashboard { "--port", "0", "--mode", "super-study" }
    dirs, agents = {}, {}
  end)

  after_each(function()
    for _, a in ipairs(agents) do cluster.stop(a.proc) end
    cluster.stop(dash.proc)
  end)

  local function work_dir()
    local d = cluster.temp_dir("super")
    dirs[#dirs + 1] = d
    return d
  end

  -- An agent of its own machine: own work dir, machine id and hostname.
  local function start_agent(n, extra, work)
    work = work or work_dir()
    local env = { GOLIAT_MACHINE_ID = "10.0.0." .. n,
      GOLIAT_HOSTNAME = "spec-vm-" .. n, GOLIAT_CLAIM_SETTLE = "1" }
    for k, v in pairs(extra or {}) do env[k] = v end
    local a = cluster.start_agent(cluster.agent_env(dash.url, work, env), work)
    a.machine = env.GOLIAT_MACHINE_ID
    agents[#agents + 1] = a
    return a
  end

  local function create(name, configs, as_string)
    return cluster.post_json(dash.url .. "/dev/super-studies",
      { name = name, assignments = configs, as_string = as_string })
  end

  -- The super study `name` as the dashboard stores it.
  local function stored(name)
    for _, st in ipairs(cluster.events(dash).super_studies or {}) do
      if st.name == name then return st end
    end
  end

  local function statuses(name)
    local out = {}
    for _, a in ipairs(stored(name).assignments) do
      out[math.tointeger(a.index) + 1] = a.status
    end
    return out
  end

  local function all_completed(name)
    return cluster.wait_until(function()
      for _, s in ipairs(statuses(name)) do
        if s ~= "COMPLETED" then return false end
      end
      return true
    end, 90, 0.25)
  end

  it("works a super study through: each assignment claimed, its config in " ..
    "<project>/configs/, run there, COMPLETED", function()
      local project = work_dir()
      local runs = fs.join(project, "runs.txt")
      local configs = {}
      for i = 1, 3 do
        configs[i] = { duration_s = 0.3, steps = 1, runs_file = runs, n = i }
      end
      create("sweep", configs, true) -- splitConfig as JSON strings
      local a = start_agent(1, { GOLIAT_PROJECT_DIR = project })
      assert(all_completed("sweep"), "not all COMPLETED: " ..
        table.concat(statuses("sweep"), " ") .. "\n" .. tostring(fs.read(a.log)))
      assert(cluster.reports_at_least(dash, 3, 30), "not all reported")
      assert.equals(3, #lines(runs))
      for i = 0, 2 do
        local text = fs.read(fs.join(project, "configs",
          "sweep_assignment_" .. i .. ".json"))
        assert.is_string(text)
        local cfg = cjson.decode(text)
        assert.equals(i + 1, cfg.n)
      end
      local log = fs.read(a.log)
      assert.matches("dashboard protocol: super%-study", log)
      assert.matches("in " .. project:gsub("%p", "%%%0"), log)
      local reports = cluster.reports(dash)
      assert.equals(3, #reports)
      for _, r in ipairs(reports) do assert.equals("finished", r.type) end
    end)

  it("writes the splitConfig exactly: empty arrays stay arrays, numbers " ..
    "keep their digits", function()
      local project = work_dir()
      -- written by hand: lua-cjson cannot even produce an empty array
      local body = '{"name": "exact", "assignments": [{"phantoms": [], ' ..
        '"freq": 0.1234567890123456, "nested": {"l": [[], {}]}, ' ..
        '"duration_s": 0.2, "steps": 1}]}'
      local res = host.http.request { url = dash.url .. "/dev/super-studies",
        method = "POST", body = body, timeout = 5,
        headers = { ["Content-Type"] = "application/json" } }
      assert.equals(200, res and res.status)
      start_agent(1, { GOLIAT_PROJECT_DIR = project })
      assert(all_completed("exact"), "not COMPLETED")
      local text = fs.read(fs.join(project, "configs",
        "exact_assignment_0.json"))
      assert.is_string(text)
      assert.matches('"phantoms":%[%]', text)
      assert.matches('"l":%[%[%],{}%]', text)
      assert.equals(0.1234567890123456,
        tonumber(text:match('"freq":([-%d.eE+]+)')))
    end)

  it("three agents started together run every assignment exactly once",
    function()
      local runs = fs.join(work_dir(), "runs.txt")
      local configs = {}
      for i = 1, 6 do
        configs[i] = { duration_s = 0.5, steps = 1, runs_file = runs }
      end
      create("race", configs)
      for n = 1, 3 do start_agent(n) end
      assert(all_completed("race"), "not all COMPLETED: " ..
        table.concat(statuses("race"), " "))
      local seen = {}
      for _, line in ipairs(lines(runs)) do
        local id = line:match("^(%S+)")
        assert.is_nil(seen[id], "assignment " .. id .. " ran twice")
        seen[id] = true
      end
      assert.equals(6, #lines(runs))
    end)

  it("after a failure takes no new work until the operator resets the " ..
    "worker, then resumes by itself", function()
      local work = work_dir()
      local counter = fs.join(work, "count")
      create("fragile", {
        { exit_codes = { 3, 0 }, count_file = counter, duration_s = 0.2,
          steps = 1, post_finished = false },
        { duration_s = 0.2, steps = 1 },
      })
      local a = start_agent(1, nil, work)
      local first = assert(cluster.reports_at_least(dash, 1, 60), "no report")
      assert.equals("fatal_error", first[1].type)
      assert(cluster.wait_until(function()
        return count(fs.read(a.log), "still RUNNING under this worker") > 0
      end, 30), "does not say what it waits for")
      host.time.sleep(3) -- many polls: still waiting, and said once
      assert.same({ "RUNNING", "PENDING" }, statuses("fragile"))
      assert.equals(1, #cluster.events(dash).claims)
      assert.equals(1, count(fs.read(a.log), "still RUNNING under this worker"))
      cluster.post_json(dash.url .. "/dev/reset-worker", { machineId = a.machine })
      assert(all_completed("fragile"), "not resumed: " ..
        table.concat(statuses("fragile"), " ") .. "\n" .. fs.read(a.log))
      assert.matches("worker was reset on the dashboard", fs.read(a.log))
    end)

  it("reruns a study that runs out of memory: 42, 42, 0, one report", function()
    local work = work_dir()
    local runs = fs.join(work, "runs.txt")
    create("oom", { { exit_codes = { 42, 42, 0 }, count_file = fs.join(work,
      "count"), runs_file = runs, duration_s = 0.2, steps = 1 } })
    start_agent(1, nil, work)
    assert(all_completed("oom"), "not COMPLETED")
    local reports = assert(cluster.reports_at_least(dash, 1, 30), "no report")
    assert.equals(1, #reports)
    assert.equals("finished", reports[1].type)
    assert.matches("attempt 3 of 4", reports[1].message)
    local codes = {}
    for _, l in ipairs(lines(runs)) do codes[#codes + 1] = l:match("(%d+)$") end
    assert.same({ "42", "42", "0" }, codes)
    assert.equals(1, #cluster.events(dash).claims)
  end)

  it("an agent killed with SIGKILL during a study: the next one takes it " ..
    "back, and it is COMPLETED once", function()
      local work = work_dir()
      local pid_file = fs.join(work, "study.pid")
      local runs = fs.join(work, "runs.txt")
      create("survive", { { duration_s = 4, steps = 2, pid_file = pid_file,
        runs_file = runs } })
      local first = start_agent(1, nil, work)
      local pid = cluster.wait_until(function()
        return tonumber(fs.read(pid_file) or "")
      end, 30)
      assert(pid, "the study did not start")
      assert(first.proc:signal("SIGKILL"))
      first.proc:wait()
      assert.is_true(cluster.alive(pid), "the study died with the agent")
      local second = start_agent(1, nil, work)
      assert(all_completed("survive"), "not COMPLETED: " ..
        tostring(fs.read(second.log)))
      assert.matches("taking back the running study", fs.read(second.log))
      assert.equals(1, #lines(runs))
      assert.equals(1, #cluster.events(dash).claims)
      local reports = assert(cluster.reports_at_least(dash, 1, 30), "no report")
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].type)
    end)
end)
