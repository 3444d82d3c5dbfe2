-- Windows only (tests/windows/wine.sh runs it under wine; elsewhere it is
-- pending): process trees in Job Objects, with goliat-host.exe itself as
-- child and grandchild (no POSIX tools), Ctrl-Break, environment, files
-- and paths with spaces and non-ASCII characters, HTTP on 127.0.0.1,
-- timers, and the service mode. Where wine cannot do what Windows does,
-- the test is pending with the reason (GOLIAT_WINE is set by wine.sh).
local host = require "host"
local cjson = require "cjson"
local H = require "support.helpers"

if not H.windows then
  describe("Windows", function()
    it("runs on Windows only (tests/windows/wine.sh)", function()
      pending("not Windows: run bash tests/windows/wine.sh")
    end)
  end)
  return
end

local wine = (host.sys.getenv("GOLIAT_WINE") or "") ~= ""
local exe = H.host_binary()
local fs = host.fs

-- A folder name with spaces and characters outside ASCII and the ANSI
-- code page.
local ODD = "dir with spaces ü € 漢字"

local function write(path, text)
  assert(fs.write_atomic(path, text))
  return path
end

-- Wait (bounded) until file holds a pid; return it.
local function read_pid(file, timeout)
  local pid
  assert(H.wait_until(function()
    local s = fs.read(file)
    pid = s and tonumber(s:match("^(%d+)"))
    return pid ~= nil
  end, timeout or 20), "no pid in " .. file)
  return pid
end

