-- Ending what a study leaves behind: processes that outlive it, whether
-- they stayed in its process group or left it (setsid). This process must
-- have called host.proc.keep_tree() first, so that such orphans are
-- re-parented to it (Linux); host.proc.orphans() then names only its own
-- adopted descendants, never another process of the machine.
local M = {}

local POLL = 0.05       -- seconds between looks at the orphans
local RESEND = 20       -- polls between two SIGTERMs (new orphans get one)
local KILL_TRIES = 100  -- polls after SIGKILL before giving up

-- SIGTERM to every adopted orphan, SIGKILL to those still running after
-- `grace` seconds. Returns how many orphans there were at first, and how
-- many could not be ended (0 unless one is stuck in the kernel).
function M.end_orphans(host, grace)
  local first = host.proc.orphans("SIGTERM")
  if not first or first == 0 then return 0, 0 end
  local n, polls = first, 0
  local deadline = host.time.monotonic() + grace
  while n > 0 and host.time.monotonic() < deadline do
    host.time.sleep(POLL)
    polls = polls + 1
    n = host.proc.orphans(polls % RESEND == 0 and "SIGTERM" or nil) or 0
  end
  for _ = 1, KILL_TRIES do
    if n == 0 then break end
    host.proc.orphans("SIGKILL")
    host.time.sleep(POLL)
    n = host.proc.orphans() or 0
  end
  return first, n
end

return M
