-- host.proc: child processes and their whole trees. Bounded loops and
-- lower bounds or generous upper bounds only: the machine is shared.
local host = require "host"
local H = require "support.helpers"

local proc = host.proc

local function spawn(opts)
  local p, msg = proc.spawn(opts)
  assert(p, msg)
  return p
end

local function busy(seconds)
  local t0 = host.time.monotonic()
  while host.time.monotonic() - t0 < seconds do end
end

describe("host.proc", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(function()
    H.rm_rf(dir)
  end)

  local function path(name)
    return host.fs.join(dir, name)
  end

  -- Wait (bounded) until file holds a pid; return it.
  local function read_pid(file)
    local pid
    assert(H.wait_until(function()
      local s = host.fs.read(file)
      pid = s and tonumber(s:match("^(%d+)\n"))
      return pid ~= nil
    end, 5), "no pid in " .. file)
    return pid
  end

  describe("exit status", function()
    it("wait returns the exit code and no signal (broken if the code is lost)",
      function()
        local p = spawn({ argv = { "sh", "-c", "exit 3" } })
        assert.equal("integer", math.type(p.pid))
        assert.is_true(p.pid > 0)
        local code, sig = p:wait()
        assert.equal(3, code)
        assert.is_nil(sig)
      end)

    it("sees a child's exit promptly (broken if the exit is noticed only by slow "
      .. "polling or never)", function()
        local t0 = host.time.monotonic()
        local p = spawn({ argv = { "sh", "-c", "sleep 0.2; exit 5" } })
        assert.is_true(p:running())
        local code, sig = p:wait()
        local elapsed = host.time.monotonic() - t0
        assert.equal(5, code)
        assert.is_nil(sig)
        assert.is_true(elapsed >= 0.15, "returned before the child could exit")
        assert.is_true(elapsed < 5, "took " .. elapsed .. " s")
      end)

    it("a second wait, and running(), after the exit return at once the same values "
      .. "(broken if the status is not kept)", function()
        local p = spawn({ argv = { "sh", "-c", "exit 4" } })
        assert.same({ 4 }, { p:wait() })
        assert.is_false(p:running())
        local t0 = host.time.monotonic()
        local code, sig = p:wait()
        assert.equal(4, code)
        assert.is_nil(sig)
        assert.is_true(host.time.monotonic() - t0 < 3)
        assert.matches("exited", tostring(p))
      end)

    it("wakes every task waiting on the same process (broken if only one waiter is "
      .. "woken)", function()
        local p = spawn({ argv = { "sh", "-c", "sleep 0.1; exit 6" } })
        local waiters = {}
        for i = 1, 3 do
          waiters[i] = host.task.spawn(function()
            return p:wait()
          end)
        end
        for i = 1, 3 do
          assert.same({ true, 6 }, { waiters[i]:join() })
        end
      end)

    it("a child killed by a signal gives nil and the signal name (broken if it looks "
      .. "like an exit code)", function()
        local p = spawn({ argv = { "sleep", "30" } })
        assert.is_true(p:signal("SIGTERM"))
        local code, sig = p:wait()
        assert.is_nil(code)
        assert.equal("SIGTERM", sig)

        local q = spawn({ argv = { "sleep", "30" } })
        assert.is_true(q:kill())
        code, sig = q:wait()
        assert.is_nil(code)
        assert.equal("SIGKILL", sig)
        assert.is_false(q:running())
      end)

    it("wait and terminate raise inside a plain coroutine (broken if they yield the "
      .. "wrong coroutine)", function()
        local p = spawn({ argv = { "sleep", "30" } })
        local ok, msg = coroutine.resume(coroutine.create(function()
          return p:wait()
        end))
        assert.is_false(ok)
        assert.matches("must be called from a task", msg)
        p:kill()
        p:wait()
      end)
  end)

  describe("options", function()
    it("stdout never writes through a symbolic link planted at its path "
      .. "(broken if root could be made to append to any file)", function()
        if H.windows then
          pending("symbolic links: creating one needs a privilege on Windows")
        end
        local target = path("target.txt")
        host.fs.write_atomic(target, "kept")
        assert.equal(0, (H.run({ argv = { "ln", "-s", target, path("out") } })))
        local p, err = proc.spawn({ argv = { "echo", "hi" }, stdout = path("out") })
        assert.is_nil(p)
        assert.matches("symbolic links", err)
        assert.equal("kept", host.fs.read(target))
      end)

    it("env adds and overrides variables while the host's PATH is still inherited "
      .. "(broken if env replaces the environment)", function()
        local out = path("env.txt")
        local p = spawn({
          argv = { "sh", "-c", 'printf "%s|%s|%s" "$GOLIAT_A" "$HOME" "$PATH"' },
          env = { GOLIAT_A = "added", HOME = "/overridden" },
          stdout = out,
        })
        assert.equal(0, (p:wait()))
        assert.equal("added|/overridden|" .. os.getenv("PATH"), host.fs.read(out))
      end)

    it("without env the child inherits the environment as is (broken if it is "
      .. "emptied)", function()
        local out = path("env.txt")
        local p = spawn({ argv = { "sh", "-c", 'printf "%s" "$PATH"' }, stdout = out })
        assert.equal(0, (p:wait()))
        assert.equal(os.getenv("PATH"), host.fs.read(out))
      end)

    it("cwd sets the working directory (broken if it is ignored)", function()
      local out = path("pwd.txt")
      assert(host.fs.mkdir_p(path("sub")))
      local p = spawn({ argv = { "pwd" }, cwd = path("sub"), stdout = out })
      assert.equal(0, (p:wait()))
      assert.equal(path("sub") .. "\n", host.fs.read(out))
    end)

    it("stdout and stderr go to their files, appended (broken if streams mix or the "
      .. "file is truncated)", function()
        local out, err = path("out.txt"), path("err.txt")
        assert(host.fs.write_atomic(out, "before\n"))
        local p = spawn({
          argv = { "sh", "-c", "echo to-out; echo to-err >&2" },
          stdout = out,
          stderr = err,
        })
        assert.equal(0, (p:wait()))
        assert.equal("before\nto-out\n", host.fs.read(out))
        assert.equal("to-err\n", host.fs.read(err))
      end)

    it("stderr = 'stdout' sends both streams to the same file (broken if stderr is "
      .. "lost)", function()
        local out = path("both.txt")
        local p = spawn({
          argv = { "sh", "-c", "echo one; echo two >&2; echo three" },
          stdout = out,
          stderr = "stdout",
        })
        assert.equal(0, (p:wait()))
        assert.equal("one\ntwo\nthree\n", host.fs.read(out))
      end)

    it("'null' discards output and the child still runs (broken if 'null' is taken "
      .. "as a file name)", function()
        local p = spawn({ argv = { "sh", "-c", "echo x; echo y >&2" }, stdout = "null",
          stderr = "null", cwd = dir })
        assert.equal(0, (p:wait()))
        assert.same({}, host.fs.list(dir))
      end)
  end)

  describe("failures and misuse", function()
    it("a missing program gives nil, msg, 'ENOENT' (broken if it raises or returns a "
      .. "process)", function()
        local p, msg, code = proc.spawn({ argv = { "goliat-no-such-program-xyz" } })
        assert.is_nil(p)
        assert.matches("goliat%-no%-such%-program%-xyz", msg)
        assert.equal("ENOENT", code)
      end)

    it("a missing working directory or output folder gives nil, msg, code (broken if "
      .. "it raises)", function()
        local p, _, code = proc.spawn({ argv = { "true" }, cwd = path("missing") })
        assert.is_nil(p)
        assert.equal("ENOENT", code)
        local q, _, code2 = proc.spawn({ argv = { "true" }, stdout = path("no/out") })
        assert.is_nil(q)
        assert.equal("ENOENT", code2)
      end)

    it("raises when argv is not an array of strings (broken if misuse is a failure "
      .. "value)", function()
        assert.has_error(function()
          proc.spawn({ argv = "sh -c true" })
        end)
        assert.has_error(function()
          proc.spawn({})
        end)
        assert.has_error(function()
          proc.spawn({ argv = {} })
        end)
        assert.has_error(function()
          proc.spawn({ argv = { "true", 42 } })
        end)
        assert.has_error(function()
          proc.spawn("true")
        end)
      end)

    it("raises on bad env, stdio and signal names (broken if they are ignored)",
      function()
        assert.has_error(function()
          proc.spawn({ argv = { "true" }, env = { A = 1 } })
        end)
        assert.has_error(function()
          proc.spawn({ argv = { "true" }, env = { ["A=B"] = "x" } })
        end)
        assert.has_error(function()
          proc.spawn({ argv = { "true" }, stdout = "stdout" })
        end)
        local p = spawn({ argv = { "true" } })
        assert.has_error(function()
          p:signal("SIGNOPE")
        end)
        assert.has_error(function()
          p:terminate(-1)
        end)
        p:wait()
      end)
  end)

  describe("process trees", function()
    -- sh starts a grandchild `sleep 300`, writes its pid, and waits for it.
    local function tree(script_prefix)
      local pidfile = path("grandchild.pid")
      local p = spawn({
        argv = { "sh", "-c", (script_prefix or "") .. "sleep 300 & echo $! > '" .. pidfile
          .. "'; wait" },
      })
      return p, read_pid(pidfile)
    end

    it("terminate stops the child and its grandchild (broken if only the child is "
      .. "signalled)", function()
        local p, grandchild = tree()
        assert.is_true(H.alive(grandchild))
        local t0 = host.time.monotonic()
        local code, sig = p:terminate(1)
        assert.is_true(host.time.monotonic() - t0 < 10)
        assert.is_nil(code)
        assert.is_truthy(sig == "SIGTERM" or sig == "SIGKILL", sig)
        assert.is_false(p:running())
        assert.is_true(H.wait_gone(p.pid, 5), "the child is still alive")
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
        -- terminate again, and wait, return at once the same values
        assert.same({ code, sig }, { p:terminate(1) })
        assert.same({ code, sig }, { p:wait() })
      end)

    it("terminate kills a tree that ignores SIGTERM after the grace period (broken if "
      .. "nothing is killed or the grace is skipped)", function()
        local p, grandchild = tree("trap '' TERM; ")
        local t0 = host.time.monotonic()
        local code, sig = p:terminate(0.5)
        local elapsed = host.time.monotonic() - t0
        assert.is_nil(code)
        assert.equal("SIGKILL", sig)
        assert.is_true(elapsed >= 0.4, "killed after only " .. elapsed .. " s")
        assert.is_true(elapsed < 10, "took " .. elapsed .. " s")
        assert.is_true(H.wait_gone(p.pid, 5), "the child is still alive")
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      end)

    it("terminate gives the full grace even after the task ran for a while (broken if "
      .. "the deadline counts from a stale loop time)", function()
        local p, grandchild = tree("trap '' TERM; ")
        busy(0.4)
        local t0 = host.time.monotonic()
        local _, sig = p:terminate(0.5)
        local elapsed = host.time.monotonic() - t0
        assert.equal("SIGKILL", sig)
        assert.is_true(elapsed >= 0.4, "killed after only " .. elapsed .. " s")
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      end)

    it("terminate waits for a grandchild that outlives the child (broken if it "
      .. "returns when only the child has exited)", function()
        -- the child exits at once on TERM; its grandchild ignores TERM
        local pidfile, ready = path("grandchild.pid"), path("grandchild.ready")
        local p = spawn({
          argv = { "sh", "-c", "(trap '' TERM; echo > '" .. ready ..
            "'; exec sleep 300) & echo $! > '" .. pidfile .. "'; wait" },
        })
        local grandchild = read_pid(pidfile)
        -- its TERM is ignored only from here on
        assert.is_true(H.wait_until(function() return host.fs.exists(ready) end, 10))
        local t0 = host.time.monotonic()
        p:terminate(0.5)
        local elapsed = host.time.monotonic() - t0
        assert.is_true(elapsed >= 0.4, "returned after " .. elapsed .. " s")
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      end)

    it("kill kills the whole tree at once (broken if only the child dies)", function()
      local p, grandchild = tree("trap '' TERM; ")
      assert.is_true(p:kill())
      local code, sig = p:wait()
      assert.is_nil(code)
      assert.equal("SIGKILL", sig)
      assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      assert.is_true(p:kill()) -- killing a dead tree is not an error
    end)

    it("signal reaches every process of the tree (broken if only the child gets it)",
      function()
        local p, grandchild = tree()
        assert.is_true(p:signal("SIGTERM"))
        local code, sig = p:wait()
        assert.is_nil(code)
        assert.equal("SIGTERM", sig)
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      end)

    it("wait returns when the child exits even if a grandchild lives on (broken if "
      .. "wait blocks on the whole tree)", function()
        local pidfile = path("grandchild.pid")
        local p = spawn({
          argv = { "sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $! > '" .. pidfile
            .. "'; exit 2" },
        })
        local code = p:wait()
        local grandchild = read_pid(pidfile)
        assert.equal(2, code)
        assert.is_true(H.alive(grandchild))
        -- the tree can still be stopped through the process object
        assert.same({ 2 }, { p:terminate(1) })
        assert.is_true(H.wait_gone(grandchild, 5), "the grandchild is still alive")
      end)
  end)
end)
