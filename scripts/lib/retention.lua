-- Retention of finished work's files: each finished assignment leaves its
-- study log (and the copy before it, .1), its exit file and its split
-- config. The agent lists the files it made for each assignment in a
-- ledger (retention.json in the work dir) and, after each assignment,
-- removes the oldest assignments' files beyond a count and a total size
-- (GOLIAT_KEEP_FINISHED, GOLIAT_KEEP_FINISHED_MB). Only files named in the
-- ledger are ever removed: what the agent did not make (or made before it
-- kept a ledger) is never touched. The newest assignment's files are kept
-- whatever the limits say.
local cjson = require "cjson.safe"

local M = { FILE = "retention.json" }

local Ledger = {}
Ledger.__index = Ledger

-- owned(path): whether a path is one the agent makes (its names, in its
-- folders); a ledger edited by someone else can name nothing else.
function M.open(host, path, log, owned)
  local self = setmetatable({ host = host, path = path, log = log,
    groups = {}, owned = owned or function() return false end }, Ledger)
  local text = host.fs.read(path)
  if text then
    local data = cjson.decode(text)
    if type(data) == "table" and type(data.groups) == "table" then
      for _, g in ipairs(data.groups) do
        if type(g) == "table" and type(g.files) == "table" then
          local files = {}
          for _, p in ipairs(g.files) do
            if type(p) == "string" then files[#files + 1] = p end
          end
          self.groups[#self.groups + 1] = { id = tostring(g.id),
            at = tonumber(g.at), files = files }
        end
      end
    else
      -- kept aside, not lost; the files it named are then left alone
      log.error("%s is unreadable: kept as %s.bad (the files it listed " ..
        "are no longer removed by the retention)", path, path)
      host.fs.write_atomic(path .. ".bad", text)
      host.fs.remove(path)
    end
  end
  return self
end

function Ledger:save()
  local ok, err = self.host.fs.write_atomic(self.path,
    cjson.encode { groups = self.groups })
  if not ok then
    self.log.warn("cannot write %s: %s", self.path, tostring(err))
  end
  return ok
end

-- A finished assignment's files. A path that an earlier assignment had too
-- (the same split index, the same config name) is now the newer one's.
function Ledger:add(id, files, now)
  -- one file, however its path is spelled: on Windows the case and the
  -- separators may differ between two spellings
  local windows = self.host.sys.platform() == "windows"
  local function key(p)
    return windows and self.host.fs.join(p):lower() or p
  end
  local mine = {}
  for _, p in ipairs(files) do mine[key(p)] = true end
  local kept = {}
  for _, g in ipairs(self.groups) do
    local left = {}
    for _, p in ipairs(g.files) do
      if not mine[key(p)] then left[#left + 1] = p end
    end
    if #left > 0 then
      g.files = left
      kept[#kept + 1] = g
    end
  end
  kept[#kept + 1] = { id = tostring(id), at = now, files = files }
  self.groups = kept
end

-- Removes the oldest assignments' files while there are more than
-- `keep_count` assignments (0: no limit) or they take more than
-- `keep_bytes` (0: no limit). Returns how many assignments' files went and
-- how many bytes that freed.
function Ledger:prune(keep_count, keep_bytes)
  local fs = self.host.fs
  local sizes, total = {}, 0
  for i, g in ipairs(self.groups) do
    local size = 0
    for _, p in ipairs(g.files) do
      local st = fs.stat(p)
      if st and st.type == "file" then size = size + (st.size or 0) end
    end
    sizes[i], total = size, total + size
  end
  local drop = 0
  local n = #self.groups
  while drop < n - 1 and ((keep_count > 0 and n - drop > keep_count) or
      (keep_bytes > 0 and total > keep_bytes)) do
    drop = drop + 1
    total = total - sizes[drop]
  end
  if drop == 0 then return 0, 0 end
  local freed = 0
  for i = 1, drop do
    for _, p in ipairs(self.groups[i].files) do
      -- a file only: a folder put there since is nobody's but its maker's
      local st = fs.stat(p)
      local ok, err = true, nil
      if st and st.type == "file" and self.owned(p) then
        ok, err = fs.remove(p)
      end
      if not ok then
        self.log.warn("retention: cannot remove %s: %s", p, tostring(err))
      end
    end
    freed = freed + sizes[i]
  end
  self.groups = { table.unpack(self.groups, drop + 1) }
  return drop, freed
end

return M
