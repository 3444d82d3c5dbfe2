-- A scripted stand-in for the deployed GOLIAT dashboard (PROTOCOL.md
-- section 4) on the fake host, for the policy specs: super studies whose
-- assignments are claimed, with the awkward parts that the agent must cope
-- with (claims never refused, fatal_error leaving the assignment RUNNING,
-- finished completing any RUNNING assignment of the worker, the reset,
-- worker rows shared by hostname, 404 HTML on /api/assignment).
local cjson = require "cjson"
local P = require "support.policy"

local M = {}

local D = {}
D.__index = D

local function reply(status, value)
  return { status = status, headers = { ["content-type"] = "application/json" },
    body = type(value) == "string" and value or cjson.encode(value) }
end

-- An empty Lua table encodes as {}; the dashboard's lists are arrays.
local function array(list)
  if #list == 0 then return "[]" end
  return cjson.encode(list)
end

function M.new(f, opts)
  opts = opts or {}
  local d = setmetatable({ f = f, studies = {}, workers = {}, claims = {},
    reads = {}, next_id = 0, opts = opts }, D)
  d.wall0 = f.host.time.now() - f.now
  f.http_handler = function(req) return d:handle(req) end
  return d
end

function D:id(prefix)
  self.next_id = self.next_id + 1
  return prefix .. self.next_id
end

