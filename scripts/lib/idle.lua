-- How long the agent has been idle, for GOLIAT_IDLE_AFTER (stop an idle VM)
-- and for the idle back-off of work lookups (GOLIAT_IDLE_POLL_MAX).
--
-- The agent is idle while the dashboard answers its lookups and none of
-- the work is for it, and nothing waits to be sent. The clock runs only
-- from one such answer to the next: an outage, a low disk or a backlog
-- pauses it (it neither runs nor starts again), and work resets it.
-- Times are monotonic seconds.
local M = {}

local Idle = {}
Idle.__index = Idle

-- s: the agent's settings (idle_after, idle_poll_max, idle_quiet_polls).
function M.new(s)
  return setmetatable({ s = s, total = 0, mark = nil, fired = false,
    quiet = nil, empty = 0 }, Idle)
end

-- A lookup answered with no work for this agent. `busy`: something still
-- waits to be sent (then the clock does not run).
function Idle:answered_empty(now, busy)
  self.empty = self.empty + 1
  if busy then
    self.mark = nil
    return
  end
  if self.mark then self.total = self.total + math.max(0, now - self.mark) end
  self.mark = now
end

-- The dashboard could not be asked (an outage, a low disk): the clock
-- stops until the next answer.
function Idle:pause()
  self.mark = nil
end

-- Work came: idle from zero again, and the stop may run again later.
function Idle:work()
  self.total, self.mark, self.fired, self.quiet, self.empty =
    0, nil, false, nil, 0
end

-- Seconds idle so far.
function Idle:seconds()
  return self.total
end

-- Whether the idle stop is due now (once, until work has come and gone).
function Idle:due()
  return self.s.idle_after > 0 and not self.fired and
    self.total >= self.s.idle_after
end

-- Seconds left before the idle stop, or nil when it is off or has run.
function Idle:left()
  if self.s.idle_after <= 0 or self.fired then return nil end
  return math.max(0, self.s.idle_after - self.total)
end

-- The delay before the next lookup after one with no work: `base` (the
-- poll interval) for idle_quiet_polls empty lookups in a row, then
-- doubling at each one up to idle_poll_max.
function Idle:delay(base)
  if self.empty <= self.s.idle_quiet_polls or
      self.s.idle_poll_max <= base then
    self.quiet = nil
    return base
  end
  self.quiet = math.min(self.s.idle_poll_max, (self.quiet or base) * 2)
  return self.quiet
end

return M
