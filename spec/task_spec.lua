-- host.task: spawning, joining, failures, the watchdog, and how the host
-- process itself ends (exit codes, errors reported with file:line).
local host = require "host"
local H = require "support.helpers"

local THIS = "task_spec%.lua:%d+:"

describe("host.task", function()
  describe("spawn and join", function()
    it("runs spawned functions concurrently (broken if spawn runs fn to its end at once)",
      function()
        local events = {}
        local b_started = false
        local a = host.task.spawn(function()
          events[#events + 1] = "a starts"
          -- a cannot finish before b has started: only possible if both
          -- are alive at the same time
          assert(H.wait_until(function()
            return b_started
          end, 5), "b never started while a was waiting")
          events[#events + 1] = "a ends"
        end)
        local b = host.task.spawn(function()
          b_started = true
          events[#events + 1] = "b starts"
          host.time.sleep(0.01)
          events[#events + 1] = "b ends"
        end)
        assert.is_true((a:join()))
        assert.is_true((b:join()))
        assert.same({ "a starts", "b starts" }, { events[1], events[2] })
        assert.equal(4, #events)
      end)

    it("does not run the function inside spawn (broken if spawn resumes at once)", function()
      local ran = false
      local t = host.task.spawn(function()
        ran = true
      end)
      assert.is_false(ran)
      assert.equal("ready", t:status())
      t:join()
      assert.is_true(ran)
    end)

    it("join returns true and every result, passing the arguments (broken if results or "
      .. "arguments are dropped)", function()
        local t = host.task.spawn(function(x, y, z)
          host.time.sleep(0.01)
          return x + y, "two", nil, z
        end, 1, 2, "four")
        local r = table.pack(t:join())
        assert.equal(5, r.n)
        assert.same({ true, 3, "two", nil, "four" }, { r[1], r[2], r[3], r[4], r[5] })
      end)

    it("join of a finished task returns the same results again (broken if the result "
      .. "is not kept)", function()
        local t = host.task.spawn(function()
          return "v"
        end)
        assert.same({ true, "v" }, { t:join() })
        assert.same({ true, "v" }, { t:join() })
      end)

    it("join from several tasks wakes all of them (broken if only one joiner is woken)",
      function()
        local gate = false
        local target = host.task.spawn(function()
          assert(H.wait_until(function()
            return gate
          end))
          return 42
        end)
        local joiners = {}
        for i = 1, 3 do
          joiners[i] = host.task.spawn(function()
            return target:join()
          end)
        end
        host.task.yield()
        host.task.yield()
        gate = true
        for i = 1, 3 do
          assert.same({ true, true, 42 }, { joiners[i]:join() })
        end
      end)

    it("names tasks: given names and default names (broken if name() is lost)", function()
      local named = host.task.spawn("worker-1", function()
        return host.task.current():name()
      end)
      local unnamed = host.task.spawn(function()
        return 1
      end)
      assert.equal("worker-1", named:name())
      assert.same({ true, "worker-1" }, { named:join() })
      assert.is_string(unnamed:name())
      assert.is_true(#unnamed:name() > 0)
      unnamed:join()
    end)

    it("current() is the running task, the main task in an it body (broken if current "
      .. "returns nil inside a task)", function()
        local me = host.task.current()
        assert.is_not_nil(me)
        assert.equal("running", me:status())
        local inner
        local t = host.task.spawn(function()
          inner = host.task.current()
        end)
        t:join()
        assert.equal(t, inner)
      end)

    it("count() counts unfinished tasks (broken if finished tasks are not subtracted)",
      function()
        local before = host.task.count()
        local t = host.task.spawn(host.time.sleep, 0.01)
        assert.equal(before + 1, host.task.count())
        t:join()
        assert.equal(before, host.task.count())
      end)

    it("spawn raises on a missing function (broken if misuse is accepted)", function()
      assert.has_error(function()
        host.task.spawn(42)
      end)
      assert.has_error(function()
        host.task.spawn("name", "not a function")
      end)
    end)

    it("a task cannot join itself (broken if it would wait forever)", function()
      local t = host.task.spawn(function()
        local ok, err = pcall(function()
          return host.task.current():join()
        end)
        return ok, err
      end)
      local _, ok, err = t:join()
      assert.is_false(ok)
      assert.matches("cannot join itself", err)
    end)
  end)

  describe("failures", function()
    it("join of a failing task returns false and the message with file:line (broken if "
      .. "the position is lost)", function()
        local t = host.task.spawn(function()
          host.time.sleep(0.01)
          error("boom in task")
        end)
        local ok, msg = t:join()
        assert.is_false(ok)
        assert.matches(THIS .. " boom in task", msg)
        assert.equal("failed", t:status())
      end)

    it("a task failing with a non-string error still joins false (broken if the error "
      .. "value crashes the report)", function()
        local t = host.task.spawn(function()
          error({ code = 1 })
        end)
        local ok = t:join()
        assert.is_false(ok)
      end)

    it("an error in one task leaves the others running (broken if a failure stops the "
      .. "scheduler or its siblings)", function()
        local ticks = 0
        local failing
        local ticker = host.task.spawn("ticker", function()
          for _ = 1, 6 do
            host.time.sleep(0.02)
            ticks = ticks + 1
          end
          return failing:status()
        end)
        failing = host.task.spawn("failing", function()
          host.time.sleep(0.03)
          error("sibling failed")
        end)
        local ok, status_seen = ticker:join()
        assert.is_true(ok)
        assert.equal(6, ticks)
        assert.equal("failed", status_seen) -- it failed before the ticker ended
        assert.is_false((failing:join()))
      end)
  end)

  describe("watchdog", function()
    local old_limit
    before_each(function()
      old_limit = host.task.set_limit(0.3)
    end)
    after_each(function()
      host.task.set_limit(old_limit)
    end)

    it("set_limit returns the previous limit and rejects negative values (broken if the "
      .. "old value is not returned)", function()
        assert.equal(0.3, host.task.set_limit(0.4))
        assert.equal(0.4, host.task.set_limit(0.3))
        assert.has_error(function()
          host.task.set_limit(-1)
        end)
      end)

    it("stops a task in an endless loop; join gives false, file:line and 'without "
      .. "yielding'; other tasks continue (broken if the watchdog does not fire)", function()
        local ticks = 0
        local ticker = host.task.spawn(function()
          for _ = 1, 5 do
            host.time.sleep(0.02)
            ticks = ticks + 1
          end
        end)
        local looping = host.task.spawn("looping", function()
          while true do end
        end)
        local ok, msg = looping:join()
        assert.is_false(ok)
        assert.matches(THIS, msg)
        assert.matches("without yielding", msg)
        assert.equal("failed", looping:status())
        assert.is_true((ticker:join()))
        assert.equal(5, ticks)
        -- the host still schedules new tasks afterwards
        assert.same({ true, "after" }, { host.task.spawn(function()
          return "after"
        end):join() })
      end)

    it("cannot be caught by pcall (broken if the stop is an ordinary error)", function()
      local caught = 0
      local t = host.task.spawn(function()
        while true do
          local ok = pcall(function()
            while true do end
          end)
          if not ok then
            caught = caught + 1
          end
        end
      end)
      local ok, msg = t:join()
      assert.is_false(ok)
      assert.matches("without yielding", msg)
      assert.equal(0, caught)
    end)

    it("stops a loop inside a coroutine the task created (broken if only the task's own "
      .. "thread is watched)", function()
        local r = H.run_host({ "spec/fixtures/hang.lua", "coroutine" },
          { env = { GOLIAT_TASK_LIMIT = "0.3" }, timeout = 10 })
        assert.is_false(r.timed_out, "the host hung: " .. r.stderr)
        assert.matches("joined false: [^\n]*without yielding", r.stdout)
        assert.matches("ticks 5", r.stdout)
        assert.equal(0, r.code)
      end)

    it("leaves a task that behaves without a hook, so that its Lua runs at "
      .. "full speed, while the coroutines a task makes itself are counted "
      .. "(broken if every instruction of every task pays for the watchdog)",
      function()
        local t = host.task.spawn(function()
          local co = coroutine.create(function() return debug.gethook() end)
          local _, co_hook, co_mask = coroutine.resume(co)
          local wrapped = coroutine.wrap(function() return debug.gethook() end)
          local _, w_mask = wrapped()
          local own = debug.gethook()
          return own, co_hook ~= nil and co_mask, w_mask
        end)
        local ok, own, co_mask, w_mask = t:join()
        assert.is_true(ok, tostring(own))
        assert.is_nil(own)
        assert.equal("", co_mask) -- a count hook: no call, return or line
        assert.equal("", w_mask)
      end)

    it("coroutine.wrap keeps its behaviour: values in and out, errors raised "
      .. "with the caller's position, a dead coroutine refused (broken if the "
      .. "watchdog's wrap differs from Lua's)", function()
        local gen = coroutine.wrap(function(a)
          local b = coroutine.yield(a + 1)
          return b * 2, "done"
        end)
        assert.equal(2, gen(1))
        local x, y = gen(5)
        assert.equal(10, x)
        assert.equal("done", y)
        local ok, err = pcall(gen)
        assert.is_false(ok)
        assert.matches("cannot resume dead coroutine", err)
        local bad = coroutine.wrap(function() error("boom") end)
        ok, err = pcall(bad)
        assert.is_false(ok)
        assert.matches("boom", err)
        local obj = {}
        ok, err = pcall(coroutine.wrap(function() error(obj) end))
        assert.is_false(ok)
        assert.equal(obj, err)
        local closed = false
        local tbc = coroutine.wrap(function()
          local _ <close> = setmetatable({}, { __close = function()
            closed = true end })
          error("with a variable to close")
        end)
        assert.is_false((pcall(tbc)))
        assert.is_true(closed)
      end)

    it("stops a loop below a C function even when pcall retries it (broken if an error "
      .. "that pcall catches is all the watchdog does)", function()
        local r = H.run_host({ "spec/fixtures/hang.lua", "cboundary" },
          { env = { GOLIAT_TASK_LIMIT = "0.3" }, timeout = 10 })
        assert.is_false(r.timed_out, "the host hung: " .. r.stderr)
        assert.matches("joined false: [^\n]*without yielding", r.stdout)
        assert.matches("ticks 5", r.stdout)
        assert.equal(0, r.code)
      end)

    it("does not stop a task that yields regularly (broken if the limit counts total "
      .. "run time instead of time between yields)", function()
        local t = host.task.spawn(function()
          local t0 = host.time.monotonic()
          while host.time.monotonic() - t0 < 0.6 do
            host.task.yield()
          end
          return "survived"
        end)
        assert.same({ true, "survived" }, { t:join() })
      end)
  end)

  describe("yield and waiting", function()
    it("yield lets another ready task run (broken if yield resumes the caller at once)",
      function()
        local ran = false
        local t = host.task.spawn(function()
          ran = true
        end)
        assert.is_false(ran)
        host.task.yield()
        assert.is_true(ran)
        t:join()
      end)

    it("two yielding tasks take turns (broken if yield does not go to the back of the "
      .. "queue)", function()
        local trace = {}
        local function worker(tag)
          for i = 1, 3 do
            trace[#trace + 1] = tag .. i
            host.task.yield()
          end
        end
        local a = host.task.spawn(worker, "a")
        local b = host.task.spawn(worker, "b")
        a:join()
        b:join()
        assert.same({ "a1", "b1", "a2", "b2", "a3", "b3" }, trace)
      end)

    it("sleep inside a coroutine the script created raises 'must be called from a task' "
      .. "(broken if it yields the wrong coroutine)", function()
        local co = coroutine.create(function()
          host.time.sleep(0.01)
          return "slept"
        end)
        local ok, msg = coroutine.resume(co)
        assert.is_false(ok)
        assert.matches("must be called from a task", msg)
        local ok2, msg2 = coroutine.resume(coroutine.create(function()
          host.task.yield()
        end))
        assert.is_false(ok2)
        assert.matches("must be called from a task", msg2)
      end)

    it("join inside a plain coroutine raises instead of waiting (broken if it yields the "
      .. "coroutine)", function()
        local t = host.task.spawn(host.time.sleep, 0.01)
        local ok, msg = coroutine.resume(coroutine.create(function()
          return t:join()
        end))
        assert.is_false(ok)
        assert.matches("must be called from a task", msg)
        t:join()
      end)
  end)

  describe("events", function()
    it("set wakes every task waiting at that moment, with true "
      .. "(broken if set wakes only one, or none, or the wait returns false)", function()
        local ev = host.task.event()
        local got = {}
        local function waiter(tag)
          local r = ev:wait(30)
          got[#got + 1] = { tag, r }
        end
        local a = host.task.spawn(waiter, "a")
        local b = host.task.spawn(waiter, "b")
        local c = host.task.spawn(function()
          local r = ev:wait()
          got[#got + 1] = { "c", r }
        end)
        host.task.yield() -- all three are waiting now
        assert.same({}, got)
        assert.equal(3, ev:set())
        a:join(); b:join(); c:join()
        table.sort(got, function(x, y) return x[1] < y[1] end)
        assert.same({ { "a", true }, { "b", true }, { "c", true } }, got)
      end)

    it("is a pulse: a set with nobody waiting is not remembered, and a wait ends false "
      .. "after its timeout (broken if set latches, or a timeout never fires)", function()
        local ev = host.task.event()
        assert.equal(0, ev:set())
        assert.is_false(ev:wait(0.02))
        -- the timed-out waiter is gone: a later set wakes nobody
        assert.equal(0, ev:set())
      end)

    it("a waiter woken by set is not woken again by its timeout, and one that timed "
      .. "out is not woken by a later set (broken if a wait returns twice)", function()
        local ev = host.task.event()
        local results = {}
        local t = host.task.spawn(function()
          results[#results + 1] = ev:wait(0.05)
          results[#results + 1] = ev:wait(0.01)
          host.time.sleep(0.1) -- past the first wait's timeout
        end)
        host.task.yield()
        assert.equal(1, ev:set())
        assert.is_true(t:join())
        assert.same({ true, false }, results)
        assert.equal(0, ev:set())
      end)

    it("wait rejects a negative timeout and a call from a plain coroutine (broken if "
      .. "either waits)", function()
        local ev = host.task.event()
        assert.has_error(function() ev:wait(-1) end, "bad argument #1 to 'wait' "
          .. "(seconds must be >= 0)")
        local ok, msg = coroutine.resume(coroutine.create(function()
          return ev:wait(1)
        end))
        assert.is_false(ok)
        assert.matches("must be called from a task", msg)
      end)

    it("an event collected while nobody waits, and a host ending while a task waits, "
      .. "leave nothing behind (broken if a waiter leaks; ASan and valgrind see it)",
      function()
        for _ = 1, 50 do
          local ev = host.task.event()
          local t = host.task.spawn(function() return ev:wait(0.001) end)
          t:join()
        end
        collectgarbage()
        local dir = H.tmpdir()
        local script = host.fs.join(dir, "events.lua")
        assert(host.fs.write_atomic(script, [[
          local host = require "host"
          local ev = host.task.event()
          host.task.spawn(function() ev:wait() end)
          host.task.spawn(function() ev:wait(60) end)
          host.time.sleep(0.01)
          print("waiting")
          os.exit(0)
        ]]))
        local r = H.run_host({ script })
        H.rm_rf(dir)
        assert.is_false(r.timed_out)
        assert.equal(0, r.code, r.stderr)
        assert.matches("waiting", r.stdout)
      end)
  end)

  describe("status", function()
    it("goes ready -> running -> waiting -> done (broken if a state is reported wrongly)",
      function()
        local gate = false
        local seen_inside
        local blocker = host.task.spawn(function()
          while not gate do
            host.task.yield()
          end
        end)
        local t = host.task.spawn(function()
          seen_inside = host.task.current():status()
          blocker:join()
        end)
        assert.equal("ready", t:status())
        for _ = 1, 3 do
          host.task.yield()
        end
        assert.equal("running", seen_inside)
        assert.equal("waiting", t:status())
        gate = true
        assert.is_true((t:join()))
        assert.equal("done", t:status())
        assert.equal("done", blocker:status())
        assert.matches("done", tostring(t))
      end)

    it("is failed after an error (broken if a failed task looks done)", function()
      local t = host.task.spawn(error, "x")
      t:join()
      assert.equal("failed", t:status())
    end)
  end)
end)

describe("the goliat-host process", function()
  it("--version exits 0 and prints 'goliat-host' (broken if the option is not handled)",
    function()
      local r = H.run_host({ "--version" })
      assert.equal(0, r.code)
      assert.matches("^goliat%-host %d+%.%d+%.%d+", r.stdout)
    end)

  it("a script with a syntax error exits non-zero, naming file and line (broken if the "
    .. "load error is lost)", function()
      local dir = H.tmpdir()
      local script = host.fs.join(dir, "broken_syntax.lua")
      assert(host.fs.write_atomic(script, "local a = 1\nlocal b = 2\nlocal c = = 3\n"))
      local r = H.run_host({ script })
      H.rm_rf(dir)
      assert.is_not_nil(r.code)
      assert.is_not.equal(0, r.code)
      assert.matches("broken_syntax%.lua:3:", r.stderr)
    end)

  it("a main chunk that fails at run time exits 1 at once, naming file and line (broken "
    .. "if the host waits for other tasks or exits 0)", function()
      local r = H.run_host({ "spec/fixtures/runtime_error.lua" }, { timeout = 10 })
      assert.is_false(r.timed_out)
      assert.equal(1, r.code)
      assert.matches("runtime_error%.lua:6: fixture failed on purpose", r.stderr)
      assert.is_true(r.elapsed < 8)
    end)

  it("a failing spawned task is logged with file:line but the host exits 0 (broken if a "
    .. "task error ends the host)", function()
      local r = H.run_host({ "spec/fixtures/task_error.lua" })
      assert.equal(0, r.code)
      assert.matches("task_error%.lua:5: task failed on purpose", r.stderr)
      assert.matches("joined failed", r.stdout)
    end)

  it("a main chunk stopped by the watchdog exits 1 (broken if a hung script ends with "
    .. "success)", function()
      local r = H.run_host({ "spec/fixtures/hang.lua", "main" },
        { env = { GOLIAT_TASK_LIMIT = "0.3" }, timeout = 10 })
      assert.is_false(r.timed_out)
      assert.matches("hang%.lua:%d+:[^\n]*without yielding", r.stderr)
      assert.equal(1, r.code)
    end)

  it("os.exit(7) in the main chunk gives exit code 7 (broken if os.exit is not the host's)",
    function()
      local r = H.run_host({ "spec/fixtures/exit_code.lua", "7" })
      assert.is_false(r.timed_out)
      assert.equal(7, r.code)
    end)

  it("os.exit(7) in a task ends the host with 7 while others sleep (broken if exit "
    .. "waits for the other tasks)", function()
      local r = H.run_host({ "spec/fixtures/exit_code.lua", "7", "task" }, { timeout = 10 })
      assert.is_false(r.timed_out)
      assert.equal(7, r.code)
      assert.is_nil(r.stdout:find("not reached", 1, true))
    end)
end)
