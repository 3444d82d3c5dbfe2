-- Soak test: the real agent (scripts/agent.lua) against a misbehaving
-- dashboard for SECONDS, watching the agent's memory.
--   goliat-host tests/soak.lua SECONDS WORK_DIR      (from the repo root)
-- tests/soak.sh runs it (with a temporary WORK_DIR). Settings from the
-- environment:
--   SOAK_VALID       share of replies that are valid (default 0.9); the
--                    agent backs off after failures, so the lower, the
--                    fewer requests per second
--   SOAK_DELAYED     share of replies delayed by 0-50 ms (default 0.3)
--   SOAK_WARMUP      requests before the first memory sample (default 2000;
--                    taken at a third of the run at the latest)
--   SOAK_MAX_GROWTH  largest RssAnon growth allowed from that sample to the
--                    end, kB (default 2048)
--   SOAK_SEED        random seed (default: time)
--
-- The dashboard is served here (host.http.serve on 127.0.0.1): each reply
-- to /api/heartbeat, /api/assignment and /api/gui-update is either valid or
-- one of the failures in BAD below. The agent runs as a child with 10 ms
-- heartbeat and poll intervals and log level warn. Exits 1 when the agent
-- died, stopped badly, had a loop restarted, hardly got through, or its
-- RssAnon grew by more than SOAK_MAX_GROWTH.
local host = require "host"
local cjson = require "cjson"

local seconds, work_dir = ...
seconds = tonumber(seconds)
assert(seconds and seconds > 0 and work_dir,
  "usage: goliat-host tests/soak.lua SECONDS WORK_DIR")

local function env_number(name, default)
  local v = tonumber(host.sys.getenv(name) or "")
  return v or default
end
local VALID = env_number("SOAK_VALID", 0.9)
local DELAYED = env_number("SOAK_DELAYED", 0.3)
local WARMUP = env_number("SOAK_WARMUP", 2000)
local MAX_GROWTH = env_number("SOAK_MAX_GROWTH", 2048)
local SEED = env_number("SOAK_SEED", math.floor(host.time.now() * 1000) % 2 ^ 31)
math.randomseed(SEED)

------------------------------------------------------------------------------
-- The misbehaving dashboard
------------------------------------------------------------------------------
local JSON = { ["Content-Type"] = "application/json" }

local function reply(status, body, headers)
  return { status = status, body = body, headers = headers or JSON }
end

local VALID_REPLY = {
  ["/api/heartbeat"] = cjson.encode({ ok = true }),
  ["/api/assignment"] = cjson.encode({ assigned = false }),
  ["/api/gui-update"] = cjson.encode({ ok = true }),
}

-- 2 MiB: over the agent's 1 MiB cap on replies (max_reply_bytes)
local BIG = '{"pad":"' .. string.rep("x", 2 * 1024 * 1024) .. '"}'

local BAD = {
  { "500 json", function() return reply(500, '{"error":"boom"}') end },
  { "500 empty", function() return reply(500, "", {}) end },
  { "503 retry-after 0", function()
    return reply(503, '{"error":"busy"}',
      { ["Content-Type"] = "application/json", ["Retry-After"] = "0" })
  end },
  { "200 html", function()
    return reply(200, "<html><body><h1>502 Bad Gateway</h1></body></html>",
      { ["Content-Type"] = "text/html" })
  end },
  { "200 truncated json", function() return reply(200, '{"assigned": tr') end },
  { "200 json array", function() return reply(200, "[1, 2, 3]") end },
  { "200 json null", function() return reply(200, "null") end },
  { "200 json number", function() return reply(200, "42") end },
  { "200 assignment null", function()
    return reply(200, '{"assigned": true, "assignment": null}')
  end },
  { "200 2 MiB body", function() return reply(200, BIG) end },
}

local count = { total = 0 }  -- path -> requests; "total"
local kinds = {}             -- reply kind -> count

