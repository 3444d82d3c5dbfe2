-- The settings file (README.md, "Settings file"): KEY=VALUE lines with the
-- names of the environment variables, # comments and blank lines allowed.
-- The environment wins over the file, and the file over the defaults of
-- agent.lua (lib/settings.lua applies that order).
local M = {}

M.NAME = "goliat-agent.conf"
M.PACKAGED = "/etc/goliat-host/goliat-agent.conf" -- the Debian package's

local function trim(s)
  return s and s:match("^%s*(.-)%s*$")
end

-- Where the settings file is: GOLIAT_CONFIG, else goliat-agent.conf in
-- `scripts_dir` (beside agent.lua), else the packaged path (not on
-- Windows). Returns the path and whether it was named explicitly (then it
-- must exist), or nil when there is none.
function M.find(host, scripts_dir)
  local named = trim(host.sys.getenv("GOLIAT_CONFIG"))
  if named and named ~= "" then return named, true end
  local beside = host.fs.join(scripts_dir, M.NAME)
  if host.fs.exists(beside) then return beside, false end
  if host.sys.platform() ~= "windows" and host.fs.exists(M.PACKAGED) then
    return M.PACKAGED, false
  end
  return nil
end

-- The file's settings: { NAME = { value = "...", line = n } }, or nil and
-- "<path>:<line>: why". `known` maps each accepted name to true. A line is
-- never echoed in an error: it may hold the token.
function M.parse(text, path, known)
  -- UTF-16 (PowerShell's `>`, Notepad's "Unicode"): its BOM, or a zero
  -- byte beside each character of an ASCII text without one
  if text:find("^\255\254") or text:find("^\254\255") or
      text:find("^%Z%z%Z%z") or text:find("^%z%Z%z%Z") then
    return nil, path .. ":1: the file is saved as UTF-16 (PowerShell's " ..
      "'>' and Notepad's \"Unicode\" do that): save it as UTF-8 (in " ..
      "Notepad: Save As, Encoding UTF-8; in PowerShell: Set-Content " ..
      "-Encoding utf8)"
  end
  text = text:gsub("^\239\187\191", "") -- the BOM Notepad writes
  local out, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    line = line:gsub("\r$", "")
    local bare = trim(line)
    if bare ~= "" and bare:sub(1, 1) ~= "#" then
      local key, value = bare:match("^([%w_]+)%s*=%s*(.-)$")
      local where = string.format("%s:%d: ", path, n)
      if not key then
        return nil, where .. "expected KEY=VALUE (or a # comment)"
      elseif not known[key] then
        return nil, where .. "unknown setting " .. key .. " (the names " ..
          "are those of the environment variables, README.md \"Settings\")"
      elseif out[key] then
        return nil, string.format("%s%s is set twice (also on line %d)",
          where, key, out[key].line)
      end
      -- one pair of quotes around the whole value goes, as in shell files
      local q = value:sub(1, 1)
      if #value >= 2 and (q == '"' or q == "'") and value:sub(-1) == q then
        value = value:sub(2, -2)
      end
      out[key] = { value = value, line = n }
    end
  end
  return out
end

-- Read and parse the settings file, if there is one. Returns the settings
-- (as parse does, empty without a file) and the path, or nil and a message.
function M.load(host, scripts_dir, known)
  local path, named = M.find(host, scripts_dir)
  if not path then return {}, nil end
  local text, err = host.fs.read(path)
  if not text then
    if not named and not host.fs.exists(path) then return {}, nil end
    return nil, string.format("%s: cannot read the settings file %s: %s",
      named and "GOLIAT_CONFIG" or "settings file", path, tostring(err))
  end
  local values, perr = M.parse(text, path, known)
  if not values then return nil, perr end
  return values, path
end

return M
