-- Real processes for integration specs: the example dashboard and the agent,
-- each a goliat-host child on 127.0.0.1, plus the GOLIAT stand-in that the
-- agent runs with `python -m goliat study`.
local host = require "host"
local cjson = require "cjson"
local H = require "support.helpers"

local M = {}

M.goliat_host = H.host_binary()
M.source_dir = host.sys.getenv("GOLIAT_SOURCE_DIR") or assert(host.sys.cwd())
M.temp_dir = H.tmpdir
M.alive = H.alive

-- Poll pred() every `step` seconds for at most `limit` seconds; returns
-- pred()'s first true value.
function M.wait_until(pred, limit, step)
  local deadline = host.time.monotonic() + (limit or 30)
  while host.time.monotonic() < deadline do
    local v = pred()
    if v then return v end
    host.time.sleep(step or 0.1)
  end
  return pred()
end

-- The lines of a file (none when it is missing).
function M.lines(path)
  local out = {}
  for line in (host.fs.read(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = line
  end
  return out
end

-- Start the example dashboard; returns { proc, port, url, dir }.
function M.start_dashboard(args)
  local dir = M.temp_dir("dash")
  local port_file = host.fs.join(dir, "port")
  local argv = { M.goliat_host, host.fs.join(M.source_dir,
    "examples/dashboard.lua"), "--port-file", port_file }
  for _, a in ipairs(args or { "--port", "0" }) do argv[#argv + 1] = a end
  local p = assert(host.proc.spawn { argv = argv,
    stdout = host.fs.join(dir, "dashboard.log"), stderr = "stdout" })
  local port = M.wait_until(function()
    local text = host.fs.read(port_file)
    return text and tonumber(text)
  end, 20)
  assert(port, "the dashboard did not start: " ..
    tostring(host.fs.read(host.fs.join(dir, "dashboard.log"))))
  return { proc = p, port = port, dir = dir,
    url = "http://127.0.0.1:" .. port }
end

-- Environment for an agent talking to url, working in work_dir.
function M.agent_env(url, work_dir, extra)
  local env = {
    GOLIAT_MONITORING_URL = url,
    GOLIAT_MACHINE_ID = "spec-worker",
    GOLIAT_PUBLIC_IP_URL = "", -- never a lookup beyond loopback
    GOLIAT_WORK_DIR = work_dir,
    GOLIAT_HEARTBEAT_INTERVAL = "0.5",
    GOLIAT_POLL_INTERVAL = "0.5",
    PYTHONPATH = host.fs.join(M.source_dir, "examples"),
    -- a failure is reported at once unless a spec asks for retries
    GOLIAT_FAILURE_RETRIES = "0",
    -- whatever the test machine's disk has free (the default is 20 GB)
    GOLIAT_MIN_FREE_GB = "0.01",
  }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

-- Start the agent; returns { proc, dir, log }.
function M.start_agent(env, work_dir)
  local log = host.fs.join(work_dir, "agent.log")
  local p = assert(host.proc.spawn {
    argv = { M.goliat_host, host.fs.join(M.source_dir, "scripts/agent.lua") },
    env = env, stdout = log, stderr = "stdout" })
  return { proc = p, dir = work_dir, log = log }
end

function M.get_json(url)
  local res = host.http.request { url = url, timeout = 5 }
  if not res or res.status ~= 200 then return nil end
  return cjson.decode(res.body)
end

function M.post_json(url, value)
  local res, err = host.http.request { url = url, method = "POST",
    body = cjson.encode(value), timeout = 5,
    headers = { ["Content-Type"] = "application/json" } }
  assert(res and res.status == 200, "POST " .. url .. ": " ..
    tostring(err or (res and res.status)))
  return cjson.decode(res.body)
end

function M.events(dash)
  return M.get_json(dash.url .. "/dev/events")
end

-- Queue an assignment on the example dashboard (POST /dev/assignments).
function M.queue(dash, config, extra)
  local spec = { config = config }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return M.post_json(dash.url .. "/dev/assignments", spec)
end

-- Wait (at most limit seconds) for n agent reports; returns them or false.
function M.reports_at_least(dash, n, limit)
  return M.wait_until(function()
    local r = M.reports(dash)
    return #r >= n and r
  end, limit or 60)
end

-- The agent's own reports (gui updates carrying an assignment_id).
function M.reports(dash)
  local ev = M.events(dash)
  local out = {}
  for _, u in ipairs(ev and ev.gui_updates or {}) do
    if u.message.assignment_id ~= nil then table.insert(out, u.message) end
  end
  return out
end

-- Kill the processes whose pids a spec recorded itself (and only while
-- they still run): what a failing spec would otherwise leave behind.
function M.kill_recorded(pids)
  for _, pid in ipairs(pids) do
    if pid > 1 and M.alive(pid) then
      H.run({ argv = { "kill", "-KILL", tostring(pid) }, stderr = "null" })
    end
  end
end

function M.stop(proc)
  if proc and proc:running() then proc:terminate(2) end
end

-- The set-up of an integration test: t.setup() starts a development
-- dashboard (t.dash) and makes a work dir (t.work) and a list of pids to
-- kill afterwards (t.recorded); t.teardown() stops the agent the test put
-- in t.agent and the dashboard, and kills the recorded pids. In a describe:
--   local t = cluster.fixture("work")
--   before_each(t.setup); after_each(t.teardown)
function M.fixture(work_name)
  local t = {}
  function t.setup()
    t.dash = M.start_dashboard()
    t.work = M.temp_dir(work_name)
    t.recorded = {}
  end
  function t.teardown()
    if t.agent then M.stop(t.agent.proc) end
    M.stop(t.dash.proc)
    M.kill_recorded(t.recorded)
    t.agent = nil
  end
  return t
end

return M
