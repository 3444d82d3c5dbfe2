-- The planned API (PROTOCOL.md section 1): the dashboard hands out work on
-- `GET /api/assignment`, and the split config is downloaded from the
-- assignment's `config_url`. Handing out is taking: an assignment received
-- is ours, and the agent must report it whatever happens.
--
-- Every protocol module has the same shape (see "Step 2" in agent.lua):
--   probe(agent)        -> "yes", why[, work] | "no", why | nil, err, retry_after
--   new(agent)          -> an object with:
--     :find_work()      -> work | false[, note] | nil, err, retry_after, foreign
--     :take(work)       -> true | false, why | nil, err, keep_state
--     :prepare(work)    -> path of the config file | nil, err
--     :ownership(work, ran)  (optional) after a restart: is work taken
--                       before it still ours? -> true | false | nil, err
--                       (ran: a run of it has ended, and may have said
--                       `finished`)
--   and, where the dashboard can show an outcome that is not the true one
--   (GOLIAT's own window completes work whatever the run did):
--     :before_rerun(work) (optional) -> true | false, why | nil, err
--     :still_ours(work)   (optional) while its study runs
--                         -> true | false, why | nil, err
--     :settle(work, ok)   (optional) before the report -> true | nil, err
--     :confirm(work, ok)  (optional) after it -> true | false | nil, err
local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"

local M = { name = "assignment" }
M.__index = M

-- A clean copy {id, split_index, config_url, ...} of the raw assignment, or
-- nil and why it is not valid.
function M.validate(a)
  if type(a) ~= "table" then
    return nil, "assignment is not a JSON object"
  end
  if type(a.id) ~= "string" or a.id == "" then
    return nil, "assignment has no valid 'id'"
  end
  local index = math.type(a.split_index) and math.tointeger(a.split_index)
  if not index or index < 0 then
    return nil, "'split_index' is not a non-negative integer"
  end
  local url = a.config_url
  if type(url) ~= "string" or not settings_lib.is_http_url(url) then
    return nil, "'config_url' is not an http(s) URL"
  end
  return {
    protocol = M.name,
    id = a.id,
    split_index = index,
    config_url = url,
    super_study_id = type(a.super_study_id) == "string"
      and a.super_study_id or nil,
  }
end

-- finding_takes: work that find_work returns is ours already (and must be
-- reported even when the agent is stopping).
function M.new(agent)
  return setmetatable({ agent = agent, finding_takes = true }, M)
end

-- One poll. An invalid assignment comes back as {invalid = why, id = ...}
-- so that the agent reports it instead of dropping it. The request is made
-- once per protocol instance (self), when there is one.
local function poll(agent, self)
  local opts = self and self.poll_req
  if not opts then
    opts = agent:request_options("GET", "/api/assignment?machineId=" ..
      settings_lib.url_encode(agent.s.machine_id))
    if self then self.poll_req = opts end
  end
  local reply, err, retry_after, res = agent:send(opts)
  if not reply then
    return nil, err, retry_after, res and res.status == 404
  end
  if res.body:match("^%s*%[") then
    return nil, "reply is a JSON array, not an object"
  end
  if reply.assigned ~= true then
    return false
  end
  local work, why = M.validate(reply.assignment)
  if not work then
    local raw = reply.assignment
    local id = type(raw) == "table" and type(raw.id) == "string" and raw.id
    return { invalid = "invalid assignment: " .. why, id = id or nil }
  end
  return work
end

-- The dashboard speaks this API when the poll answers with a JSON object.
-- The poll may hand out work: it is passed on, never dropped.
function M.probe(agent)
  local work, err, retry_after, foreign = poll(agent)
  if work ~= nil then
    return "yes", "GET /api/assignment answered", work
  end
  if foreign then
    return "no", "GET /api/assignment answered HTTP 404"
  end
  return nil, err, retry_after
end

function M:find_work()
  return poll(self.agent, self)
end

-- Handing out was taking.
function M.take()
  return true
end

-- One download attempt; the file appears only once it is complete JSON.
local function download_once(agent, work, path)
  local h = agent.host
  local res, err = h.http.request {
    url = work.config_url,
    timeout = agent.s.download_timeout,
    max_size = agent.s.max_config_bytes,
    cainfo = agent.s.ca_bundle,
  }
  if not res then return nil, err end
  if res.status ~= 200 then return nil, "HTTP " .. res.status end
  if type(cjson.decode(res.body)) ~= "table" then
    -- an HTML page is a proxy's or portal's error: worth another try
    if (res.headers["content-type"] or ""):find("html", 1, true) or
        res.body:match("^%s*<") then
      return nil, "the config download got an HTML page, not JSON"
    end
    -- anything else was delivered whole: asking again gives the same bytes
    return nil, "config is not a JSON object or array", "permanent"
  end
  return h.fs.write_atomic(path, res.body)
end

-- Downloads the config to <project>/configs/assigned_config_<split>.json,
-- retrying with backoff for download_retry_for seconds: the dashboard will
-- not hand this assignment out again.
function M:prepare(work)
  local agent = self.agent
  local path = agent:config_path(string.format("assigned_config_%d.json",
    work.split_index))
  local clock = agent.host.time
  local give_up_at = clock.monotonic() + agent.s.download_retry_for
  agent.log.info("assignment %s (split %d): downloading config", work.id,
    work.split_index)
  while true do
    -- the download runs beside, so that a stop does not wait for it
    local done
    agent.host.task.spawn("config download", function()
      done = table.pack(pcall(download_once, agent, work, path))
    end)
    while not done and not agent.stopping do clock.sleep(0.1) end
    if not done then
      return nil, "agent stopped by " .. agent.stopping ..
        " during the config download"
    end
    if not done[1] then error(done[2], 0) end
    local ok, err, permanent = done[2], done[3], done[4]
    if ok then
      agent:note_success("config download")
      return path
    end
    local n = agent:note_failure("config download", err)
    local delay = agent:backoff(n)
    if permanent == "permanent" or agent.stopping or
        clock.monotonic() + delay > give_up_at then
      return nil, string.format("config download failed %d time(s): %s",
        n, err)
    end
    clock.sleep(delay)
  end
end

return M
