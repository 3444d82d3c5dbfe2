-- The study's local gateway (the design's approach B), on when
-- GOLIAT_GATEWAY=on. The study is started with GOLIAT_MONITORING_URL
-- pointing here: http://127.0.0.1:<port>/gw/<secret>, on loopback only, the
-- secret fresh for each study. Whatever the study sends under /api/ is
-- answered at once from a local write and forwarded to the dashboard, in
-- order, from a queue on disk that survives outages, a killed agent and a
-- restart:
--   * the study's heartbeats are absorbed (the agent beats already);
--   * its `finished` and `fatal_error` are held: the agent reports how the
--     study really ended once its process has exited (PROTOCOL.md section
--     2), after everything queued before;
--   * progress (overall_progress, stage_progress, profiler_update) waiting
--     to be sent is replaced by the newest of its type, and so are
--     screenshots; log batches waiting side by side go as one;
--   * when the queue's disk budget is full, the oldest progress and
--     screenshots go first; a result upload or a log line is never dropped
--     (the study gets 507 when there is no room for it);
--   * GET requests are passed through live (nothing to queue).
-- The dashboard sees at most `rate` messages per second; a 429 halves the
-- rate for a while, and every other failure is retried with backoff.
local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"

local M = {}

M.DIR = "gateway"          -- in the work dir
M.PREFIX = "/gw/"          -- the study's URL path: /gw/<secret>/api/...
M.HELD = "held.json"       -- the study's own finished/fatal_error, held

local PROGRESS = { overall_progress = true, stage_progress = true,
  profiler_update = true }
local FINAL = { finished = true, fatal_error = true }
local MERGE_MAX = 50           -- log batches sent as one, at most
local MERGE_BYTES = 512 * 1024 -- and this much JSON
local META = "^(%d+)%.json$"
-- A message on disk is two files, each taking whole blocks: 4 KiB on ext4
-- and NTFS by default. The budget counts the blocks, not the bytes (a
-- 200-byte log batch takes 8 KiB), so that it bounds what is really used.
local BLOCK = 4096

local function on_disk(bytes)
  return math.max(1, math.ceil(bytes / BLOCK)) * BLOCK
end

-- A body larger than this never goes through memory: the gateway's server
-- writes it to a file as it arrives (spool_over), the file is moved into
-- the queue, and it is sent from there (body_file).
local LARGE = 1024 * 1024

local function hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- What the gateway does with a request: its kind and the message type.
-- select: host.json.select (reads message.type without building the
-- message as Lua tables: this runs for every message of the study).
--   "absorb"     the study's heartbeat (answered, not forwarded)
--   "live"       GET and HEAD: forwarded now, the dashboard's answer returned
--   "final"      gui-update finished/fatal_error: held
--   "progress"   gui-update progress: coalesced per type
--   "screenshot" POST /api/gui-screenshots...: the newest only
--   "results"    POST /api/assignments/<id>/results: kept, stored flushed
--   "keep"       everything else (logs, sim_details, unknown types)
--   "invalid"    a gui-update without a JSON message with a type: refused
function M.classify(method, path, body, select)
  if method == "GET" or method == "HEAD" then return "live" end
  if path == "/api/heartbeat" then return "absorb" end
  if path == "/api/gui-update" then
    local t = cjson.decode(select(body or "", "message", "type") or "")
    -- what the dashboard refuses (400, or 500 for a body that is not
    -- JSON), refused here at once: queued, it would block all behind it
    if type(t) ~= "string" then return "invalid" end
    if FINAL[t] then return "final", t end
    if PROGRESS[t] then return "progress", t end
    return "keep", t
  end
  if path:match("^/api/gui%-screenshots") then return "screenshot" end
  if path:match("^/api/assignments/[^/]+/results$") then return "results" end
  return "keep"
end

------------------------------------------------------------------------------
-- The queue: one message per pair of files, <seq>.body (the request body,
-- as the study sent it) and <seq>.json (method, target, content type, kind,
-- type, size, time). The .json is written last: a message without it was
-- never acknowledged, and is removed. Progress and screenshots are kept in
-- memory only (the newest replaces them; a restart loses the one waiting).
-- In memory the messages are a list from `first` to `last` (a delivered or
-- replaced one is marked gone and skipped), and the waiting progress and
-- screenshot, one per type, are indexed: a put costs the same with a
-- thousand messages waiting.
------------------------------------------------------------------------------
local Queue = {}
Queue.__index = Queue

