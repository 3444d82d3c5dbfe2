-- host.time: sleep, the monotonic clock and the wall clock. Only lower
-- bounds and generous upper bounds: the machine is shared and noisy.
local host = require "host"

local function busy(seconds)
  local t0 = host.time.monotonic()
  while host.time.monotonic() - t0 < seconds do end
end

describe("host.time", function()
  describe("sleep", function()
    it("waits at least about the duration (broken if the timer fires early)", function()
      local t0 = host.time.monotonic()
      host.time.sleep(0.2)
      local elapsed = host.time.monotonic() - t0
      assert.is_true(elapsed >= 0.18, "slept only " .. elapsed .. " s")
      assert.is_true(elapsed < 10, "slept " .. elapsed .. " s")
    end)

    it("waits the full duration even after the task ran for a while (broken if the "
      .. "timer counts from a stale loop time)", function()
        busy(0.3)
        local t0 = host.time.monotonic()
        host.time.sleep(0.2)
        local elapsed = host.time.monotonic() - t0
        assert.is_true(elapsed >= 0.18, "slept only " .. elapsed .. " s")
      end)

    it("sleep(0) returns, and other tasks run meanwhile (broken if sleep blocks the "
      .. "loop)", function()
        host.time.sleep(0)
        local ran = false
        local t = host.task.spawn(function()
          ran = true
        end)
        host.time.sleep(0.05)
        assert.is_true(ran)
        t:join()
      end)

    it("sleeps of several tasks overlap (broken if sleeps run one after another)",
      function()
        local t0 = host.time.monotonic()
        local tasks = {}
        for i = 1, 10 do
          tasks[i] = host.task.spawn(host.time.sleep, 0.4)
        end
        for i = 1, 10 do
          assert.is_true((tasks[i]:join()))
        end
        local elapsed = host.time.monotonic() - t0 -- one after another: 4 s
        assert.is_true(elapsed >= 0.38, "only " .. elapsed .. " s")
        assert.is_true(elapsed < 3, "the sleeps did not overlap: " .. elapsed .. " s")
      end)

    it("raises on a negative duration (broken if it is accepted)", function()
      local ok, msg = pcall(host.time.sleep, -1)
      assert.is_false(ok)
      assert.matches(">= 0", msg)
      assert.has_error(function()
        host.time.sleep(-0.001)
      end)
    end)

    it("raises on a non-number (broken if it is treated as 0)", function()
      assert.has_error(function()
        host.time.sleep("soon")
      end)
      assert.has_error(function()
        host.time.sleep()
      end)
    end)
  end)

  describe("monotonic", function()
    it("never decreases (broken if it is a wall clock or wraps)", function()
      local last = host.time.monotonic()
      for i = 1, 20000 do
        local now = host.time.monotonic()
        assert(now >= last, "went back at sample " .. i)
        last = now
        if i % 5000 == 0 then
          host.time.sleep(0.001)
        end
      end
    end)

    it("advances with a sleep (broken if it is frozen or in the wrong unit)", function()
      local t0 = host.time.monotonic()
      host.time.sleep(0.1)
      local d = host.time.monotonic() - t0
      assert.is_true(d >= 0.09 and d < 10, "advanced " .. d)
    end)
  end)

  describe("now", function()
    it("is close to os.time() (broken if not seconds since 1970)", function()
      local now = host.time.now()
      assert.is_number(now)
      assert.is_true(math.abs(now - os.time()) < 2)
    end)

    it("has sub-second precision (broken if it is truncated to whole seconds)", function()
      local seen_fraction = false
      for _ = 1, 5 do
        local now = host.time.now()
        if now ~= math.floor(now) then
          seen_fraction = true
          break
        end
        host.time.sleep(0.013)
      end
      assert.is_true(seen_fraction)
    end)
  end)
end)