-- A super study of assignments with the given splitConfigs (created `age`
-- seconds before the others of the same call order; newer ones later).
function D:add_study(name, configs)
  local st = { id = self:id("ss"), name = name, assignments = {},
    createdAt = string.format("2026-12-01T00:00:%02d.000Z", #self.studies) }
  for i, cfg in ipairs(configs) do
    st.assignments[i] = { id = self:id("as"), index = i - 1, status = "PENDING",
      splitConfig = cfg, superStudyId = st.id }
  end
  table.insert(self.studies, st)
  return st
end

function D:worker_by_ip(ip)
  for _, w in ipairs(self.workers) do
    if w.ipAddress == ip then return w end
  end
end

function D:worker_by_id(id)
  for _, w in ipairs(self.workers) do
    if w.id == id then return w end
  end
end

function D:new_worker(ip, hostname)
  local w = { id = self:id("w"), ipAddress = ip, hostname = hostname,
    status = "IDLE", isStale = false, seen = self.f.now }
  table.insert(self.workers, w)
  return w
end

function D:each_assignment()
  local list = {}
  for _, st in ipairs(self.studies) do
    for _, a in ipairs(st.assignments) do list[#list + 1] = a end
  end
  return ipairs(list)
end

function D:find_assignment(id)
  for _, a in self:each_assignment() do
    if a.id == id then return a end
  end
end

-- The operator's reset (DELETE /api/workers/<id>).
function D:reset(worker)
  for _, a in self:each_assignment() do
    if a.workerId == worker.id then
      a.status, a.workerId, a.completedAt = "PENDING", nil, nil
    end
  end
  for i, w in ipairs(self.workers) do
    if w == worker then table.remove(self.workers, i) break end
  end
end

-- The operator deletes a super study (its assignments with it).
function D:delete_study(st)
  for i, x in ipairs(self.studies) do
    if x == st then table.remove(self.studies, i) return end
  end
end

-- Another machine claims an assignment (as a racing agent would).
function D:claim(assignment_id, ip)
  local w = self:worker_by_ip(ip) or self:new_worker(ip)
  local a = self:find_assignment(assignment_id)
  a.workerId, a.status = w.id, "RUNNING"
  w.status = "RUNNING"
  table.insert(self.claims, { id = assignment_id, ip = ip, at = self.f.now })
  return a
end

-- A `finished` from machine id `ip`: its worker IDLE and one of its
-- RUNNING assignments COMPLETED. Called directly, it is GOLIAT's own
-- window at the end of a run (PROTOCOL.md section 6), whatever the run's
-- exit code: not one of the agent's requests (not in reads).
function D:goliat_finished(ip)
  local w = self:worker_by_ip(ip)
  if not w then return end
  w.status = "IDLE"
  for _, a in self:each_assignment() do
    if a.workerId == w.id and a.status == "RUNNING" then
      a.status, a.completedAt = "COMPLETED", "now"
      return a
    end
  end
end

function D:stored(a)
  local copy = {}
  for k, v in pairs(a) do copy[k] = v end
  local w = a.workerId and self:worker_by_id(a.workerId)
  copy.worker = w and { id = w.id, ipAddress = w.ipAddress,
    hostname = w.hostname, isStale = false } or cjson.null
  copy.workerId = a.workerId or cjson.null
  return copy
end

-- The derived status of GET /api/super-studies/<id>.
function D:derived(a)
  if a.status ~= "RUNNING" then return a.status end
  local w = a.workerId and self:worker_by_id(a.workerId)
  if not w then return "PENDING" end
  if w.status == "ERROR" then return "FAILED" end
  if w.status == "IDLE" then
    return a.completedAt and "COMPLETED" or "PENDING"
  end
  return "RUNNING"
end

function D:handle(req)
  local path = req.url:sub(#P.DASH + 1)
  local query = path:match("%?(.*)$") or ""
  path = path:gsub("%?.*$", "")
  local m = req.method
  if self.opts.override then
    local res, err, code = self.opts.override(req, path)
    if res ~= nil or err ~= nil then return res, err, code end
  end
  if req.url:sub(1, #P.DASH) ~= P.DASH then
    return nil, "could not resolve host", "resolve"
  end
  table.insert(self.reads, { method = m, path = path, at = self.f.now })
  local body = req.body and cjson.decode(req.body)
  local seen = body and body.machineId and self:worker_by_ip(body.machineId)
  if seen then seen.seen = self.f.now end
  if m == "GET" and path == "/api/assignment" then
    return { status = 404, headers = { ["content-type"] = "text/html" },
      body = "<!DOCTYPE html><html><body>404: This page could not be " ..
        "found.</body></html>" }
  elseif m == "GET" and path == "/api/super-studies" then
    local name = query:match("name=([^&]*)")
    name = name and name:gsub("%%(%x%x)", function(h)
      return string.char(tonumber(h, 16))
    end)
    local out = {}
    for i = #self.studies, 1, -1 do -- newest first
      local st = self.studies[i]
      if not name or st.name == name then
        local summary = {}
        for j, a in ipairs(st.assignments) do
          summary[j] = { id = a.id, status = a.status,
            workerId = a.workerId or cjson.null }
        end
        out[#out + 1] = { id = st.id, name = st.name, createdAt = st.createdAt,
          assignments = summary }
      end
    end
    return reply(200, array(out))
  end
  local sid = path:match("^/api/super%-studies/([^/]+)/assignments$")
  if m == "GET" and sid then
    local out = {}
    for _, st in ipairs(self.studies) do
      if st.id == sid then
        for _, a in ipairs(st.assignments) do out[#out + 1] = self:stored(a) end
      end
    end
    return reply(200, array(out))
  end
  sid = path:match("^/api/super%-studies/([^/]+)$")
  if m == "GET" and sid then
    for _, st in ipairs(self.studies) do
      if st.id == sid then
        local list = {}
        for _, a in ipairs(st.assignments) do
          local c = self:stored(a)
          c.status = self:derived(a)
          list[#list + 1] = c
        end
        return reply(200, { id = st.id, name = st.name, assignments = list })
      end
    end
    return reply(404, { error = "not found" })
  end
  if m == "GET" and path == "/api/workers" then
    local list = {}
    for _, w in ipairs(self.workers) do
      list[#list + 1] = { id = w.id, ipAddress = w.ipAddress,
        hostname = w.hostname, status = w.status }
    end
    return reply(200, array(list))
  end
  local wid = path:match("^/api/workers/([^/]+)$")
  if m == "GET" and wid then
    -- lastSeen by the dashboard's clock, and that clock in the Date header
    local w = self:worker_by_id(wid)
    if not w then return reply(404, { error = "Worker not found" }) end
    local wall = self.wall0 -- the dashboard's own clock, not the VM's
    local res = reply(200, { worker = { id = w.id, ipAddress = w.ipAddress,
      hostname = w.hostname, status = w.status,
      lastSeen = os.date("!%Y-%m-%dT%H:%M:%S.000Z",
        math.floor(wall + w.seen)) },
      guiState = cjson.null })
    res.headers["date"] = os.date("!%a, %d %b %Y %H:%M:%S GMT",
      math.floor(wall + self.f.now + (self.clock_skew or 0)))
    return res
  end
  local aid = path:match("^/api/assignments/([^/]+)/claim$")
  if m == "POST" and aid then
    if not self:find_assignment(aid) then
      return reply(500, { error = "Failed to claim assignment" })
    end
    local a = self:claim(aid, body.machineId)
    local c = self:stored(a)
    c.worker = self:worker_by_id(a.workerId)
    return reply(200, c)
  elseif m == "POST" and path == "/api/heartbeat" then
    local w = self:worker_by_ip(body.machineId)
    if not w and body.hostname then
      for _, x in ipairs(self.workers) do
        if x.hostname == body.hostname then w = x break end
      end
    end
    w = w or self:new_worker(body.machineId, body.hostname)
    w.ipAddress, w.hostname = body.machineId, body.hostname or w.hostname
    return reply(200, { success = true, timestamp = "now" })
  elseif m == "POST" and path == "/api/gui-update" then
    local w = self:worker_by_ip(body.machineId)
    local t = body.message.type
    if w and t == "finished" then
      self:goliat_finished(body.machineId)
    elseif w and t == "fatal_error" then
      w.status = "ERROR"
    end
    return reply(200, { success = true })
  end
  return reply(404, { error = "not found" })
end

-- Requests the agent made, as "METHOD path" strings, in order.
function D:trace()
  local out = {}
  for _, r in ipairs(self.reads) do out[#out + 1] = r.method .. " " .. r.path end
  return out
end

return M
