-- Shared pieces of the policy specs: a scripted dashboard on the fake host,
-- a fake machine with the agent's usual environment, and views of what the
-- agent did.
local agent = require "agent"
local fake_host = require "support.fake_host"
local cjson = require "cjson"
local assert = require "luassert"

local M = {}

M.DASH = "http://dash.test"
M.BLOB = "http://blob.test"
M.TOKEN = "s3cret-token-value"
local DASH, BLOB = M.DASH, M.BLOB

function M.json(status, value, headers)
  return { status = status, headers = headers or {},
    body = cjson.encode(value) }
end

-- A scripted dashboard: `queue` holds assignment objects handed out in
-- order; `configs` maps a config URL to its body (or a function(req)).
function M.dashboard(f, opts)
  opts = opts or {}
  local queue = opts.queue or {}
  local configs = opts.configs or {}
  f.http_handler = function(req)
    local path = req.url:sub(#DASH + 1)
    if req.url:sub(1, #BLOB) == BLOB then
      local c = configs[req.url]
      if type(c) == "function" then return c(req) end
      if c then return { status = 200, body = c } end
      return M.json(404, { error = "missing" })
    end
    if opts.down_until and f.now < opts.down_until then
      return nil, "connection refused", "connect"
    end
    if opts.override then
      local res, err, code = opts.override(req, path)
      if res ~= nil or err ~= nil then return res, err, code end
    end
    if path == "/api/heartbeat" then
      return M.json(200, { success = true, timestamp = "now" })
    elseif path:match("^/api/assignment%?") then
      local a = table.remove(queue, 1)
      if a == nil then return M.json(200, { assigned = false }) end
      return M.json(200, { assigned = true, assignment = a })
    elseif path == "/api/gui-update" then
      return M.json(200, { success = true })
    end
    return M.json(404, { error = "not found" })
  end
end

function M.new_fake(env)
  local e = {
    GOLIAT_MONITORING_URL = DASH,
    GOLIAT_WORK_DIR = "/work/agent",
    -- a failure is reported at once unless a spec asks for retries
    GOLIAT_FAILURE_RETRIES = "0",
  }
  for k, v in pairs(env or {}) do e[k] = v end
  return fake_host.new { env = e }
end

-- new_fake without the public-IP lookup: the machine id is the local
-- address and the request log holds dashboard calls only.
function M.offline_fake(env)
  local e = { GOLIAT_PUBLIC_IP_URL = "" }
  for k, v in pairs(env or {}) do e[k] = v end
  return M.new_fake(e)
end

function M.assignment(over)
  local a = { id = "a-1", super_study_id = "s-1", split_index = 3,
    config_url = BLOB .. "/c3.json", created_at = "2026-11-28T00:00:00Z" }
  for k, v in pairs(over or {}) do a[k] = v end
  return a
end

function M.start(f)
  f:start(function(host) agent.main(host) end)
end

-- Start the agent for a second with io.stderr captured (a refused start
-- writes its reason there, not in the log); returns what it wrote.
function M.start_refused(f)
  local old, written = io.stderr, {}
  io.stderr = { write = function(_, ...) -- luacheck: ignore
    for _, piece in ipairs({ ... }) do written[#written + 1] = tostring(piece) end
  end }
  local ok, err = pcall(function()
    M.start(f)
    f:run_for(1)
  end)
  io.stderr = old -- luacheck: ignore
  assert(ok, err)
  return table.concat(written)
end

-- Files written other than the agent's own bookkeeping (outbox, state,
-- status, retention ledger), after checking that every write stayed inside the work directory.
function M.data_writes(f)
  local out = {}
  for _, path in ipairs(f.writes) do
    assert.equals("/work/agent/", path:sub(1, 12), "write outside: " .. path)
    if not path:match("/outbox/") and not path:match("agent_state%.json$")
        and not path:match("agent_status%.json$")
        and not path:match("/retention%.json$")
        and not path:match("/%.goliat%-write%-test$") then
      table.insert(out, path)
    end
  end
  return out
end

-- The study's own command line: what follows the wrapper and its exit file.
function M.study_argv(opts)
  local exit_file = fake_host.exit_file(opts.argv)
  for i, v in ipairs(opts.argv) do
    if i > 2 and v == exit_file then return { table.unpack(opts.argv, i + 1) } end
  end
end

function M.poll_times(f)
  local times = {}
  for _, r in ipairs(f:requests_to("/api/assignment%?")) do
    table.insert(times, r.at)
  end
  return times
end

return M