describe("Windows", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(function()
    H.rm_rf(dir)
  end)

  local function path(...)
    return fs.join(dir, ...)
  end

  -- Scripts for children: a grandchild that ignores Ctrl-Break and sleeps,
  -- and a child that starts it first thing, then does the same.
  local function tree_scripts(grandchild_new_group)
    write(path("grandchild.lua"), [[
      local host = require "host"
      host.sys.on_signal("SIGBREAK", function() end)
      host.fs.write_atomic(arg[1], host.sys.pid() .. "\n")
      host.time.sleep(120)
    ]])
    write(path("child.lua"), string.format([[
      local host = require "host"
      local g = assert(host.proc.spawn { argv = { host.sys.exepath(),
        arg[1], arg[2] }, new_group = %s })
      host.sys.on_signal("SIGBREAK", function() end)
      host.fs.write_atomic(arg[3], host.sys.pid() .. "\n")
      host.time.sleep(120)
    ]], tostring(grandchild_new_group)))
    return path("child.lua")
  end

  local function start_tree(grandchild_new_group)
    local child = tree_scripts(grandchild_new_group)
    local p = assert(host.proc.spawn { argv = { exe, child,
      path("grandchild.lua"), path("grandchild.pid"), path("child.pid") } })
    local gpid = read_pid(path("grandchild.pid"))
    local cpid = read_pid(path("child.pid"))
    assert.equal(p.pid, cpid)
    assert.is_true(H.alive(gpid))
    return p, gpid
  end

  describe("process trees (Job Objects)", function()
    it("kill() ends the child and the grandchild it started first thing "
      .. "(broken if the grandchild escapes the job)", function()
        local p, gpid = start_tree(false)
        assert.is_true(p:kill())
        assert.same({ nil, "SIGKILL" }, { p:wait() })
        assert.is_true(H.wait_gone(gpid, 5), "the grandchild survived")
      end)

    it("terminate() ends a tree that ignores Ctrl-Break, grandchild included, "
      .. "after the grace period (broken if only the root is stopped)", function()
        local p, gpid = start_tree(false)
        local t0 = host.time.monotonic()
        local code, sig = p:terminate(1)
        assert.is_nil(code)
        assert.equal("SIGKILL", sig)
        assert.is_true(host.time.monotonic() - t0 < 15)
        assert.is_false(H.alive(gpid), "the grandchild survived")
      end)

    it("kill() also ends a grandchild that leads a tree of its own (nested "
      .. "job) (broken if nested jobs are not covered)", function()
        local p, gpid = start_tree(true)
        assert.is_true(p:kill())
        p:wait()
        assert.is_true(H.wait_gone(gpid, 5), "the grandchild survived")
      end)

    it("a restarted host finds the tree again by its root's pid and kills "
      .. "it whole (broken if attach can only stop the root)", function()
        local p, gpid = start_tree(false)
        write(path("agent2.lua"), string.format([[
          local host = require "host"
          local p = assert(host.proc.attach(%d))
          assert(p:kill())
          print("killed")
        ]], p.pid))
        local r = H.run_host({ path("agent2.lua") }, { timeout = 20 })
        assert.equal(0, r.code, r.stderr)
        assert.equal("killed\n", r.stdout)
        assert.is_true(H.wait_gone(p.pid, 5), "the root survived")
        assert.is_true(H.wait_gone(gpid, 5), "the grandchild survived")
        p:wait()
      end)

    it("a study's wrapper holds its tree's Job Object: a host started after "
      .. "the one that made the tree has exited still finds it and kills it "
      .. "whole (broken if the job dies with its creator's handle)", function()
        tree_scripts(false)
        local source = host.sys.getenv("GOLIAT_SOURCE_DIR") or host.sys.cwd()
        write(path("agent1.lua"), string.format([[
          local host = require "host"
          local p = assert(host.proc.spawn { argv = { host.sys.exepath(),
            %q, %q, host.sys.exepath(), %q, %q } })
          host.fs.write_atomic(%q, p.pid .. "\n")
          os.exit(0) -- not waiting for the child
        ]], fs.join(source, "scripts", "study_wrapper.lua"), path("exit.json"),
          path("grandchild.lua"), path("grandchild.pid"), path("wrapper.pid")))
        -- (its output is not a file of run_host's: the tree inherits it)
        local a1 = assert(host.proc.spawn { argv = { exe, path("agent1.lua") },
          stdout = path("agent1.out"), stderr = "stdout" })
        -- gone, with its handle of the job
        assert.same({ 0 }, { a1:wait() }, fs.read(path("agent1.out")))
        local wpid, gpid = read_pid(path("wrapper.pid")),
          read_pid(path("grandchild.pid"))
        write(path("agent2.lua"), string.format([[
          local host = require "host"
          local p = assert(host.proc.attach(%d))
          assert(p:kill())
          print("killed")
        ]], wpid))
        local r = H.run_host({ path("agent2.lua") }, { timeout = 20 })
        assert.equal(0, r.code, r.stderr)
        assert.is_true(H.wait_gone(wpid, 5), "the wrapper survived")
        assert.is_true(H.wait_gone(gpid, 5), "the study survived")
      end)

    it("keep_tree() holds the job of a tree's root, and fails outside one",
      function()
        write(path("keep.lua"), [[
          local host = require "host"
          print(tostring(host.proc.keep_tree()))
        ]])
        local p = assert(host.proc.spawn { argv = { exe, path("keep.lua") },
          stdout = path("keep.out") })
        assert.same({ 0 }, { p:wait() })
        assert.equal("true\n", fs.read(path("keep.out")))
        -- a child left in our own tree has no job named after it
        p = assert(host.proc.spawn { argv = { exe, path("keep.lua") },
          stdout = path("keep2.out"), new_group = false })
        assert.same({ 0 }, { p:wait() })
        assert.equal("nil\n", fs.read(path("keep2.out")))
      end)

    it("Ctrl-Break reaches the child's SIGBREAK handler, which ends it "
      .. "cleanly (broken if terminate() only kills)", function()
        if wine then
          pending("wine 8 cannot send Ctrl-Break to a process group")
        end
        write(path("brk.lua"), [[
          local host = require "host"
          local done = false
          host.sys.on_signal("SIGBREAK", function(name)
            host.fs.write_atomic(arg[1], name)
            done = true
          end)
          host.fs.write_atomic(arg[2], host.sys.pid() .. "\n")
          while not done do host.time.sleep(0.05) end
        ]])
        local p = assert(host.proc.spawn { argv = { exe, path("brk.lua"),
          path("got"), path("pid") } })
        read_pid(path("pid"))
        assert.same({ 0 }, { p:terminate(20) })
        assert.equal("SIGBREAK", fs.read(path("got")))
      end)
  end)

  describe("processes", function()
    it("returns the exit code of a goliat-host child (broken if it is lost)",
      function()
        write(path("exit.lua"), "os.exit(7)")
        local p = assert(host.proc.spawn { argv = { exe, path("exit.lua") } })
        assert.same({ 7 }, { p:wait() })
      end)

    it("fails with ENOENT for a program that does not exist (broken if it "
      .. "raises or starts something else)", function()
        local p, msg, code = host.proc.spawn { argv = { "no-such-program-x" } }
        assert.is_nil(p)
        assert.is_string(msg)
        assert.equal("ENOENT", code)
      end)

    it("passes arguments with spaces, quotes, backslashes and non-ASCII "
      .. "characters unchanged (broken if quoting or UTF-16 is wrong)", function()
        local args = { "plain", "with space", 'a "quoted" word', [[C:\dir\]],
          [[back\\slash\"]], "", "ü € 漢字", "tab\there" }
        write(path("args.lua"), [[
          local cjson = require "cjson"
          local out = { }
          for i = 2, #arg do out[#out + 1] = arg[i] end
          require("host").fs.write_atomic(arg[1], cjson.encode(out))
        ]])
        local argv = { exe, path("args.lua"), path("args.json") }
        for _, a in ipairs(args) do argv[#argv + 1] = a end
        local p = assert(host.proc.spawn { argv = argv })
        assert.same({ 0 }, { p:wait() })
        local json = assert(fs.read(path("args.json")))
        assert.same(args, cjson.decode(json))
      end)

    it("runs a script in a folder with spaces and non-ASCII characters, "
      .. "with its lib/ module, cwd, environment and output file (broken if "
      .. "a path or value is read in the ANSI code page)", function()
        local odd = path(ODD)
        assert(fs.mkdir_p(fs.join(odd, "lib")))
        write(fs.join(odd, "lib", "oddmod.lua"), 'return "module ü"')
        write(fs.join(odd, "main ü.lua"), [[
          local host = require "host"
          print((require "oddmod"))
          print(arg[1])
          print(host.sys.cwd())
          print(os.getenv("GOLIAT_ODD"), host.sys.getenv("GOLIAT_ODD"))
        ]])
        local out = fs.join(odd, "out ü.txt")
        local p = assert(host.proc.spawn { argv = { exe,
          fs.join(odd, "main ü.lua"), "arg ü €" }, cwd = odd,
          env = { GOLIAT_ODD = "value ü € 漢字" }, stdout = out,
          stderr = "stdout" })
        assert.same({ 0 }, { p:wait() })
        assert.equal(table.concat({ "module ü", "arg ü €", (odd:gsub("/", "\\")),
          "value ü € 漢字\tvalue ü € 漢字", "" }, "\n"), fs.read(out))
      end)
  end)

  describe("environment", function()
    after_each(function()
      host.sys.setenv("GOLIAT_WIN_SPEC", nil)
    end)

    it("round-trips a non-ASCII value through setenv, getenv, os.getenv and "
      .. "environ (broken if the C runtime's copy is read)", function()
        assert.is_true(host.sys.setenv("GOLIAT_WIN_SPEC", "ü € 漢字"))
        assert.equal("ü € 漢字", host.sys.getenv("GOLIAT_WIN_SPEC"))
        assert.equal("ü € 漢字", os.getenv("GOLIAT_WIN_SPEC"))
        assert.equal("ü € 漢字", host.sys.environ().GOLIAT_WIN_SPEC)
      end)

    it("names are case-insensitive, as Windows has them (broken if PATH "
      .. "and Path differ)", function()
        assert.equal(host.sys.getenv("PATH"), host.sys.getenv("Path"))
      end)
  end)

  describe("files and paths", function()
    it("host.fs works in a folder with spaces and non-ASCII characters "
      .. "(broken if a call converts paths to the ANSI code page)", function()
        local odd = path(ODD)
        assert.is_true(fs.mkdir_p(odd))
        local f = fs.join(odd, "file €.txt")
        assert.is_true(fs.write_atomic(f, "a\nb"))
        assert.is_true(fs.append(f, "\nc"))
        assert.equal("a\nb\nc", fs.read(f))
        assert.same({ "file €.txt" }, fs.list(odd))
        assert.same({ ODD }, fs.list(dir))
        assert.equal("file", fs.stat(f).type)
        assert.equal(5, fs.stat(f).size)
        assert.is_true(fs.remove(f))
        assert.is_true(fs.remove(odd))
      end)

    it("Lua's io.open, os.rename (replacing the target), os.remove and "
      .. "dofile take UTF-8 paths (broken without the UTF-8 C runtime calls)",
      function()
        assert(fs.mkdir_p(path(ODD)))
        local a, b = path(ODD, "a ü.lua"), path(ODD, "b ü.lua")
        local fh = assert(io.open(a, "wb"))
        fh:write("return 42")
        fh:close()
        write(b, "old")
        assert.is_true(os.rename(a, b))
        assert.equal(42, dofile(b))
        assert.is_true(os.remove(b))
        assert.is_false(fs.exists(b))
        assert.is_nil(io.open(a, "rb"))
      end)
  end)

  describe("HTTP on 127.0.0.1", function()
    it("serves and requests, with a UTF-8 body and an output file in a "
      .. "non-ASCII folder (broken if Winsock or Schannel setup fails)",
      function()
        local server = assert(host.http.serve({ port = 0 }, function(req)
          return 200, req.method .. " " .. req.body .. " ü",
            { ["X-Odd"] = "yes" }
        end))
        local url = "http://127.0.0.1:" .. server:port() .. "/x"
        local res = assert(host.http.request { url = url, body = "€ 漢字" })
        assert.equal(200, res.status)
        assert.equal("POST € 漢字 ü", res.body)
        assert.equal("yes", res.headers["x-odd"])
        assert(fs.mkdir_p(path(ODD)))
        local out = path(ODD, "body ü")
        res = assert(host.http.request { url = url, output = out })
        assert.equal(200, res.status)
        assert.equal("GET  ü", fs.read(out))
        server:close()
        local _, _, code = host.http.request { url = url, timeout = 5 }
        assert.equal("connect", code)
      end)
  end)

  describe("timers and signals", function()
    it("sleeps at least as long as asked, tasks side by side (broken if the "
      .. "timer resolution or the loop is wrong)", function()
        local t0 = host.time.monotonic()
        local a = host.task.spawn(function() host.time.sleep(0.3) end)
        local b = host.task.spawn(function() host.time.sleep(0.3) end)
        a:join()
        b:join()
        local elapsed = host.time.monotonic() - t0
        assert.is_true(elapsed >= 0.29, "returned after " .. elapsed)
        assert.is_true(elapsed < 3, "took " .. elapsed)
        assert.is_true(math.abs(host.time.now() - os.time()) < 5)
      end)

    it("accepts handlers for Ctrl-C, Ctrl-Break and console close "
      .. "(SIGINT, SIGBREAK, SIGHUP) (broken if one is refused)", function()
        for _, name in ipairs({ "SIGINT", "SIGBREAK", "SIGHUP" }) do
          local h = assert(host.sys.on_signal(name, function() end))
          h:close()
        end
      end)
  end)

  describe("the agent (scripts/agent.lua)", function()
    local cluster = require "support.cluster"
    local dash, agent

    after_each(function()
      if agent then cluster.stop(agent.proc) end
      if dash then cluster.stop(dash.proc) end
      agent, dash = nil, nil
    end)

    -- A stand-in for `python -m goliat study CONFIG` run by goliat-host:
    -- it may start a grandchild, and it ignores Ctrl-Break.
    local function start(extra_env)
      write(path("sleeper.lua"), 'require("host").time.sleep(300)')
      write(path("study.lua"), [[
        local host = require "host"
        local cjson = require "cjson"
        local cfg = cjson.decode(assert(host.fs.read(arg[#arg])))
        print("study stand-in: " .. arg[#arg])
        host.sys.on_signal("SIGBREAK", function() end)
        if cfg.pid_file then
          host.fs.write_atomic(cfg.pid_file, host.sys.pid() .. "\n")
        end
        if cfg.child_pid_file then
          local g = assert(host.proc.spawn { argv = { host.sys.exepath(),
            cfg.sleeper }, new_group = false })
          host.fs.write_atomic(cfg.child_pid_file, g.pid .. "\n")
        end
        host.time.sleep(cfg.duration_s or 0)
        os.exit(cfg.exit_code or 0)
      ]])
      dash = cluster.start_dashboard()
      local env = { GOLIAT_STUDY_COMMAND = cjson.encode({ exe, path("study.lua") }) }
      for k, v in pairs(extra_env or {}) do env[k] = v end
      local work = path("work")
      assert(fs.mkdir_p(work))
      agent = cluster.start_agent(cluster.agent_env(dash.url, work, env), work)
      return work
    end

    it("runs an assignment's study and reports how it ended (broken if the "
      .. "study command, the wrapper or the report fails on Windows)", function()
        local work = start()
        cluster.queue(dash, { exit_code = 0, duration_s = 0.5 }, { id = "w1" })
        cluster.queue(dash, { exit_code = 3 }, { id = "w2", split_index = 1 })
        local reports = cluster.reports_at_least(dash, 2, 60)
        assert(reports, "no reports: " .. tostring(fs.read(agent.log)))
        assert.equal("finished", reports[1].type)
        assert.equal("w1", reports[1].assignment_id)
        assert.equal("fatal_error", reports[2].type)
        assert.equal(3, reports[2].exit_code)
        assert.matches("study stand%-in", fs.read(fs.join(work, "study_1.log")))
      end)

    it("stops a study over its time limit with its grandchild and reports "
      .. "it (broken if part of the study's tree survives)", function()
        local pid_file, child_file = path("study.pid"), path("child.pid")
        start({ GOLIAT_STUDY_TIMEOUT = "3", GOLIAT_STUDY_GRACE = "1" })
        cluster.queue(dash, { duration_s = 300, pid_file = pid_file,
          child_pid_file = child_file, sleeper = path("sleeper.lua") },
          { id = "stubborn" })
        local reports = cluster.reports_at_least(dash, 1, 60)
        assert(reports, "no report: " .. tostring(fs.read(agent.log)))
        assert.equal("fatal_error", reports[1].type)
        assert.matches("timed out", reports[1].message)
        local study, child = read_pid(pid_file), read_pid(child_file)
        assert.is_true(H.wait_gone(study, 5), "the study survived")
        assert.is_true(H.wait_gone(child, 5), "the study's child survived")
      end)
  end)

  describe("service mode (goliat-host --service)", function()
    local enabled = host.sys.getenv("GOLIAT_TEST_SERVICE") == "1"

    -- sc.exe's exit code; tried again while it fails (a fresh wine prefix
    -- refuses to start services for its first seconds)
    local function sc(...)
      local code
      for _ = 1, 20 do
        local p = assert(host.proc.spawn { argv = { "sc", ... },
          stdout = path("sc.log"), stderr = "stdout" })
        code = p:wait()
        if code == 0 then break end
        host.time.sleep(1)
      end
      return code, fs.read(path("sc.log"))
    end

    local function service_state(name)
      local out = path("sc.txt")
      fs.remove(out)
      local p = assert(host.proc.spawn { argv = { "sc", "query", name },
        stdout = out })
      p:wait()
      return (fs.read(out) or ""):match("STATE%s*:%s*%d+%s+(%u+)")
    end

    -- Install the service name running `script out`, stopped and deleted
    -- (then cleanup() called) when the spec ends, and start it.
    local function install_and_start(name, script, out, cleanup)
      local bin = string.format('"%s" --service %s "%s" "%s"', exe, name,
        script, out)
      local code, log = sc("create", name, "binPath=", bin)
      assert.equal(0, code, log)
      finally(function()
        host.proc.spawn({ argv = { "sc", "stop", name }, stdout = "null" }):wait()
        H.wait_until(function() return service_state(name) == "STOPPED" end, 20)
        sc("delete", name)
        if cleanup then cleanup() end
      end)
      code, log = sc("start", name)
      assert.equal(0, code, log)
    end

    it("runs the script, restarts it after it exits, and turns a service "
      .. "stop into its SIGBREAK handler (broken if stop kills it or a crash "
      .. "ends the service); its log, stderr and the supervisor's lines go to "
      .. "NAME.log, rotated at 10 MiB (broken if the service's log is unbounded "
      .. "or loses what the script writes on stderr)", function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-spec-" .. host.sys.pid()
        local out = path("service.out")
        write(path("svc.lua"), [[
          local host = require "host"
          local out = arg[1]
          local runs = select(2, (host.fs.read(out) or ""):gsub("start", ""))
          host.log.info("svc log line %d", runs)
          io.stderr:write("svc stderr line ", runs, "\n")
          if runs == 1 then -- lines of 1 MiB and more: 10 do not fit in
            -- the default GOLIAT_LOG_MAX_BYTES (10 MiB)
            for i = 1, 11 do host.log.info("%d%s", i, string.rep("y", 1048576)) end
          end
          host.fs.append(out, "start " .. host.sys.cwd() .. "\n")
          if runs == 0 then os.exit(3) end -- a crash: the service restarts it
          local stop = false
          host.sys.on_signal("SIGBREAK", function(sig)
            host.fs.append(out, "got " .. sig .. "\n")
            stop = true
          end)
          while not stop do host.time.sleep(0.1) end
          host.fs.append(out, "end\n")
        ]])
        install_and_start(name, path("svc.lua"), out)
        assert.is_true(H.wait_until(function()
          local s = fs.read(out) or ""
          return select(2, s:gsub("start", "")) >= 2
        end, 30), "not restarted: " .. tostring(fs.read(out)))
        host.time.sleep(0.5) -- let it install its handler
        local code, log = sc("stop", name)
        assert.equal(0, code, log)
        assert.is_true(H.wait_until(function()
          return service_state(name) == "STOPPED"
        end, 30), "the service did not stop")
        local exe_dir = exe:match("^(.*)[\\/]")
        local text = fs.read(out)
        assert.matches("^start " .. exe_dir:gsub("%p", "%%%0") .. "\n", text)
        assert.matches("got SIGBREAK\nend\n$", text)
        local log_file = fs.join(exe_dir, name .. ".log")
        finally(function()
          fs.remove(log_file)
          fs.remove(log_file .. ".1")
        end)
        local old = fs.read(log_file .. ".1") or ""
        local svc_log = fs.read(log_file) or ""
        assert.is_nil(fs.stat(log_file .. ".2"))
        assert.is_true(#old > 9 * 1048576 and #old <= 10485760, "size " .. #old)
        -- the first run's lines, its last words on stderr before the
        -- supervisor's line that says it exited
        local first = old:match("^(.-) info  1yyy")
        assert.truthy(first, "no rotation")
        local at = first:find("exited with code 3; starting it again", 1, true)
        assert.truthy(at, first)
        assert.truthy(first:find(" info  svc log line 0\n", 1, true), first)
        assert.truthy(first:find("svc stderr line 0\n", 1, true) < at, first)
        assert.matches(" info  svc log line 1\n", first, 1, true)
        assert.matches("svc stderr line 1\n", old .. svc_log, 1, true)
        -- the 10th and 11th big lines, and the end
        assert.matches(" info  10yyy", svc_log, 1, true)
        assert.matches(" info  11yyy", svc_log, 1, true)
        assert.matches("exited with code 0; service stopped\n$", svc_log)
      end)

    it("stops, and does not start the script again, when it exits with " ..
      "code 0 on its own (the agent idle for GOLIAT_IDLE_AFTER; broken if " ..
      "the supervisor restarts it, keeping an idle VM billed)", function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-spec-idle-" .. host.sys.pid()
        local out = path("idle.out")
        write(path("idle.lua"), [[
          local host = require "host"
          host.fs.append(arg[1], "start\n")
          os.exit(0)
        ]])
        install_and_start(name, path("idle.lua"), out)
        assert.is_true(H.wait_until(function()
          return service_state(name) == "STOPPED"
        end, 30), "the service did not stop")
        -- (before, it stayed RUNNING and started the script again after
        -- RESTART_DELAY_MS, for ever)
        assert.equals("start\n", fs.read(out))
        local log_file = fs.join(exe:match("^(.*)[\\/]"), name .. ".log")
        local svc_log = fs.read(log_file) or ""
        fs.remove(log_file) -- (one finally per test: install_and_start's)
        assert.matches("exited with code 0 on its own; service stopped, not " ..
          "started again", svc_log)
      end)

    it("passes goliat-host --service-reload NAME and sc control NAME "
      .. "paramchange on to the script's on_signal(\"reload\") handler, in "
      .. "the same process (broken if a reload stops or restarts the "
      .. "service's child, or never arrives)", function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-reload-" .. host.sys.pid()
        local out = path("reload.out")
        write(path("reload.lua"), [[
          local host = require "host"
          local out = arg[1]
          host.fs.append(out, "start " .. host.sys.pid() .. "\n")
          local stop = false
          host.sys.on_signal("reload", function(sig)
            host.fs.append(out, "got " .. sig .. " " .. host.sys.pid() .. "\n")
            host.restart()
          end)
          host.sys.on_signal("SIGBREAK", function() stop = true end)
          while not stop do host.time.sleep(0.1) end
          host.fs.append(out, "end\n")
        ]])
        local exe_dir = exe:match("^(.*)[\\/]")
        install_and_start(name, path("reload.lua"), out, function()
          fs.remove(fs.join(exe_dir, name .. ".log"))
        end)
        local function starts()
          return select(2, (fs.read(out) or ""):gsub("start", ""))
        end
        assert.is_true(H.wait_until(function() return starts() >= 1 end, 30),
          "not started")
        host.time.sleep(0.5) -- let it install its handler
        local reload_out = path("reload-cmd.txt")
        local p = assert(host.proc.spawn { argv = { exe, "--service-reload",
          name }, stdout = reload_out, stderr = "stdout" })
        assert.equal(0, p:wait(), fs.read(reload_out))
        assert.is_true(H.wait_until(function() return starts() >= 2 end, 30),
          "no reload: " .. tostring(fs.read(out)))
        -- wine's sc.exe has no "control" command: Windows only
        local rounds = 1
        if not host.sys.getenv("GOLIAT_WINE") then
          host.time.sleep(0.5)
          local code, log = sc("control", name, "paramchange")
          assert.equal(0, code, log)
          assert.is_true(H.wait_until(function() return starts() >= 3 end, 30),
            "no reload by sc: " .. tostring(fs.read(out)))
          rounds = 2
        end
        local text = fs.read(out)
        local pid = text:match("^start (%d+)\n")
        assert.truthy(pid, text)
        local q = pid:gsub("%p", "%%%0")
        local want = "^start " .. q .. "\n" ..
          string.rep("got reload " .. q .. "\nstart " .. q .. "\n", rounds)
        assert.matches(want .. "$", text)
        local svc_log = fs.read(fs.join(exe_dir, name .. ".log")) or ""
        assert.matches("reload requested: passed on to goliat%-host", svc_log)
        assert.not_matches("exited with code", svc_log)
      end)

    it("holds a service stop and a reload that come while the script restarts "
      .. "(host.restart) and has no handler yet, and hands them to its handlers "
      .. "once installed (broken if the stop ends the child with "
      .. "STATUS_CONTROL_C_EXIT or the reload is lost)", function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-held-" .. host.sys.pid()
        local work = path("held")
        assert(fs.mkdir_p(work))
        local function at(file) return fs.join(work, file) end
        -- the first run has the agent's handlers and restarts; the second
        -- waits for "sent" (a stop and a reload sent meanwhile) before it
        -- installs its own
        write(path("held.lua"), [[
          local host = require "host"
          local fs = host.fs
          local dir = arg[1]
          local function at(file) return fs.join(dir, file) end
          if not fs.exists(at("first")) then
            host.sys.on_signal("SIGBREAK", function() end)
            host.sys.on_signal("reload", function() end)
            assert(fs.write_atomic(at("first"), "first"))
            host.restart()
          end
          assert(fs.write_atomic(at("waiting"), "waiting"))
          local deadline = host.time.monotonic() + 30
          while not fs.exists(at("sent")) and host.time.monotonic() < deadline do
            host.time.sleep(0.05)
          end
          host.sys.on_signal("reload", function(sig)
            assert(fs.append(at("got"), "got " .. sig .. "\n"))
          end)
          host.sys.on_signal("SIGBREAK", function(sig)
            host.time.sleep(0.2)
            assert(fs.append(at("got"), "got " .. sig .. "\n"))
            os.exit(0)
          end)
          host.time.sleep(30)
          os.exit(3)
        ]])
        local exe_dir = exe:match("^(.*)[\\/]")
        install_and_start(name, path("held.lua"), work, function()
          fs.remove(fs.join(exe_dir, name .. ".log"))
        end)
        assert.is_true(H.wait_until(function() return fs.exists(at("waiting")) end,
          30), "no second run")
        local reload_out = path("held-reload.txt")
        local p = assert(host.proc.spawn { argv = { exe, "--service-reload",
          name }, stdout = reload_out, stderr = "stdout" })
        assert.equal(0, p:wait(), fs.read(reload_out))
        local code, log = sc("stop", name)
        assert.equal(0, code, log)
        -- both are on their way to the child when the controls return; give
        -- its thread pool a moment to pass them on before it goes on
        host.time.sleep(1)
        write(at("sent"), "sent")
        assert.is_true(H.wait_until(function()
          return service_state(name) == "STOPPED"
        end, 60), "the service did not stop")
        local svc_log = fs.read(fs.join(exe_dir, name .. ".log")) or ""
        assert.equal("got reload\ngot SIGBREAK\n", fs.read(at("got")), svc_log)
        assert.matches("received SIGBREAK %(during the restart%)", svc_log)
        assert.matches("received reload %(during the restart%)", svc_log)
        assert.matches("exited with code 0; service stopped", svc_log)
      end)

    it("--service-reload, --reload and --stop name a service or desktop "
      .. "agent that does not exist (broken if they fail silently)", function()
        local out = path("reload-none.txt")
        for _, option in ipairs { "--service-reload", "--reload" } do
          local p = assert(host.proc.spawn { argv = { exe, option,
            "goliat-no-such-service" }, stdout = out, stderr = "stdout" })
          assert.equal(1, p:wait())
          assert.matches("cannot reload goliat%-no%-such%-service: no service "
            .. "of that name, and no desktop agent of that name runs",
            fs.read(out))
        end
        local p = assert(host.proc.spawn { argv = { exe, "--stop",
          "goliat-no-such-service" }, stdout = out, stderr = "stdout" })
        assert.equal(1, p:wait())
        assert.matches("nothing to stop: no service named "
          .. "goliat%-no%-such%-service, and no desktop agent of that name "
          .. "runs", fs.read(out))
      end)
  end)

  -- goliat-host.exe and a scripts\agent.lua stand-in in a folder of their
  -- own, as an operator unzips them: the stand-in appends what happens to
  -- agent.out beside the exe. Returns the folder, the exe and a function
  -- that runs the exe with arguments (and env), returning code and output.
  local function agent_folder()
    local folder = path("agent " .. host.sys.pid())
    assert(fs.mkdir_p(fs.join(folder, "scripts")))
    local copy = fs.join(folder, "goliat-host.exe")
    write(copy, assert(fs.read(exe)))
    write(fs.join(folder, "scripts", "agent.lua"), [[
      local host = require "host"
      local out = host.fs.join(host.sys.exepath():match("^(.*)[\\/]"),
        "agent.out")
      local runs = select(2, (host.fs.read(out) or ""):gsub("start", ""))
      host.fs.append(out, "start " .. host.sys.pid() .. "\n")
      if arg[1] == "crash-first" and runs == 0 then os.exit(3) end
      local stop = false
      host.sys.on_signal("SIGBREAK", function(sig)
        host.fs.append(out, "got " .. sig .. "\n")
        stop = true
      end)
      host.sys.on_signal("reload", function(sig)
        host.fs.append(out, "got " .. sig .. "\n")
      end)
      while not stop do host.time.sleep(0.1) end
      host.fs.append(out, "end\n")
    ]])
    local n = 0
    local function run(args, env)
      n = n + 1
      local file = path("run" .. n .. ".txt")
      local argv = { copy }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      local p = assert(host.proc.spawn { argv = argv, env = env,
        stdout = file, stderr = "stdout" })
      local code = p:wait()
      return code, (fs.read(file) or ""):gsub("\r\n", "\n")
    end
    return folder, copy, run
  end

  local function q(s) return (s:gsub("%p", "%%%0")) end

  describe("install (goliat-host --install, --uninstall)", function()
    local enabled = host.sys.getenv("GOLIAT_TEST_SERVICE") == "1"

    local function exists(name)
      local p = assert(host.proc.spawn { argv = { "sc", "query", name },
        stdout = "null", stderr = "null" })
      return p:wait() == 0
    end

    local function registry(name)
      local out = path("reg.txt")
      local p = assert(host.proc.spawn { argv = { "reg", "query",
        "HKLM\\SYSTEM\\CurrentControlSet\\Services\\" .. name },
        stdout = out, stderr = "stdout" })
      p:wait()
      local values = {}
      for k, v in (fs.read(out) or ""):gmatch("\n%s+(%w+)%s+REG_%w+%s+([^\r\n]*)") do
        values[k] = v
      end
      return values
    end

    it("refuses without an elevated prompt, says how to get one, exits 2 "
      .. "and changes nothing (GOLIAT_TEST_NOT_ELEVATED=1; broken if it "
      .. "installs half or fails with Windows' access denied)", function()
        local name = "goliat-noadmin-" .. host.sys.pid()
        local _, _, run = agent_folder()
        local env = { GOLIAT_TEST_NOT_ELEVATED = "1" }
        for _, args in ipairs {
          { "--install", "service", "--name", name },
          { "--install", "desktop", "--name", name },
          { "--uninstall", "--name", name },
        } do
          local code, out = run(args, env)
          assert.equal(2, code, out)
          assert.matches("^goliat%-host: " .. q(args[1]) .. " changes Windows "
            .. "services and scheduled tasks, which needs an administrator: "
            .. "run this from an elevated prompt: right%-click Command Prompt "
            .. "%(or PowerShell%), Run as administrator%. Nothing was "
            .. "changed%.\n$", out)
        end
        assert.is_false(exists(name))
        -- usage mistakes come first, elevated or not
        local code, out = run({ "--install" }, env)
        assert.equal(2, code)
        assert.matches("^usage: goliat%-host %-%-install service", out)
        code, out = run({ "--install", "service", "--user", "x" }, env)
        assert.equal(2, code)
        assert.matches("unexpected %-%-user", out)
        code, out = run({ "--uninstall", "--name", "a\\b" }, env)
        assert.equal(2, code)
        assert.matches("%-%-name a\\b: 1 to 64 letters", out)
      end)

    it("--install service installs the service (its command line, automatic "
      .. "start, recovery, description) and starts scripts\\agent.lua; a "
      .. "second one updates it and leaves it running; --uninstall stops it "
      .. "(SIGBREAK) and removes it; a second --uninstall finds nothing "
      .. "(broken if it is not idempotent or removes without a clean stop)",
      function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-inst-" .. host.sys.pid()
        local folder, copy, run = agent_folder()
        local agent_out = fs.join(folder, "agent.out")
        local script = fs.join(folder, "scripts", "agent.lua")
        finally(function()
          run({ "--uninstall", "--name", name })
          fs.remove(fs.join(folder, name .. ".log"))
        end)
        local code, out = run({ "--install", "service", "--name", name })
        assert.equal(0, code, out)
        local bin = copy .. " --service " .. name .. " " .. script
        if copy:find(" ") then
          bin = '"' .. copy .. '" --service ' .. name .. ' "' .. script .. '"'
        end
        assert.matches("^installed the service " .. q(name) .. " %(LocalSystem%): "
          .. q(bin) .. "\n", out)
        assert.matches("\nstart: automatic at boot", out)
        assert.matches("\nrecovery: should the service process die, Windows "
          .. "starts it again after 10 s, 10 s, then 60 s", out)
        assert.matches("\nstarted the service " .. q(name) .. " %(pid %d+%); "
          .. "its log: " .. q(folder) .. "\\" .. q(name) .. "%.log\n", out)
        assert.is_true(H.wait_until(function()
          return (fs.read(agent_out) or ""):match("^start %d+\n$") ~= nil
        end, 30), "the agent did not start: " .. tostring(fs.read(agent_out)))
        local reg = registry(name)
        assert.equal(bin, reg.ImagePath)
        assert.equal("0x2", reg.Start) -- automatic
        assert.equal("GOLIAT agent (" .. name .. ")", reg.DisplayName)
        assert.matches("Its log: " .. q(name) .. "%.log next to", reg.Description)
        if not wine then -- wine's service manager keeps no delayed start
          assert.equal("0x1", reg.DelayedAutostart)
          assert.matches("^start: automatic at boot, delayed until the network "
            .. "is up", out:match("\n(start:[^\n]*)"))
        end

        code, out = run({ "--install", "service", "--name", name })
        assert.equal(0, code, out)
        assert.matches("^the service " .. q(name) .. " was already installed: "
          .. "updated it: " .. q(bin) .. "\n", out)
        assert.matches("\nthe service " .. q(name) .. " already runs %(pid "
          .. "%d+%): left running", out)
        assert.matches("^start %d+\n$", fs.read(agent_out)) -- not restarted

        code, out = run({ "--uninstall", "--name", name })
        assert.equal(0, code, out)
        assert.equal("stopped the service " .. name .. "\nremoved the service "
          .. name .. "\n", out)
        assert.matches("^start %d+\ngot SIGBREAK\nend\n$", fs.read(agent_out))
        assert.is_true(H.wait_until(function() return not exists(name) end, 10))

        code, out = run({ "--uninstall", "--name", name })
        assert.equal(0, code, out)
        assert.equal("nothing to remove: no service and no logon task named "
          .. name .. "\n", out)
      end)

    it("--install desktop writes the logon task's definition next to the "
      .. "exe and installs it, replacing the service of that name (one mode "
      .. "at a time); a second one updates it; --install service then "
      .. "removes the task, and --uninstall stops a running desktop agent "
      .. "(SIGBREAK) and removes its task (broken if both modes stay "
      .. "installed or a removal skips the clean stop)", function()
        if not enabled then
          pending("installs a task and a service: set GOLIAT_TEST_SERVICE=1 "
            .. "(wine.sh does)")
        end
        local name = "goliat-desk-" .. host.sys.pid()
        local folder, copy, run = agent_folder()
        local agent_out = fs.join(folder, "agent.out")
        local script = fs.join(folder, "scripts", "agent.lua")
        local xml_file = fs.join(folder, name .. "-task.xml")
        local system = assert(host.sys.getenv("SystemRoot")) .. "\\system32"
        local task_file = fs.join(system, "Tasks", name)
        finally(function()
          run({ "--uninstall", "--name", name })
          fs.remove(fs.join(folder, name .. ".log"))
        end)
        local code, out = run({ "--install", "service", "--name", name })
        assert.equal(0, code, out)
        assert.is_true(H.wait_until(function()
          return (fs.read(agent_out) or ""):find("start") ~= nil
        end, 30), "the service's agent did not start")

        code, out = run({ "--install", "desktop", "--name", name })
        assert.equal(0, code, out)
        -- the task first, then the service: stopped (its agent stopped
        -- cleanly), removed (a task that cannot be made leaves the service)
        assert.matches("^installed the logon task " .. q(name)
          .. ": at each logon of [^\n]+\\[^\n]+ it runs " .. q(copy)
          .. " %-%-desktop " .. q(name) .. " [^\n]*\nits definition: [^\n]*"
          .. "\nstopped the service " .. q(name) .. "\nremoved the "
          .. "service " .. q(name) .. "\n", out)
        assert.matches("got SIGBREAK\nend\n$", fs.read(agent_out))
        assert.is_false(exists(name))
        assert.matches("\nits definition: " .. q(xml_file), out)
        assert.matches("\nautologon: %w+", out)
        -- wine's schtasks has no /Run: on Windows it starts in this session
        assert.truthy(out:match("\nstarted it now in this session") or
          out:match("\nasked Task Scheduler to start it now, but it has not "
            .. "started within 10 s"), out)
        assert.is_true(fs.exists(task_file), task_file)

        -- the definition, as Task Scheduler reads it (UTF-16)
        local raw = assert(fs.read(xml_file))
        assert.equal("\255\254", raw:sub(1, 2)) -- its byte order mark
        local xml = raw:sub(3):gsub("(.)%z", "%1") -- (ASCII here)
        local user = assert(out:match("at each logon of (%S+) it runs"))
        for _, want in ipairs {
          '<?xml version="1.0" encoding="UTF-16"?>',
          "<LogonTrigger>\r\n      <Enabled>true</Enabled>\r\n      <UserId>"
            .. user .. "</UserId>",
          "<UserId>" .. user .. "</UserId>\r\n      <LogonType>InteractiveToken"
            .. "</LogonType>\r\n      <RunLevel>HighestAvailable</RunLevel>",
          "<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>",
          "<DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>",
          "<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>",
          "<Priority>4</Priority>",
          "<Command>" .. (copy:find(" ") and "&quot;" .. copy .. "&quot;" or
            copy) .. "</Command>", -- (quoted with a space in it)
          "<WorkingDirectory>" .. folder .. "</WorkingDirectory>",
        } do
          assert.truthy(xml:find(want, 1, true), want .. "\n" .. xml)
        end
        local args = xml:match("<Arguments>(.-)</Arguments>")
        assert.truthy(args == "--desktop " .. name .. " " .. script or
          args == "--desktop " .. name .. " &quot;" .. script .. "&quot;", args)

        code, out = run({ "--install", "desktop", "--name", name })
        assert.equal(0, code, out)
        assert.matches("^the logon task " .. q(name) .. " was already "
          .. "installed: updated it\n", out)

        -- the agent as the task runs it at logon (wine: by hand)
        local desk
        if not out:match("\nthe desktop agent [^\n]* already runs") and
            not out:match("\nstarted it now") then
          desk = assert(host.proc.spawn { argv = { copy, "--desktop", name,
            script }, stdout = path("desk.out"), stderr = "stdout" })
        end
        assert.is_true(H.wait_until(function()
          return select(2, (fs.read(agent_out) or ""):gsub("start", "")) >= 2
        end, 30), "the desktop agent did not start: " .. tostring(
          fs.read(fs.join(folder, name .. ".log"))))

        -- one mode at a time, the other way round
        code, out = run({ "--install", "service", "--name", name })
        assert.equal(0, code, out)
        assert.matches("^stopped the desktop agent " .. q(name) .. "\nremoved "
          .. "the logon task " .. q(name) .. "\nremoved " .. q(xml_file)
          .. "\ninstalled the service " .. q(name), out)
        if desk then assert.equal(0, desk:wait()) end
        assert.is_false(fs.exists(task_file))
        -- the desktop agent stopped, then the service's started
        assert.is_true(H.wait_until(function()
          return (fs.read(agent_out) or ""):match("got SIGBREAK\nend\nstart "
            .. "%d+\n$") ~= nil
        end, 30), fs.read(agent_out))

        code, out = run({ "--uninstall", "--name", name })
        assert.equal(0, code, out)
        assert.equal("stopped the service " .. name .. "\nremoved the service "
          .. name .. "\n", out)
        code, out = run({ "--uninstall", "--name", name })
        assert.equal(0, code, out)
        assert.equal("nothing to remove: no service and no logon task named "
          .. name .. "\n", out)
      end)

    -- run a program to its end; its exit code and output
    local function tool(argv)
      local out = path("tool.txt")
      local p = assert(host.proc.spawn { argv = argv, stdout = out,
        stderr = "stdout" })
      return p:wait(), fs.read(out) or ""
    end

    it("leaves alone a service of that name that does not run "
      .. "goliat-host.exe --service NAME: --uninstall keeps it (exit 0), "
      .. "--reload does not ask it (broken if any command line with "
      .. "' --service ' in it is taken for goliat-host's)", function()
        if not enabled then
          pending("installs a service: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-foreign-" .. host.sys.pid()
        local _, copy, run = agent_folder()
        finally(function() tool { "sc", "delete", name } end)
        for _, bin in ipairs {
          "C:\\other\\program.exe --service " .. name .. " x.lua",
          '"' .. copy .. '" --service other-' .. name .. " x.lua",
          '"' .. copy .. '" --desktop ' .. name .. " --service " .. name,
        } do
          local code, out = tool { "sc", "create", name, "binPath=", bin }
          assert.equal(0, code, out)
          code, out = run({ "--uninstall", "--name", name })
          assert.equal(0, code, out)
          assert.equal("the service " .. name .. " is not goliat-host's (it "
            .. "runs " .. bin .. "): left alone\n", out)
          assert.is_true(exists(name), bin)
          code, out = run({ "--reload", name })
          assert.equal(1, code, out)
          assert.matches("goliat%-host: cannot reload " .. q(name) .. ": it "
            .. "is not goliat%-host's", out)
          code, out = tool { "sc", "delete", name }
          assert.equal(0, code, out)
          assert.is_true(H.wait_until(function() return not exists(name) end,
            10))
        end
      end)

    it("leaves alone a logon task of that name that goliat-host did not "
      .. "make: --install desktop and --install service refuse (exit 1, the "
      .. "service of that name kept), --uninstall keeps it (exit 0) (broken "
      .. "if a task is deleted or replaced because only its name matches)",
      function()
        if not enabled then
          pending("installs a task and a service: set GOLIAT_TEST_SERVICE=1 "
            .. "(wine.sh does)")
        end
        local name = "goliat-othertask-" .. host.sys.pid()
        local folder, copy, run = agent_folder()
        local system = assert(host.sys.getenv("SystemRoot")) .. "\\system32"
        local task_file = fs.join(system, "Tasks", name)
        local xml = '<?xml version="1.0" encoding="UTF-16"?>\r\n'
          .. '<Task version="1.2" xmlns="http://schemas.microsoft.com/'
          .. 'windows/2004/02/mit/task">\r\n'
          .. "  <RegistrationInfo>\r\n    <Author>someone else</Author>\r\n"
          .. "  </RegistrationInfo>\r\n  <Actions>\r\n    <Exec>\r\n"
          .. "      <Command>C:\\other\\program.exe</Command>\r\n"
          .. "      <Arguments>--desktop " .. name .. "</Arguments>\r\n"
          .. "    </Exec>\r\n  </Actions>\r\n</Task>\r\n"
        write(path("other.xml"), "\255\254" .. xml:gsub(".", "%0\0"))
        finally(function()
          tool { "schtasks", "/Delete", "/TN", name, "/F" }
          tool { "sc", "delete", name }
          fs.remove(fs.join(folder, name .. ".log"))
        end)
        local code, out = tool { "schtasks", "/Create", "/TN", name, "/XML",
          path("other.xml"), "/F" }
        assert.equal(0, code, out)
        local before = assert(fs.read(task_file))
        -- a service of that name, goliat-host's (not started)
        local script = fs.join(folder, "scripts", "agent.lua")
        code, out = tool { "sc", "create", name, "binPath=", '"' .. copy
          .. '" --service ' .. name .. ' "' .. script .. '"' }
        assert.equal(0, code, out)
        local left = "the logon task " .. name .. " is not goliat-host's (its "
          .. "author is not goliat-host --install desktop): left alone\n"
        for _, mode in ipairs { "desktop", "service" } do
          code, out = run({ "--install", mode, "--name", name })
          assert.equal(1, code, out)
          assert.equal(left .. "choose another name: goliat-host --install "
            .. mode .. " --name NAME\n", out)
          assert.equal(before, fs.read(task_file))
          assert.is_true(exists(name)) -- the service is still there
          assert.is_false(fs.exists(fs.join(folder, name .. "-task.xml")))
        end
        code, out = run({ "--uninstall", "--name", name })
        assert.equal(0, code, out)
        assert.equal("removed the service " .. name .. "\n" .. left, out)
        assert.equal(before, fs.read(task_file))
      end)

    it("--install desktop --user names a user that does not exist: says so, "
      .. "exits 1 and changes nothing", function()
        if not enabled then
          pending("may install a task: set GOLIAT_TEST_SERVICE=1 (wine.sh does)")
        end
        local name = "goliat-nouser-" .. host.sys.pid()
        local folder, _, run = agent_folder()
        local code, out = run({ "--install", "desktop", "--user",
          "goliat-no-such-user", "--name", name })
        assert.equal(1, code, out)
        assert.matches("^goliat%-host: %-%-user goliat%-no%-such%-user: no such "
          .. "user account %(.-%); give a local user or DOMAIN\\user%. "
          .. "Nothing was changed%.\n$", out)
        assert.is_false(fs.exists(fs.join(folder, name .. "-task.xml")))
      end)
  end)

  describe("desktop mode (goliat-host --desktop)", function()
    it("supervises the script as the service does: starts it again after a "
      .. "crash, passes --reload on to its reload handler, stops it with "
      .. "SIGBREAK on --stop and then ends; a second supervisor of the same "
      .. "name is refused; the log is NAME.log beside the exe (broken if the "
      .. "desktop agent is not restarted, not reloadable or stopped "
      .. "uncleanly)", function()
        local name = "goliat-desktop-" .. host.sys.pid()
        local folder, copy, run = agent_folder()
        local agent_out = fs.join(folder, "agent.out")
        local log_file = fs.join(folder, name .. ".log")
        local desk = assert(host.proc.spawn { argv = { copy, "--desktop", name,
          fs.join(folder, "scripts", "agent.lua"), "crash-first" },
          stdout = path("desk.out"), stderr = "stdout" })
        finally(function()
          if desk:running() then desk:kill() end
          fs.remove(log_file)
        end)
        local function starts()
          return select(2, (fs.read(agent_out) or ""):gsub("start", ""))
        end
        -- the first run exits 3: started again 10 s later
        assert.is_true(H.wait_until(function() return starts() >= 2 end, 40),
          "not started again: " .. tostring(fs.read(log_file)))
        host.time.sleep(0.5) -- let it install its handlers
        local code, out = run({ "--desktop", name, "x.lua" })
        assert.equal(1, code)
        assert.matches("the desktop agent " .. q(name) .. " already runs "
          .. "%(goliat%-host %-%-stop " .. q(name) .. " stops it%)", out)
        code, out = run({ "--reload", name })
        assert.equal(0, code, out)
        assert.matches("asked the desktop agent " .. q(name) .. " to reload", out)
        assert.is_true(H.wait_until(function()
          return (fs.read(agent_out) or ""):find("got reload", 1, true) ~= nil
        end, 10), "no reload: " .. tostring(fs.read(agent_out)))
        code, out = run({ "--stop", name })
        assert.equal(0, code, out)
        assert.equal("stopped the desktop agent " .. name .. "\n", out)
        assert.equal(0, desk:wait())
        assert.matches("^start %d+\nstart %d+\ngot reload\ngot SIGBREAK\n"
          .. "end\n$", fs.read(agent_out))
        local log = fs.read(log_file) or ""
        assert.matches("desktop: supervising goliat%-host [^\n]*agent%.lua in "
          .. "session %d+\n", log)
        assert.matches("desktop: goliat%-host exited with code 3; starting it "
          .. "again in 10 s\n", log)
        assert.matches("desktop: reload requested: passed on to goliat%-host\n",
          log)
        assert.matches("desktop: stop requested: SIGBREAK to goliat%-host", log)
        assert.matches("desktop: goliat%-host exited with code 0; the desktop "
          .. "supervisor ends\n$", log)
        -- gone: the name is free again
        code = run({ "--stop", name })
        assert.equal(1, code)
      end)
  end)
end)
