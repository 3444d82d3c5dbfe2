-- goliat-host scripts/agent.lua --test [busted options]: runs the policy
-- specs (spec/policy.list: the real agent.lua on a fake host and clock) on
-- this machine, against this agent.lua and its lib/ and protocol/, edited
-- or not. The specs are shipped beside scripts/ (spec/, in the Debian
-- package and the Windows zip); busted comes from the lua-busted package on
-- Linux and from lua\ beside goliat-host.exe on Windows. Exit code 0 when
-- every spec passes; otherwise nonzero (busted's own: 1 here), or 2 when
-- the specs or busted cannot be found.
local settings_lib = require "lib.settings"

local M = {}

-- The spec folder beside scripts/, and the file names it lists, or nil
-- and why.
function M.find(host)
  local fs = host.fs
  local scripts = settings_lib.scripts_dir(host)
  local root = scripts:gsub("[/\\][^/\\]+[/\\]?$", "")
  if root == scripts then root = "." end -- "scripts": the current folder
  local dir = fs.join(root, "spec")
  local list = fs.read(fs.join(dir, "policy.list"))
  if not list then
    return nil, "the policy specs are not installed: no " ..
      fs.join(dir, "policy.list") .. " (reinstall the agent's package or zip)"
  end
  local files = {}
  for line in list:gmatch("[^\r\n]+") do
    local name = line:match("^%s*(.-)%s*$")
    if name ~= "" and not name:match("^#") then
      local path = fs.join(dir, name)
      if not fs.exists(path) then
        return nil, "a policy spec is missing: " .. path
      end
      files[#files + 1] = path
    end
  end
  return { dir = dir, scripts = scripts, files = files }
end

-- Runs busted on the policy specs; returns only when they all pass (busted
-- ends the process with the failure count otherwise).
function M.run(host, options)
  local found, err = M.find(host)
  if not found then
    io.stderr:write("goliat-agent --test: ", err, "\n")
    return 2
  end
  local loaded, why = pcall(require, "busted.runner")
  if not loaded then
    io.stderr:write("goliat-agent --test: busted cannot be loaded (Linux: ",
      "apt-get install lua-busted; Windows: the zip's lua\\ folder beside ",
      "goliat-host.exe): ", (tostring(why):gsub("%s*[\r\n]+%s*", " ")), "\n")
    return 2
  end
  local fs = host.fs
  io.stdout:write(string.format("policy specs: %d files in %s, against %s\n",
    #found.files, found.dir, fs.join(found.scripts, "agent.lua")))
  -- busted reads its command line from the global `arg`; the module path
  -- is given whole, so that no .busted in the current folder can point
  -- the specs at other scripts
  local argv = { [0] = "goliat-agent --test",
    "--lpath=" .. fs.join(found.scripts, "?.lua") .. ";" ..
      fs.join(found.dir, "?.lua"),
    "--config-file=" .. fs.join(found.dir, "policy.busted") }
  if host.sys.platform() == "windows" then
    argv[#argv + 1] = "--output=plainTerminal" -- the console's code page
  end
  for _, o in ipairs(options) do argv[#argv + 1] = o end
  for _, f in ipairs(found.files) do argv[#argv + 1] = f end
  arg = argv -- luacheck: ignore (busted's interface is the global)
  host.task.set_limit(120) -- specs run long stretches without yielding
  require "busted.runner" ({ standalone = false })
  io.stdout:write("policy specs: PASS\n")
  return 0
end

return M