local function coalescing_key(meta)
  if meta.kind == "progress" then return "progress:" .. tostring(meta.type) end
  if meta.kind == "screenshot" then return "screenshot" end
  return nil
end

-- Whether a queued message's meta file says what the forwarder needs.
function M.valid_meta(meta)
  return type(meta) == "table" and type(meta.method) == "string" and
    type(meta.target) == "string" and meta.target:match("^/api/") ~= nil and
    (meta.size == nil or (math.type(meta.size) and meta.size >= 0)) and
    (meta.ctype == nil or type(meta.ctype) == "string")
end

-- Opens the queue in `dir` (created), with what an earlier run left there.
-- A large backlog is read in slices, letting the other tasks run (the
-- heartbeat among them; the watchdog stops a task that runs too long).
function M.queue(host, dir, max_bytes, log)
  local fs = host.fs
  assert(fs.mkdir_p(dir))
  local self = setmetatable({ host = host, dir = dir, max_bytes = max_bytes,
    log = log, items = {}, first = 1, last = 0, count = 0, bytes = 0,
    seq = 0, dropped = 0, sending = {}, waiting = {},
    -- puts whose files are being written (host.fs waits): their numbers,
    -- and the bytes they hold of the budget
    inflight = {}, reserved = 0 }, Queue)
  local names, has, found = fs.list(dir) or {}, {}, {}
  for _, name in ipairs(names) do has[name] = true end
  for i, name in ipairs(names) do
    if i % 500 == 0 then host.task.yield() end
    local n = tonumber(name:match(META))
    local path = fs.join(dir, name)
    if n then
      local meta = cjson.decode(fs.read(path) or "")
      local body = fs.join(dir, string.format("%012d.body", n))
      if M.valid_meta(meta) and has[string.format("%012d.body", n)] then
        meta.seq, meta.size = n, meta.size or 0
        found[#found + 1] = meta
      else
        -- not a message we acknowledged whole: set aside, never lost
        fs.rename(path, path .. ".bad")
        if has[string.format("%012d.body", n)] then
          fs.rename(body, body .. ".bad")
        end
        log.error("gateway: %s is not a whole queued message; set aside " ..
          "as %s.bad", path, name)
      end
      if n > self.seq then self.seq = n end
    elseif name:match("%.body$") then
      local m = tonumber(name:match("^(%d+)%.body$"))
      if m and m > self.seq then self.seq = m end
      if not (m and has[string.format("%012d.json", m)]) then
        fs.remove(path) -- written, but the study never got its answer
      end
    elseif name:match("%.tmp%-%d+%-%d+$") or
        name:match("^%.spool%-.*%.part$") then
      -- an atomic write cut short; an upload that was arriving when the
      -- agent was killed (the study never got its answer)
      fs.remove(path)
    end
  end
  table.sort(found, function(a, b) return a.seq < b.seq end)
  for _, meta in ipairs(found) do self:append(meta) end
  return self
end

function Queue:path(seq, ext)
  return self.host.fs.join(self.dir, string.format("%012d.%s", seq, ext))
end

function Queue:append(meta)
  self.last = self.last + 1
  self.items[self.last] = meta
  self.count, self.bytes = self.count + 1, self.bytes + meta.size
  local key = coalescing_key(meta)
  if key then self.waiting[key] = meta end
end

-- Forget a message: its files go, it is skipped from now on.
function Queue:drop(it)
  if it.gone then return end
  it.gone = true
  if not it.held_in_memory then
    -- the meta first: without it the body is never sent again
    local ok, err, code = self.host.fs.remove(self:path(it.seq, "json"))
    if not ok and code ~= "ENOENT" then
      -- (a virus scanner holding it on Windows): sent again after a restart
      self.log.warn("gateway: cannot remove %s: %s", self:path(it.seq,
        "json"), tostring(err))
    end
    self.host.fs.remove(self:path(it.seq, "body"))
  end
  self.count, self.bytes = self.count - 1, self.bytes - it.size
  local key = coalescing_key(it)
  if key and self.waiting[key] == it then self.waiting[key] = nil end
  while self.first <= self.last and self.items[self.first].gone do
    self.items[self.first] = nil
    self.first = self.first + 1
  end
end

-- The messages still waiting, oldest first (an iterator).
function Queue:each()
  local i = self.first - 1
  return function()
    repeat
      i = i + 1
    until i > self.last or not self.items[i].gone
    return self.items[i]
  end
end

function Queue:head()
  return self.items[self.first]
end

-- Add a message (meta: method, target, ctype, kind, type) with its body:
-- a string, or {file = path, size = bytes} for a body the server wrote to
-- a file (moved into the queue; never one of the kinds kept in memory).
-- Returns its sequence number, or nil and why when it cannot be stored.
function Queue:put(meta, body)
  local key = coalescing_key(meta)
  local older = key and self.waiting[key]
  local spooled = type(body) == "table" and body or nil
  assert(not (spooled and key), "a spooled body is kept on disk")
  local bytes = spooled and spooled.size or #body
  -- in memory: the body and a little; on disk: the body's blocks and one
  -- block of its meta file
  local size = key and bytes + 256 or on_disk(bytes) + BLOCK
  local used = self.bytes + self.reserved
  if older and not self.sending[older.seq] and
      used - older.size + size <= self.max_bytes then
    -- the newest progress of a type replaces the one waiting, in its
    -- place: behind a steady flow of log lines it would never come first
    self.bytes = self.bytes - older.size + size
    older.body, older.size, older.method, older.target, older.ctype =
      body, size, meta.method, meta.target, meta.ctype
    return older.seq
  end
  -- what could go to make room: if even that is not enough, nothing goes
  local room = self.max_bytes - used
  for _, it in pairs(self.waiting) do
    if not self.sending[it.seq] then room = room + it.size end
  end
  if size > room then
    return nil, string.format("the gateway's queue is full (%d bytes " ..
      "waiting; GOLIAT_GATEWAY_MAX_BYTES is %d)", self.bytes, self.max_bytes)
  end
  while self.bytes + self.reserved + size > self.max_bytes do
    local victim -- the oldest progress or screenshot not being sent
    for _, it in pairs(self.waiting) do
      if not self.sending[it.seq] and (not victim or it.seq < victim.seq) then
        victim = it
      end
    end
    if not victim then
      return nil, string.format("the gateway's queue is full (%d bytes " ..
        "waiting; GOLIAT_GATEWAY_MAX_BYTES is %d)", self.bytes, self.max_bytes)
    end
    self:drop(victim)
    self.dropped = self.dropped + 1
  end
  -- the number is taken now: the writes below wait (host.fs runs off the
  -- loop), and a put from another request meanwhile gets the next one
  local seq = self.seq + 1
  self.seq = seq
  meta.seq, meta.size = seq, size
  if key then
    -- progress and screenshots stay in memory: the next one replaces them
    -- anyway, and 50 updates a second are not worth 50 files
    meta.held_in_memory, meta.body = true, body
    self:append(meta)
    return seq
  end
  -- a result upload is flushed to disk; the rest is safe from a killed
  -- agent (the system holds it), not from a power cut
  local sync = meta.kind == "results"
  local fs = self.host.fs
  local ok, err
  -- held while the files are written: another put meanwhile counts it in
  -- the budget, and a wait for what was queued so far (wait_sent) waits
  -- for it too
  self.inflight[seq], self.reserved = true, self.reserved + size
  if spooled then
    ok, err = fs.rename(spooled.file, self:path(seq, "body"))
    if ok and sync then ok, err = fs.sync(self:path(seq, "body")) end
  else
    ok, err = fs.write_atomic(self:path(seq, "body"), body, { sync = sync })
  end
  if ok then
    ok, err = self.host.fs.write_atomic(self:path(seq, "json"),
      cjson.encode(meta), { sync = sync })
  end
  self.inflight[seq], self.reserved = nil, self.reserved - size
  if not ok then
    self.host.fs.remove(self:path(seq, "body"))
    return nil, "cannot store the message: " .. tostring(err)
  end
  self:append(meta)
  return seq
end

function Queue:body(it)
  if it.held_in_memory then return it.body end
  return self.host.fs.read(self:path(it.seq, "body"))
end

-- Keep a message the dashboard refused for good in rejected/ (not lost,
-- not sent again); returns where.
function Queue:reject(it)
  local fs = self.host.fs
  local dir = fs.join(self.dir, "rejected")
  fs.mkdir_p(dir)
  -- sequence numbers start again after an emptied queue: a suffix keeps
  -- an earlier refusal from being overwritten
  local tag = string.format("%012d-%s", it.seq, hex(self.host.sys.random(4)))
  local function kept(ext)
    return fs.join(dir, tag .. "." .. ext)
  end
  if it.held_in_memory then
    local meta = {}
    for k, v in pairs(it) do if k ~= "body" then meta[k] = v end end
    fs.write_atomic(kept("body"), it.body)
    fs.write_atomic(kept("json"), cjson.encode(meta))
  else
    fs.rename(self:path(it.seq, "body"), kept("body"))
    fs.rename(self:path(it.seq, "json"), kept("json"))
  end
  self:drop(it)
  return kept("json")
end

-- Depth, bytes and the time of the oldest message (nil when empty).
function Queue:stats()
  local first = self:head()
  return self.count, self.bytes, first and first.at or nil
end

-- Whether any message up to `seq` is still waiting.
function Queue:holds_upto(seq)
  for s in pairs(self.inflight) do
    if s <= seq then return true end
  end
  local first = self:head()
  return first ~= nil and first.seq <= seq
end

------------------------------------------------------------------------------
-- The gateway: the queue, a forwarder that empties it in order, and a
-- server for the study under way.
------------------------------------------------------------------------------
local Gateway = {}
Gateway.__index = Gateway

-- agent: the agent (its host, settings s, log, backoff, note_failure and
-- note_success are used).
function M.new(agent)
  local h, s = agent.host, agent.s
  local dir = h.fs.join(s.work_dir, M.DIR)
  local self = setmetatable({ agent = agent, host = h, s = s, log = agent.log,
    dir = dir, queue = M.queue(h, dir, s.gateway_max_bytes, agent.log),
    wake = h.task.event(),      -- a message was queued
    progress = h.task.event(),  -- a message was delivered or set aside
    rate = s.gateway_rate, failures = 0, delivered = 0 }, Gateway)
  self.start_seq = self.queue.seq -- all that an earlier run left
  local depth = self.queue.count
  if depth > 0 then
    self.log.info("gateway: %d message(s) left from an earlier run, to " ..
      "send first", depth)
  end
  return self
end

-- Start serving the study of assignment `a_id`; rec: {port, secret} of
-- the gateway a study already uses (taken back after a restart), or nil
-- for a new one. Returns the URL to give the study and the record to keep
-- in the state file, or nil and a message.
function Gateway:serve(a_id, rec)
  local h = self.host
  if self.server then self.server:close() end
  self.server = nil
  local secret = rec and type(rec.secret) == "string" and
    rec.secret:match("^%x+$") and rec.secret or hex(h.sys.random(16))
  local port = rec and math.tointeger(rec.port) or 0
  -- (a body that takes the whole budget could never be queued: its meta
  -- file and block rounding need room too)
  local opts = { host = "127.0.0.1", port = port,
    max_body = self.s.gateway_max_bytes - 2 * BLOCK, spool_dir = self.dir,
    spool_over = LARGE }
  -- what the study said at its end, read before the server listens (a
  -- message arriving during the read would be overwritten by it)
  local held = cjson.decode(h.fs.read(h.fs.join(self.dir, M.HELD)) or "")
  if type(held) ~= "table" or held.assignment_id ~= a_id then held = nil end
  local handler = function(req) return self:handle(req) end
  local server, err = h.http.serve(opts, handler)
  if not server and port ~= 0 then
    self.log.warn("gateway: cannot listen on port %d again (%s): the " ..
      "study taken back can no longer reach the dashboard", port,
      tostring(err))
    return nil, err
  end
  if not server then return nil, "gateway: cannot listen: " .. tostring(err) end
  self.server, self.assignment_id = server, a_id
  self.prefix = M.PREFIX .. secret
  self.held = held
  local record = { port = server:port(), secret = secret }
  return string.format("http://127.0.0.1:%d%s", record.port, self.prefix),
    record
end

-- A new attempt of the same study: what the last one said at its end is
-- forgotten.
function Gateway:new_attempt()
  self.held = nil
  self.host.fs.remove(self.host.fs.join(self.dir, M.HELD))
end

-- Stop serving (the study of assignment a_id has exited). Returns the
-- study's own final message ({type, message}), if it sent one, and the
-- last sequence number queued so far.
function Gateway:stop_serving(a_id)
  if self.server then
    self.server:close()
    self.server = nil
  end
  local held = self.held
  if not held then
    -- sent before a restart, the study gone since
    held = cjson.decode(self.host.fs.read(self.host.fs.join(self.dir,
      M.HELD)) or "")
  end
  if type(held) ~= "table" or held.assignment_id ~= a_id then held = nil end
  self.held, self.assignment_id = nil, nil
  self.host.fs.remove(self.host.fs.join(self.dir, M.HELD))
  return held, self.queue.seq
end

local function reply(status, tbl)
  return { status = status, headers = { ["Content-Type"] = "application/json" },
    body = cjson.encode(tbl) }
end

local OK = '{"success":true}'

function Gateway:handle(req)
  local prefix = self.prefix
  if not prefix or req.path:sub(1, #prefix + 1) ~= prefix .. "/" then
    return reply(403, { error = "forbidden: this gateway serves one study " ..
      "only (its URL carries a secret)" })
  end
  local path = req.path:sub(#prefix + 1)
  if not path:match("^/api/") then
    return reply(404, { error = "not found: only /api/ is forwarded" })
  end
  -- the path goes to the dashboard with the agent's token: nothing that
  -- could leave /api/ on the way (dot segments, encoded dots, backslashes)
  local lower = path:lower()
  if lower:find("%2e", 1, true) or lower:find("%2f", 1, true) or
      lower:find("%5c", 1, true) or path:find("\\", 1, true) or
      path:find("//", 1, true) or ("/" .. path .. "/"):find("/%.%.?/") then
    return reply(400, { error = "bad path: dot segments, encoded " ..
      "separators and empty segments are not forwarded" })
  end
  local method = req.method
  if method ~= "GET" and method ~= "HEAD" and method ~= "POST" then
    return reply(405, { error = "only GET, HEAD and POST are forwarded" })
  end
  local target = path .. ((req.query or "") ~= "" and "?" .. req.query or "")
  local body = req.body
  if req.body_file and (path == "/api/gui-update" or
      path:match("^/api/gui%-screenshots")) then
    -- a JSON message (read to be sorted), or a screenshot (kept in memory)
    local rerr
    body, rerr = self.host.fs.read(req.body_file)
    if not body then
      return reply(507, { error = "cannot read the request: " ..
        tostring(rerr) })
    end
  end
  local kind, mtype = M.classify(req.method, path, body,
    self.host.json.select)
  if kind == "absorb" then
    return { status = 200, headers = { ["Content-Type"] = "application/json" },
      body = OK }
  elseif kind == "invalid" then
    return reply(400, { error = "invalid payload: a JSON object with a " ..
      "message that has a type is expected" })
  elseif kind == "live" then
    local res = self:pass_through(target)
    if req.method == "HEAD" then res.body = "" end
    return res
  elseif kind == "final" then
    if mtype == "finished" and self.held and
        self.held.type == "fatal_error" then
      -- GOLIAT's window says `finished` after a failure too: the failure's
      -- own words are the ones kept
      return { status = 200, headers = {
        ["Content-Type"] = "application/json" }, body = OK }
    end
    local doc = cjson.decode(body) or {}
    local text = doc.message and doc.message.message
    self.held = { assignment_id = self.assignment_id, type = mtype,
      message = type(text) == "string" and text:sub(1, 2000) or nil }
    self.host.fs.write_atomic(self.host.fs.join(self.dir, M.HELD),
      cjson.encode(self.held), { sync = false })
    return { status = 200, headers = { ["Content-Type"] = "application/json" },
      body = OK }
  end
  if body then
    if kind ~= "results" then body = self:own_id(body) end
  else
    body = req.body_file and { file = req.body_file, size = req.body_size }
      or ""
  end
  local seq, err = self.queue:put({ method = req.method, target = target,
    ctype = req.headers["content-type"], kind = kind, type = mtype,
    at = self.host.time.now(), assignment_id = self.assignment_id }, body)
  if not seq then
    if self.full_logged ~= err then
      self.log.error("gateway: %s %s from the study refused: %s", req.method,
        path, err)
      self.full_logged = err
    end
    return reply(507, { error = err })
  end
  self.full_logged = nil
  self.wake:set()
  return { status = 200, headers = { ["Content-Type"] = "application/json" },
    body = OK }
end

-- A JSON body with a machineId goes under the agent's: GOLIAT finds its
-- own id (its public IP), which differs behind NAT or with
-- GOLIAT_MACHINE_ID set, and its progress would land on a worker row
-- that holds no assignment. The rest of the body is kept as it was.
function Gateway:own_id(body)
  if not body:find("^%s*{") then return body end
  local json = self.host.json
  local id = cjson.decode(json.select(body, "machineId") or "null")
  local mine = self.s.machine_id
  if id == nil or id == cjson.null or id == mine then return body end
  local out = json.set_string(body, "machineId", mine)
  if out and not self.said_id then
    self.said_id = true
    self.log.info("gateway: the study sends as machine %s; its messages " ..
      "go to the dashboard as %s, the agent's", self.log.redact(
      tostring(id)), mine)
  end
  return out or body
end

-- The dashboard's headers for a forwarded request: its token is the
-- agent's, never the study's.
function Gateway:headers(ctype)
  local hd = {}
  if ctype then hd["Content-Type"] = ctype end
  if self.s.api_token then
    hd["Authorization"] = "Bearer " .. self.s.api_token
  end
  return hd
end

-- body: a string, nil, or {file = path, size = bytes} (sent from the file)
function Gateway:request(method, target, body, ctype)
  local file = type(body) == "table" and body.file or nil
  local bytes = file and body.size or #(body or "")
  return self.host.http.request {
    method = method,
    url = self.s.monitoring_url .. target,
    headers = self:headers(ctype),
    body = not file and body or nil,
    body_file = file,
    -- an upload of 256 MB needs more than 300 s on a slow link: at least
    -- 64 KiB/s is asked for, not a fixed time
    timeout = math.max(self.s.gateway_send_timeout, bytes / 65536),
    max_size = self.s.max_reply_bytes,
    cainfo = self.s.ca_bundle,
  }
end

function Gateway:pass_through(target)
  local res, err = self:request("GET", target, nil, nil)
  if not res then
    return reply(502, { error = "the dashboard cannot be reached: " ..
      self.log.redact(tostring(err)) })
  end
  return { status = res.status, body = res.body,
    headers = { ["Content-Type"] = res.headers["content-type"] } }
end

-- The head of the queue, with the log batches right behind it merged in
-- when it is one: returns the items and the body to send (a string, or
-- {file, size} for a large upload; nil when the head's body cannot be
-- read).
function Gateway:next_batch()
  local q = self.queue
  local first = q:head()
  if not first.held_in_memory and first.size > LARGE then
    -- a large upload goes from its file, never read whole
    local file = q:path(first.seq, "body")
    if not self.host.fs.exists(file) then return { first }, nil end
    return { first }, { file = file, size = first.size }
  end
  local body = q:body(first)
  if not body or first.type ~= "log_batch" or self.alone == first.seq then
    return { first }, body
  end
  local doc = cjson.decode(body)
  if type(doc) ~= "table" or type(doc.message) ~= "table" or
      type(doc.message.logs) ~= "table" then
    return { first }, body
  end
  local items, size = { first }, #body
  local next_item = q:each()
  next_item() -- the first
  for it in next_item do
    if #items >= MERGE_MAX or it.type ~= "log_batch" or
        it.target ~= first.target or size + it.size > MERGE_BYTES then
      break
    end
    local more = cjson.decode(q:body(it) or "")
    if type(more) ~= "table" or type(more.message) ~= "table" or
        type(more.message.logs) ~= "table" then
      break
    end
    for _, line in ipairs(more.message.logs) do
      table.insert(doc.message.logs, line)
    end
    items[#items + 1], size = it, size + it.size
  end
  if #items == 1 then return items, body end
  return items, cjson.encode(doc)
end

-- Send what is queued, in order, for ever (a task of its own).
function Gateway:forward_loop()
  local h, q = self.host, self.queue
  local last_send = -math.huge
  while true do
    if not q:head() then
      self.wake:wait(60)
    else
      local wait = last_send + 1 / self.rate - h.time.monotonic()
      if wait > 0 then h.time.sleep(wait) end
      last_send = h.time.monotonic()
      self:send_head()
    end
  end
end

-- One attempt at the head of the queue.
function Gateway:send_head()
  local h, q, agent = self.host, self.queue, self.agent
  if not q:head() then return end -- emptied meanwhile (a full queue's room)
  local items, body = self:next_batch()
  local first = items[1]
  if not body then
    self.log.error("gateway: queued message %d cannot be read; set aside " ..
      "in %s", first.seq, q:reject(first))
    self.progress:set()
    return
  end
  local seqs = {}
  for i, it in ipairs(items) do
    seqs[i] = it.seq
    q.sending[it.seq] = true
  end
  local res, err = self:request(first.method, first.target, body, first.ctype)
  for _, seq in ipairs(seqs) do q.sending[seq] = nil end
  local status = res and res.status
  if status and status >= 200 and status < 300 then
    for _, it in ipairs(items) do q:drop(it) end
    self.delivered = self.delivered + #seqs
    self.failures = 0
    agent:note_success("gateway")
    -- after a 429 the rate comes back one step per message delivered
    self.rate = math.min(self.s.gateway_rate, self.rate * 1.1)
    self.progress:set()
    return
  end
  if status and agent.refused_for_good(status) and #items > 1 then
    -- refused merged: the head goes alone next, then each one after it
    self.alone = first.seq
    return
  end
  if status == 500 and first.seq == self.failing_seq then
    self.failing_500 = (self.failing_500 or 0) + 1
  elseif status == 500 then
    self.failing_seq, self.failing_500 = first.seq, 1
  end
  -- refused for its credentials (401, 403, 407): a token rotation or a
  -- proxy, kept and tried again, unless the heartbeats go through all the
  -- while for gateway_auth_patience (a WAF refusing this one message,
  -- which must not hold the report and all work behind it for ever)
  local auth = status and agent.OPERATOR_FIXES[status] and status ~= 404
  local now = h.time.monotonic()
  if auth and first.seq == self.auth_seq then
    local beat = agent.last_beat
    if not (beat and beat.ok) then self.auth_since = now end
  elseif auth then
    self.auth_seq, self.auth_since = first.seq, now
  end
  local auth_for_good = auth and now - self.auth_since >=
    (self.s.gateway_auth_patience or 600)
  if status and (agent.refused_for_good(status) or auth_for_good or
      (status == 500 and self.failing_500 >= 10)) then
    -- a message the dashboard's code fails on ten times in a row is taken
    -- for the cause: kept aside, so that it cannot block all behind it
    local kept = q:reject(first)
    self.log.error("gateway: the dashboard refused the study's %s %s for " ..
      "good (HTTP %d): kept in %s, not sent again", first.method,
      first.target:gsub("%?.*", ""), status, kept)
    self.progress:set()
    return
  end
  local retry_after
  if status == 429 or status == 503 then
    retry_after = settings_lib.retry_after(res.headers["retry-after"],
      h.time.now())
  end
  if status == 429 then
    self.rate = math.max(0.5, self.rate / 2)
  end
  self.failures = self.failures + 1
  agent:note_failure("gateway", err or ("HTTP " .. tostring(status)))
  h.time.sleep(agent:backoff(self.failures, retry_after))
end

-- Wait until every message up to `seq` has left the queue (delivered or
-- set aside), or until `deadline` (monotonic; nil: for ever). Returns
-- whether they all did.
function Gateway:wait_sent(seq, deadline)
  local h, q = self.host, self.queue
  local last_note = h.time.monotonic()
  while q:holds_upto(seq) do
    local now = h.time.monotonic()
    if (deadline and now >= deadline) or self.agent.stopping and
        not deadline then
      return false
    end
    if now - last_note >= 60 then
      local depth, _, oldest = q:stats()
      self.log.info("gateway: %d message(s) of the study still to send " ..
        "before its report (the oldest from %.0f s ago)", depth,
        h.time.now() - (oldest or h.time.now()))
      last_note = now
    end
    self.wake:set()
    self.progress:wait(deadline and math.max(0, deadline - now) or 60)
  end
  return true
end

-- For the status file and --status.
function Gateway:stats()
  local depth, bytes, oldest = self.queue:stats()
  return { waiting = depth, bytes = bytes, oldest_at = oldest,
    delivered = self.delivered, dropped = self.queue.dropped,
    serving = self.server ~= nil }
end

return M
