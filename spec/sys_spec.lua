-- host.sys: environment, machine facts and signal handlers.
local host = require "host"
local H = require "support.helpers"

local sys = host.sys

-- Run `sh -c script` and return what it wrote to stdout.
local function sh_output(script, env)
  local dir = H.tmpdir()
  local out = host.fs.join(dir, "out")
  local code = H.run({ argv = { "sh", "-c", script }, stdout = out, env = env })
  local data = host.fs.read(out)
  H.rm_rf(dir)
  assert.equal(0, code)
  return data
end

-- Run goliat-host on the Lua code and return what it wrote to stdout (for
-- Windows, which has no sh).
local function lua_output(code, env)
  local dir = H.tmpdir()
  local script = host.fs.join(dir, "child.lua")
  assert(host.fs.write_atomic(script, code))
  local r = H.run_host({ script }, { env = env })
  H.rm_rf(dir)
  assert.equal(0, r.code)
  return r.stdout
end

describe("host.sys", function()
  describe("environment", function()
    local NAME = "GOLIAT_SYS_SPEC_VAR"
    after_each(function()
      sys.setenv(NAME, nil)
    end)

    it("setenv, getenv and unsetting round-trip (broken if a value is not stored or "
      .. "not removed)", function()
        assert.is_nil(sys.getenv(NAME))
        assert.is_true(sys.setenv(NAME, "value with spaces = and ü"))
        assert.equal("value with spaces = and ü", sys.getenv(NAME))
        assert.is_true(sys.setenv(NAME, ""))
        assert.equal("", sys.getenv(NAME))
        assert.is_true(sys.setenv(NAME, nil))
        assert.is_nil(sys.getenv(NAME))
      end)

    it("getenv returns long values whole (broken if values are cut at a buffer size)",
      function()
        local long = string.rep("x", 5000) .. "end"
        sys.setenv(NAME, long)
        assert.equal(long, sys.getenv(NAME))
      end)

    it("setenv is seen by os.getenv and by children (broken if it changes only a "
      .. "private copy)", function()
        sys.setenv(NAME, "for-the-child")
        assert.equal("for-the-child", os.getenv(NAME))
        assert.equal("for-the-child\n", H.windows
          and lua_output('io.write(os.getenv("' .. NAME .. '"), "\\n")')
          or sh_output("echo \"$" .. NAME .. "\""))
      end)

    it("environ holds the whole environment, PATH included (broken if it is empty or "
      .. "stale)", function()
        local env = sys.environ()
        assert.is_string(env.PATH)
        assert.equal(sys.getenv("PATH"), env.PATH)
        assert.is_nil(env[NAME])
        sys.setenv(NAME, "now")
        assert.equal("now", sys.environ()[NAME])
      end)

    it("setenv raises on an invalid name (broken if 'A=B' is accepted)", function()
      assert.has_error(function()
        sys.setenv("A=B", "x")
      end)
      assert.has_error(function()
        sys.setenv("", "x")
      end)
    end)
  end)

  describe("machine facts", function()
    it("hostname is a non-empty string (broken if it fails or is empty)", function()
      local name = sys.hostname()
      assert.is_string(name)
      assert.is_true(#name > 0)
    end)

    it("random gives n bytes that differ from call to call, and refuses n outside 1..256 "
      .. "(broken if it repeats itself, returns a wrong length, or takes any n)", function()
        local seen = {}
        for _ = 1, 20 do
          local r = sys.random(16)
          assert.equal(16, #r)
          assert.is_nil(seen[r], "a 16-byte value came twice")
          seen[r] = true
        end
        -- all 256 byte values are possible: 4 KiB hits most of them
        local counts = {}
        for _ = 1, 16 do
          for b in sys.random(256):gmatch(".") do counts[b] = true end
        end
        local distinct = 0
        for _ in pairs(counts) do distinct = distinct + 1 end
        assert.is_true(distinct > 200, "distinct byte values: " .. distinct)
        assert.has_error(function() sys.random(0) end,
          "bad argument #1 to 'random' (must be from 1 to 256)")
        assert.has_error(function() sys.random(257) end,
          "bad argument #1 to 'random' (must be from 1 to 256)")
      end)

    it("pid is this process: a child's parent pid (broken if it is not the host's pid)",
      function()
        local pid = sys.pid()
        assert.equal("integer", math.type(pid))
        if H.windows then
          pending("a child cannot tell its parent's pid without sh on Windows")
        end
        assert.equal(tostring(pid) .. "\n", sh_output("echo $PPID"))
      end)

    it("cpu_count is an integer >= 1 (broken if it is 0 or a float)", function()
      local n = sys.cpu_count()
      assert.equal("integer", math.type(n))
      assert.is_true(n >= 1)
    end)

    it("total_memory is a positive integer number of bytes (broken if 0 or in KiB)",
      function()
        local bytes = sys.total_memory()
        assert.equal("integer", math.type(bytes))
        assert.is_true(bytes > 16 * 1024 * 1024)
      end)

    it("interfaces include the loopback 127.0.0.1, internal (broken if fields are "
      .. "missing or mislabelled)", function()
        local found
        for _, ifc in ipairs(sys.interfaces()) do
          assert.is_string(ifc.name)
          assert.is_string(ifc.address)
          assert.is_true(ifc.family == "inet" or ifc.family == "inet6")
          assert.is_boolean(ifc.internal)
          if ifc.address == "127.0.0.1" then
            found = ifc
          end
        end
        assert.is_not_nil(found, "no 127.0.0.1 interface")
        assert.equal("inet", found.family)
        assert.is_true(found.internal)
      end)

    it("boot_id is the same for two calls and for another process, and is the "
      .. "kernel's boot_id on Linux (broken if it changes from call to call or "
      .. "from process to process, or raises where it is unknown)", function()
        local id, msg, code = sys.boot_id()
        local again = sys.boot_id()
        local child = lua_output('local id, msg = require("host").sys.boot_id() '
          .. 'io.write(tostring(id), "\\n", tostring(msg), "\\n")')
        if id == nil then -- unknown here (another POSIX; wine's registry?)
          assert.is_string(msg)
          assert.is_string(code)
          assert.is_nil(again)
          assert.equal("nil\n" .. msg .. "\n", child)
          assert.is_true(sys.platform() ~= "linux", msg)
          return
        end
        assert.is_string(id)
        assert.is_true(#id > 0)
        assert.equal(id, again)
        assert.equal(id .. "\nnil\n", child)
        if sys.platform() == "linux" then
          assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
          assert.equal(id .. "\n", host.fs.read("/proc/sys/kernel/random/boot_id"))
        elseif H.windows then
          assert.matches("^%d+$", id) -- the registry's BootId
        end
      end)

    it("session_id gives the Windows session of this process and of another "
      .. "one, and nil with ENOSYS elsewhere (broken if --check cannot tell "
      .. "the service's session 0 from a desktop's)", function()
        assert.has_error(function() sys.session_id(-1) end)
        assert.has_error(function() sys.session_id("x") end)
        local id, console, code = sys.session_id()
        if not H.windows then
          assert.is_nil(id)
          assert.matches("no Windows sessions", console)
          assert.equal("ENOSYS", code)
          assert.is_nil(sys.session_id(sys.pid()))
          return
        end
        assert.is_true(math.type(id) == "integer" and id >= 0, tostring(id))
        assert.is_boolean(console)
        assert.same({ id, console }, { sys.session_id(sys.pid()) })
        -- a child of ours, in the same session
        local dir = H.tmpdir()
        finally(function() H.rm_rf(dir) end)
        local script = host.fs.join(dir, "sleep.lua")
        assert(host.fs.write_atomic(script, 'require("host").time.sleep(30)'))
        local p = assert(host.proc.spawn { argv = { H.host_binary(), script } })
        finally(function() p:kill(); p:wait() end)
        local child, child_console = sys.session_id(p.pid)
        assert.same({ id, console }, { child, child_console })
        -- a pid that is no process any more: ESRCH, as documented (broken
        -- if Windows' "invalid parameter" comes through as EINVAL)
        p:kill()
        p:wait()
        local none, msg, err = sys.session_id(p.pid)
        assert.is_nil(none)
        assert.is_string(msg)
        assert.equal("ESRCH", err)
        -- a pid that never named a process (Windows' pids are multiples of 4)
        none, msg, err = sys.session_id(2147483644)
        assert.is_nil(none)
        assert.is_string(msg)
        assert.equal("ESRCH", err)
      end)

    it("platform names this system (broken if it is wrong for Linux)", function()
      local p = sys.platform()
      assert.is_string(p)
      if H.windows then
        return assert.equal("windows", p)
      end
      local uname = sh_output("uname -s")
      if uname == "Linux\n" then
        assert.equal("linux", p)
      end
    end)
  end)

  describe("on_signal", function()
    it("runs the handler as a task when the signal arrives (broken if the handler is "
      .. "not called or not in a task)", function()
        if H.windows then
          pending("no SIGUSR1 on Windows: spec/windows_spec.lua tests Ctrl-Break")
        end
        local got = {}
        local h = sys.on_signal("SIGUSR1", function(name)
          local me = host.task.current()
          host.time.sleep(0.01) -- it is a task: it may wait
          got[#got + 1] = { name = name, task = me and me:name() }
        end)
        assert.equal(0, (H.run({ argv = { "kill", "-USR1", tostring(sys.pid()) } })))
        local ok = H.wait_until(function()
          return #got > 0
        end, 5)
        h:close()
        assert.is_true(ok, "the SIGUSR1 handler never ran")
        assert.equal("SIGUSR1", got[1].name)
        assert.is_string(got[1].task)
      end)

    it("each delivery runs the handler again (broken if it fires only once)", function()
      if H.windows then
        pending("no SIGUSR2 on Windows: spec/windows_spec.lua tests Ctrl-Break")
      end
      local count = 0
      local h = sys.on_signal("SIGUSR2", function()
        count = count + 1
      end)
      for i = 1, 2 do
        assert.equal(0, (H.run({ argv = { "kill", "-USR2", tostring(sys.pid()) } })))
        assert.is_true(H.wait_until(function()
          return count >= i
        end, 5), "delivery " .. i .. " not handled")
      end
      h:close()
      h:close() -- closing twice is harmless
    end)

    it("raises on an unknown signal name or a missing handler (broken if misuse is "
      .. "accepted)", function()
        local ok, msg = pcall(sys.on_signal, "SIGNOPE", function() end)
        assert.is_false(ok)
        assert.matches("signal", msg)
        assert.has_error(function()
          sys.on_signal("SIGUSR1")
        end)
        assert.has_error(function()
          sys.on_signal("SIGKILL", function() end)
        end)
      end)

    it("a handler alone does not keep the host alive (broken if the host waits for "
      .. "signals forever)", function()
        local dir = H.tmpdir()
        local script = host.fs.join(dir, "handler_only.lua")
        assert(host.fs.write_atomic(script, table.concat({
          'local host = require "host"',
          'host.sys.on_signal("SIGTERM", function() end)',
          'print("installed")',
        }, "\n")))
        local r = H.run_host({ script }, { timeout = 10 })
        H.rm_rf(dir)
        assert.is_false(r.timed_out, "the host did not exit")
        assert.equal(0, r.code)
        assert.equal("installed\n", r.stdout)
      end)
  end)
end)