local function handler(req)
  local valid = VALID_REPLY[req.path]
  if not valid then
    return reply(404, '{"error":"not found"}')
  end
  count.total = count.total + 1
  count[req.path] = (count[req.path] or 0) + 1
  if math.random() < DELAYED then
    host.time.sleep(math.random() * 0.05)
  end
  if math.random() < VALID then
    kinds.valid = (kinds.valid or 0) + 1
    return reply(200, valid)
  end
  local bad = BAD[math.random(#BAD)]
  kinds[bad[1]] = (kinds[bad[1]] or 0) + 1
  return bad[2]()
end

local server = assert(host.http.serve({ host = "127.0.0.1", port = 0 },
  handler))

------------------------------------------------------------------------------
-- The agent
------------------------------------------------------------------------------
local log_path = host.fs.join(work_dir, "agent.log")
local agent = assert(host.proc.spawn {
  argv = { assert(host.sys.exepath()), "scripts/agent.lua" },
  env = {
    GOLIAT_MONITORING_URL = "http://127.0.0.1:" .. server:port(),
    GOLIAT_MACHINE_ID = "soak-worker",
    GOLIAT_HEARTBEAT_INTERVAL = "0.01",
    GOLIAT_POLL_INTERVAL = "0.01",
    GOLIAT_WORK_DIR = work_dir,
    GOLIAT_STUDY_COMMAND = '["true"]',
    GOLIAT_LOG_LEVEL = "warn",
    no_proxy = "127.0.0.1", NO_PROXY = "127.0.0.1",
  },
  stdout = log_path,
  stderr = "stdout",
})

-- RssAnon and VmRSS of pid, kB (nil when it is gone)
local function memory(pid)
  local status = host.fs.read("/proc/" .. pid .. "/status")
  if not status then return nil end
  return tonumber(status:match("RssAnon:%s*(%d+)")),
    tonumber(status:match("VmRSS:%s*(%d+)"))
end

local start = host.time.monotonic()
local function elapsed() return host.time.monotonic() - start end

local function line(what, anon, rss)
  print(string.format("%-8s t=%6.1f s  requests %7d  heartbeat %6d  " ..
    "assignment %6d  gui-update %5d  RssAnon %6s kB  VmRSS %6s kB", what,
    elapsed(), count.total, count["/api/heartbeat"] or 0,
    count["/api/assignment"] or 0, count["/api/gui-update"] or 0,
    tostring(anon), tostring(rss)))
  io.stdout:flush()
end

print(string.format("soak: %g s, seed %d, %d%% valid replies, %d%% delayed, " ..
  "dashboard on port %d, agent pid %d", seconds, SEED, VALID * 100,
  DELAYED * 100, server:port(), agent.pid))

local warm_anon, warm_rss, warm_at, warm_requests
local next_report = seconds / 10
local died = false
while elapsed() < seconds do
  host.time.sleep(0.2)
  if not agent:running() then
    died = true
    break
  end
  if not warm_anon and (count.total >= WARMUP or elapsed() >= seconds / 3) then
    warm_anon, warm_rss = memory(agent.pid)
    warm_at, warm_requests = elapsed(), count.total
    line("warm-up", warm_anon, warm_rss)
  elseif elapsed() >= next_report then
    line("", memory(agent.pid))
  end
  if elapsed() >= next_report then
    next_report = next_report + seconds / 10
  end
end

local end_anon, end_rss = memory(agent.pid)
line("end", end_anon, end_rss)
local end_at, end_requests = elapsed(), count.total

-- SIGTERM: the agent stops cleanly with code 0 (it may first deliver a
-- report, for up to 20 s)
local code, signal = agent:terminate(40)
server:close()

------------------------------------------------------------------------------
-- Verdict
------------------------------------------------------------------------------
local log = host.fs.read(log_path) or ""
local levels = {}
for level in log:gmatch("%d%dZ (%a+)") do
  levels[level] = (levels[level] or 0) + 1
end
local restarts = select(2, log:gsub("loop stopped", ""))

local names = {}
for k in pairs(kinds) do names[#names + 1] = k end
table.sort(names)
print("replies:")
for _, k in ipairs(names) do
  print(string.format("  %-22s %7d", k, kinds[k]))
end
local rate = end_requests / end_at
print(string.format("requests: %d in %.1f s (%.1f/s): heartbeat %.1f/s, " ..
  "assignment poll %.1f/s, gui-update %.2f/s", end_requests, end_at, rate,
  (count["/api/heartbeat"] or 0) / end_at,
  (count["/api/assignment"] or 0) / end_at,
  (count["/api/gui-update"] or 0) / end_at))
print(string.format("agent log: %d warn, %d error lines, %d loop restarts; " ..
  "agent exit: code %s signal %s", levels.warn or 0, levels.error or 0,
  restarts, tostring(code), tostring(signal)))

local problems = {}
if died then
  problems[#problems + 1] = "the agent died during the run"
end
if code ~= 0 then
  problems[#problems + 1] = "the agent did not stop cleanly on SIGTERM"
end
if restarts > 0 then
  problems[#problems + 1] = "an agent loop raised an error and was restarted"
end
if (count["/api/heartbeat"] or 0) < 10 or (count["/api/assignment"] or 0) < 10
then
  problems[#problems + 1] = "fewer than 10 heartbeats or polls"
end
-- An AddressSanitizer build keeps freed memory in quarantine (up to 256 MB):
-- its RSS says nothing, LeakSanitizer checks the agent at its exit instead.
local asan = host.sys.getenv("ASAN_OPTIONS") ~= nil
if warm_anon and end_anon then
  local growth = end_anon - warm_anon
  print(string.format("RssAnon: %d kB after %d requests (t=%.0f s), %d kB " ..
    "at the end (t=%.0f s): %+d kB (bound %d kB); VmRSS %d -> %d kB",
    warm_anon, warm_requests, warm_at, end_anon, end_at, growth, MAX_GROWTH,
    warm_rss, end_rss))
  if asan then
    print("(AddressSanitizer build: RSS not checked)")
  elseif growth > MAX_GROWTH then
    problems[#problems + 1] = "RssAnon grew by more than the bound"
  end
elseif not died then
  problems[#problems + 1] = "no memory samples"
end

if #problems > 0 then
  for _, p in ipairs(problems) do print("FAIL: " .. p) end
  print("---- last lines of the agent log ----")
  local lines = {}
  for l in log:gmatch("[^\n]+") do lines[#lines + 1] = l end
  for i = math.max(1, #lines - 30), #lines do print(lines[i]) end
  os.exit(1)
end
print("ok")
os.exit(0)
