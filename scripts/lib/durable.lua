-- What the agent keeps on disk so that nothing is lost when it dies: an
-- outbox of reports that must reach the dashboard, and a state file naming
-- the study under way. Both live in the work directory; every write is
-- atomic (a temporary file, then a rename).
local cjson = require "cjson.safe"

local M = {}

------------------------------------------------------------------------------
-- Outbox: one JSON file per report, named by a sequence number so that the
-- oldest is sent first. A report is removed only after a 2xx reply.
------------------------------------------------------------------------------
local Outbox = {}
Outbox.__index = Outbox

local NAME = "^(%d+)%.json$"

function M.outbox(host, dir, log)
  assert(host.fs.mkdir_p(dir))
  local self = setmetatable({ host = host, dir = dir, log = log, seq = 0 },
    Outbox)
  for _, name in ipairs(host.fs.list(dir) or {}) do
    local n = tonumber(name:match(NAME))
    if n and n > self.seq then self.seq = n end
    if name:match("%.tmp%-%d+%-%d+$") then
      -- an atomic write cut short by a crash: never a complete report
      host.fs.remove(host.fs.join(dir, name))
    end
  end
  return self
end

-- Store an item ({path = ..., body = ...}) on disk; returns its file name,
-- or nil (logged unless `quiet`) when it cannot be written.
function Outbox:put(item, quiet)
  -- the number is taken before the write, which waits (host.fs runs off
  -- the loop): a put from another task meanwhile gets the next one
  self.seq = self.seq + 1
  local file = self.host.fs.join(self.dir,
    string.format("%012d.json", self.seq))
  local ok, err = self.host.fs.write_atomic(file, cjson.encode(item))
  if not ok then
    if not quiet then
      self.log.error("cannot store a report in %s: %s (sending it anyway; " ..
        "the state file is kept until it is stored or sent)", self.dir,
        tostring(err))
    end
    return nil
  end
  return file
end

-- Items still to send, oldest first: { {file = ..., item = ...}, ... }.
-- A file that is not a valid item is set aside (renamed *.bad), not lost.
function Outbox:pending()
  local names = {}
  for _, name in ipairs(self.host.fs.list(self.dir) or {}) do
    if name:match(NAME) then table.insert(names, name) end
  end
  table.sort(names) -- fixed width: text order is number order
  local out = {}
  for _, name in ipairs(names) do
    local file = self.host.fs.join(self.dir, name)
    local st = self.host.fs.stat(file)
    if st and st.type ~= "file" then
      -- a FIFO (opening it would block), a folder, a device: not a report
      -- this agent wrote; skipped, never opened, never moved
      self.skipped = self.skipped or {}
      if not self.skipped[name] then
        self.skipped[name] = true
        self.log.warn("outbox: %s is not a regular file (a %s): skipped",
          file, st.type)
      end
      goto next
    end
    local item = cjson.decode(self.host.fs.read(file) or "")
    if type(item) == "table" and type(item.path) == "string" and
        type(item.body) == "table" then
      table.insert(out, { file = file, item = item })
    else
      self.log.error("outbox file %s is unreadable: kept as %s.bad", file, file)
      self.host.fs.write_atomic(file .. ".bad", self.host.fs.read(file) or "")
      self.host.fs.remove(file)
    end
    ::next::
  end
  return out
end

function Outbox:done(file)
  if file then self.host.fs.remove(file) end
end

-- Move a report the dashboard refused for good to rejected/ beside the
-- outbox (kept for a person to look at, never sent again); returns where.
-- The outbox's numbers start again from what is in outbox/ after every
-- start, so the name kept gets the time and a random part: a report
-- rejected earlier under the same number is never overwritten.
function Outbox:reject(file)
  if not file then return nil end
  local fs = self.host.fs
  local dir = fs.join((self.dir:gsub("[/\\][^/\\]+[/\\]?$", "")), "rejected")
  fs.mkdir_p(dir)
  local base = (file:match("([^/\\]+)$")):gsub("%.json$", "")
  local stamp = os.date("!%Y%m%dT%H%M%SZ", math.floor(self.host.time.now()))
  local to
  for _ = 1, 100 do
    to = fs.join(dir, string.format("%s-%s-%06x.json", base, stamp,
      math.random(0, 0xffffff)))
    if not fs.exists(to) then break end
  end
  local ok = fs.write_atomic(to, fs.read(file) or "")
  if ok then fs.remove(file) end
  return ok and to or file
end

------------------------------------------------------------------------------
-- State file: the study under way, or nothing.
------------------------------------------------------------------------------
function M.save_state(host, file, state)
  return host.fs.write_atomic(file, cjson.encode(state))
end

-- What is wrong with a state's fields, or nil when nothing is.
local function state_problem(state)
  if type(state) ~= "table" or type(state.assignment) ~= "table" then
    return "not a state"
  end
  local function count(v) return math.tointeger(v) and v >= 1 end
  local checks = {
    pid = count, attempt = count,
    started_at = function(v) return type(v) == "number" end,
    started_mono = function(v) return type(v) == "number" end,
    boot_id = function(v) return type(v) == "string" end,
    start_time = function(v) return type(v) == "number" or type(v) == "string" end,
    exit_file = function(v) return type(v) == "string" end,
    config_path = function(v) return type(v) == "string" end,
  }
  for field, ok in pairs(checks) do
    if state[field] ~= nil and not ok(state[field]) then
      return "bad '" .. field .. "'"
    end
  end
  if type(state.assignment.id) ~= "string" then return "no assignment id" end
  return nil
end

-- The saved state, or nil. A file that is not a valid state is set aside
-- (as .bad); nil is then followed by the id of its assignment when it can
-- be read, so that the assignment is still reported.
function M.load_state(host, file, log)
  local text = host.fs.read(file)
  if not text then return nil end
  local state = cjson.decode(text)
  local problem = state_problem(state)
  if problem then
    log.error("state file %s is unreadable (%s): kept as %s.bad", file,
      problem, file)
    host.fs.write_atomic(file .. ".bad", text)
    host.fs.remove(file)
    local a = type(state) == "table" and state.assignment
    local id = type(a) == "table" and type(a.id) == "string" and a.id or nil
    return nil, id
  end
  return state
end

function M.clear_state(host, file)
  host.fs.remove(file)
end

return M
