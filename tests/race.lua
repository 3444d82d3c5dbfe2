-- Measurement (not a test): agents started together on one super study of
-- the development dashboard (super-study mode), counting study runs
-- against assignments. Every assignment must run exactly once.
--
--   build/goliat-host tests/race.lua [REPEATS [AGENTS [ASSIGNMENTS [SETTLE]]]]
--
-- Defaults: 5 repeats of 3 agents and 6 assignments, GOLIAT_CLAIM_SETTLE=3
-- (the agent's default). Prints one line per repeat and a JSON summary;
-- exits 1 when an assignment ran twice or never.
local host = require "host"
local cjson = require "cjson"

local repeats = tonumber(arg[1]) or 5
local n_agents = tonumber(arg[2]) or 3
local n_work = tonumber(arg[3]) or 6
local settle = arg[4] or "3"

local fs = host.fs
local exe = host.sys.exepath()
local root = assert(host.sys.cwd())

local function tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(fs.mkdir_p(name))
  return name
end

local function wait_until(pred, limit)
  local deadline = host.time.monotonic() + limit
  while host.time.monotonic() < deadline do
    local v = pred()
    if v then return v end
    host.time.sleep(0.2)
  end
  return pred()
end

local function request(url, body)
  local res = host.http.request { url = url, method = body and "POST" or "GET",
    body = body and cjson.encode(body), timeout = 5,
    headers = { ["Content-Type"] = "application/json" } }
  assert(res and res.status == 200, "request failed: " .. url)
  return cjson.decode(res.body)
end

local function one_round(round)
  local dir = tmpdir()
  local port_file = fs.join(dir, "port")
  local procs = {}
  procs[1] = assert(host.proc.spawn { argv = { exe, fs.join(root,
    "examples/dashboard.lua"), "--port", "0", "--port-file", port_file,
    "--mode", "super-study" }, stdout = fs.join(dir, "dashboard.log"),
    stderr = "stdout" })
  local port = wait_until(function() return tonumber(fs.read(port_file) or "") end, 20)
  local url = "http://127.0.0.1:" .. assert(port, "no dashboard")
  local runs = fs.join(dir, "runs.txt")
  local configs = {}
  for i = 1, n_work do
    configs[i] = { duration_s = 0.5, steps = 1, runs_file = runs }
  end
  request(url .. "/dev/super-studies", { name = "race", assignments = configs })
  local t0 = host.time.monotonic()
  for i = 1, n_agents do
    local work = fs.join(dir, "agent" .. i)
    assert(fs.mkdir_p(work))
    procs[#procs + 1] = assert(host.proc.spawn {
      argv = { exe, fs.join(root, "scripts/agent.lua") },
      env = { GOLIAT_MONITORING_URL = url, GOLIAT_WORK_DIR = work,
        GOLIAT_MACHINE_ID = "10.9.0." .. i, GOLIAT_HOSTNAME = "race-vm-" .. i,
        GOLIAT_PUBLIC_IP_URL = "", GOLIAT_CLAIM_SETTLE = settle,
        GOLIAT_HEARTBEAT_INTERVAL = "1", GOLIAT_POLL_INTERVAL = "1",
        PYTHONPATH = fs.join(root, "examples") },
      stdout = fs.join(work, "agent.log"), stderr = "stdout" })
  end
  local done = wait_until(function()
    local ev = request(url .. "/dev/events")
    for _, st in ipairs(ev.super_studies or {}) do
      for _, a in ipairs(st.assignments) do
        if a.status ~= "COMPLETED" then return false end
      end
    end
    return ev
  end, 120)
  local elapsed = host.time.monotonic() - t0
  host.time.sleep(2) -- a late second run would show up here
  local per_id, total = {}, 0
  for line in (fs.read(runs) or ""):gmatch("[^\n]+") do
    local id = line:match("^(%S+)")
    per_id[id] = (per_id[id] or 0) + 1
    total = total + 1
  end
  local twice, ran = 0, 0
  for _, n in pairs(per_id) do
    ran = ran + 1
    if n > 1 then twice = twice + 1 end
  end
  local claims = done and #done.claims or -1
  for i = #procs, 1, -1 do
    if procs[i]:running() then procs[i]:terminate(5) end
  end
  os.execute("rm -rf '" .. dir .. "'")
  print(string.format("round %d: %d study runs for %d assignments (%d ran " ..
    "twice, %d never), %d claims, all COMPLETED after %.1f s%s", round, total,
    n_work, twice, n_work - ran, claims, elapsed, done and "" or " (NOT all COMPLETED)"))
  return { runs = total, assignments = n_work, twice = twice,
    never = n_work - ran, claims = claims, seconds = elapsed,
    completed = done and true or false }
end

local rounds, ok = {}, true
for r = 1, repeats do
  local res = one_round(r)
  rounds[#rounds + 1] = res
  ok = ok and res.completed and res.twice == 0 and res.never == 0 and
    res.runs == res.assignments
end
print(cjson.encode { agents = n_agents, assignments = n_work,
  claim_settle = tonumber(settle), rounds = rounds, exactly_once = ok })
os.exit(ok and 0 or 1)
