-- Stand-in for luasystem's C module `system.core`, for busted in the
-- Windows zip (lua\ beside goliat-host.exe: `agent.lua --test`) and under
-- wine (tests/windows/wine.sh). busted uses gettime, monotime and sleep. Debian's lua-system
-- source package could not be fetched from the archive mirror when the
-- Windows build was written, so this is built on the host module instead.
local host = require "host"

local M = { _VERSION = "goliat-host stand-in" }

function M.gettime()
  return host.time.now()
end

function M.monotime()
  return host.time.monotonic()
end

-- Waits like host.time.sleep inside a task; elsewhere (never in the
-- runner) it spins.
function M.sleep(s)
  if host.task.current() then
    return host.time.sleep(s)
  end
  local t0 = host.time.monotonic()
  while host.time.monotonic() - t0 < s do end
end

return M
