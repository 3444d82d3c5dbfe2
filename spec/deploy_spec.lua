-- Deployment (issue 23): --install and --uninstall outside Windows, and
-- --check's lines about where studies run (Windows: the agent's session, 0
-- being the service's; Linux: the display) and whether nvidia-smi sees a
-- GPU, with a stand-in host for the cases this machine is not, then with
-- the real agent. The Windows install itself is in spec/windows_spec.lua.
local host = require "host"
local cjson = require "cjson"
local H = require "support.helpers"
local check = require "lib.check"

local fs = host.fs

describe("--install outside Windows", function()
  for _, argv in ipairs {
    { "--install", "service" },
    { "--install", "desktop", "--user", "someone" },
    { "--uninstall" },
  } do
    it("goliat-host " .. table.concat(argv, " ") .. " exits 2 and says how " ..
      "the Debian package installs the systemd unit (broken if it does " ..
      "anything else)", function()
        if H.windows then
          pending("Windows: spec/windows_spec.lua installs for real")
        end
        local r = H.run_host(argv)
        assert.equal(2, r.code)
        assert.equal("", r.stdout)
        assert.matches("^goliat%-host: " .. argv[1]:gsub("%-", "%%-") ..
          " is for Windows%. On Linux the Debian package", r.stderr)
        assert.matches("systemctl enable %-%-now goliat%-agent", r.stderr)
        assert.matches("apt%-get remove goliat%-host", r.stderr)
      end)
  end

  it("--desktop, --stop and --reload exit 2 with what to use instead", function()
    if H.windows then
      pending("Windows: spec/windows_spec.lua runs them")
    end
    local r = H.run_host({ "--desktop", "goliat-agent", "x.lua" })
    assert.equal(2, r.code)
    assert.matches("%-%-desktop is for Windows; on Linux run the agent " ..
      "under systemd", r.stderr)
    r = H.run_host({ "--stop", "goliat-agent" })
    assert.equal(2, r.code)
    assert.matches("systemctl stop goliat%-agent", r.stderr)
    r = H.run_host({ "--reload", "goliat-agent" })
    assert.equal(2, r.code)
    assert.matches("%-%-reload is for Windows; on Linux: systemctl reload " ..
      "goliat%-agent", r.stderr)
  end)

  it("--help lists the Windows install commands", function()
    local r = H.run_host({ "--help" })
    assert.equal(0, r.code)
    assert.matches("goliat%-host %-%-install service %[%-%-name NAME%]", r.stdout)
    assert.matches("goliat%-host %-%-install desktop %[%-%-user USER%] " ..
      "%[%-%-name NAME%]", r.stdout)
    assert.matches("goliat%-host %-%-uninstall %[%-%-name NAME%]", r.stdout)
  end)
end)

-- A host for lib.check that is the real one but for what `o` says: the
-- platform, the environment (only o.env: nothing of the test machine's),
-- sessions (pid -> { id, console }; own = this process), live pids, the
-- folders and files it lists and reads, and how nvidia-smi answers
-- (o.smi = { code = n, output = text } or { hang = true }; it is on PATH,
-- in /fakebin, when o.smi is set).
local function fake_host(o)
  local env = o.env or {}
  env.PATH = "/fakebin"
  local sys = setmetatable({
    platform = function() return o.platform end,
    getenv = function(name) return env[name] end,
    pid = function() return 1 end,
    session_id = function(pid)
      local s = (o.sessions or {})[pid or "own"]
      if not s then return nil, "session_id: no such process", "ESRCH" end
      return s[1], s[2]
    end,
  }, { __index = host.sys })
  local dirs, files = o.dirs or {}, o.files or {}
  local fake_fs = setmetatable({
    list = function(path) return dirs[path] end,
    stat = function(path)
      if path:match("^[/\\]fakebin[/\\]") then -- (join: \ on Windows)
        return o.smi and { type = "file", size = 0, mtime = 0 } or nil
      end
      return fs.stat(path)
    end,
    read = function(path)
      if files[path] then return files[path] end
      return fs.read(path)
    end,
  }, { __index = fs })
  local spawned = {}
  local proc = setmetatable({
    alive = function(pid) return (o.alive or {})[pid] == true end,
    spawn = function(opts)
      spawned[#spawned + 1] = opts.argv
      local smi, killed = o.smi, false
      if not smi.hang then
        assert(fs.write_atomic(opts.stdout, smi.output or ""))
      end
      return {
        running = function() return smi.hang and not killed end,
        kill = function() killed = true; return true end,
        wait = function()
          if smi.hang then return nil, "SIGKILL" end
          return smi.code or 0
        end,
      }
    end,
  }, { __index = host.proc })
  return setmetatable({ sys = sys, fs = fake_fs, proc = proc,
    spawned = spawned }, { __index = host })
end

describe("--check: where studies run, and the GPU", function()
  local work
  before_each(function()
    work = H.tmpdir()
  end)
  after_each(function()
    H.rm_rf(work)
  end)

  -- The lines lib.check's desktop() prints for o; and the fake host.
  local function lines(o)
    local h = fake_host(o)
    local out = {}
    local c = check.new(h, { write = function(_, s) out[#out + 1] = s end })
    c:desktop({ work_dir = work, status_every = 30, gpu_probe_timeout = 0.3 },
      { STATUS_FILE = "agent_status.json" })
    return table.concat(out), h
  end

  local function agent_status(pid, age)
    assert(fs.write_atomic(fs.join(work, "agent_status.json"), cjson.encode {
      pid = pid, updated_at = host.time.now() - (age or 1) }))
  end

  it("Windows: the agent in session 0 (the service) is a warning, with the " ..
    "GPU nvidia-smi sees from --check's own session (broken if the " ..
    "service's session passes as a desktop)", function()
      agent_status(4242)
      local out, h = lines { platform = "windows",
        sessions = { own = { 2, false }, [4242] = { 0, false } },
        alive = { [4242] = true },
        smi = { output = "NVIDIA RTX A4000\r\n" } }
      assert.equal("WARN session 0 (the service): studies have no visible " ..
        "desktop, and GPU programs may not see the GPU; see --install " ..
        "desktop (the agent, pid 4242)\n" ..
        "OK   GPU: NVIDIA RTX A4000 (nvidia-smi from session 2 (the agent " ..
        "runs in session 0, where it may differ))\n", out)
      assert.same({ fs.join("/fakebin", "nvidia-smi.exe"), "--query-gpu=name",
        "--format=csv,noheader" }, h.spawned[1])
      assert.is_nil(fs.stat(fs.join(work, ".goliat-check-gpu.txt")))
    end)

  it("Windows: the agent in a desktop session is OK and named with its " ..
    "user; no nvidia-smi is a warning", function()
      agent_status(4242)
      local out = lines { platform = "windows", env = { USERNAME = "gpuadmin" },
        sessions = { own = { 1, true }, [4242] = { 1, true } },
        alive = { [4242] = true } }
      assert.equal("OK   session: 1 (desktop of user gpuadmin, shown on the " ..
        "console; the agent, pid 4242)\n" ..
        "WARN GPU: nvidia-smi not found (it comes with the NVIDIA driver): " ..
        "studies would run without an NVIDIA GPU\n", out)
    end)

  it("Windows: with no agent running (a stale status file, a dead pid), " ..
    "--check's own session counts; session 0 is a warning there too",
    function()
      agent_status(4242, 3600) -- not rewritten for an hour
      local out = lines { platform = "windows",
        sessions = { own = { 3, false }, [4242] = { 0, false } },
        alive = { [4242] = true }, smi = { output = "A\nB\n" } }
      assert.equal("OK   session: 3 (desktop, a remote desktop session; " ..
        "this --check; no agent runs now)\n" ..
        "OK   GPU: A, B (nvidia-smi from session 3)\n", out)
      agent_status(4242)
      out = lines { platform = "windows",
        sessions = { own = { 0, false }, [4242] = { 0, false } },
        alive = {}, smi = { output = "A\n" } }
      assert.matches("^WARN session 0 %(the service%): studies have no " ..
        "visible desktop, [^\n]*%(this %-%-check; no agent runs now%)\n", out)
    end)

  it("nvidia-smi that fails or hangs is a warning with its words or the " ..
    "time it had (broken if a hung probe holds --check)", function()
      local out = lines { platform = "windows", sessions = { own = { 1, true } },
        smi = { code = 9, output = "NVIDIA-SMI has failed because it " ..
          "couldn't communicate with the NVIDIA driver.\r\n" } }
      assert.matches("\nWARN GPU: nvidia%-smi from session 1 sees no GPU: " ..
        "NVIDIA%-SMI has failed because it couldn't communicate with the " ..
        "NVIDIA driver%.\n$", out)
      local t0 = host.time.monotonic()
      out = lines { platform = "linux", smi = { hang = true } }
      assert.matches("\nWARN GPU: nvidia%-smi did not answer within 0%.3 s\n$",
        out)
      assert.is_true(host.time.monotonic() - t0 < 5)
    end)

  it("Linux: a display set is OK; none is OK on a machine without a display " ..
    "server, and a warning when one runs that the agent does not get",
    function()
      local out = lines { platform = "linux", env = { DISPLAY = ":1" },
        smi = { output = "Tesla T4\n" } }
      assert.equal("OK   display: DISPLAY=:1: GOLIAT's window can show\n" ..
        "OK   GPU: Tesla T4 (nvidia-smi)\n", out)
      out = lines { platform = "linux", env = { WAYLAND_DISPLAY = "wayland-0" } }
      assert.matches("^OK   display: WAYLAND_DISPLAY=wayland%-0: ", out)
      out = lines { platform = "linux", dirs = { ["/tmp/.X11-unix"] = { "X0" } } }
      assert.matches("^WARN display: neither DISPLAY nor WAYLAND_DISPLAY is " ..
        "set, though a display server runs here %(X on :0%): studies have " ..
        "no visible window", out)
      out = lines { platform = "linux", dirs = { ["/run/user"] = { "1000" },
        ["/run/user/1000"] = { "bus", "wayland-0" } } }
      assert.matches("^WARN display: [^\n]*%(Wayland, /run/user/1000/wayland%-0%)",
        out)
      out = lines { platform = "linux" }
      assert.matches("^OK   display: none %(no DISPLAY or WAYLAND_DISPLAY, " ..
        "and no display server here%): studies run without a window\n", out)
    end)

  it("Linux: no nvidia-smi is OK on a machine without an NVIDIA GPU, and a " ..
    "warning with one on the PCI bus", function()
      local pci = "/sys/bus/pci/devices"
      local out = lines { platform = "linux",
        dirs = { [pci] = { "0000:00:00.0" } },
        files = { [pci .. "/0000:00:00.0/vendor"] = "0x8086\n" } }
      assert.matches("\nOK   GPU: none: no NVIDIA GPU on the PCI bus, and no " ..
        "nvidia%-smi\n$", out)
      out = lines { platform = "linux",
        dirs = { [pci] = { "0000:00:00.0", "0000:01:00.0" } },
        files = { [pci .. "/0000:00:00.0/vendor"] = "0x8086\n",
          [pci .. "/0000:01:00.0/vendor"] = "0x10de\n" } }
      assert.matches("\nWARN GPU: an NVIDIA GPU is on the PCI bus, but " ..
        "nvidia%-smi is not found: is the NVIDIA driver installed%?\n$", out)
    end)
end)

describe("--check with a running agent", function()
  local cluster = require "support.cluster"
  local dash, agent

  after_each(function()
    if agent then cluster.stop(agent.proc) end
    if dash then cluster.stop(dash.proc) end
    agent, dash = nil, nil
  end)

  it("names the session the running agent is in (Windows), or the display " ..
    "(Linux), and what nvidia-smi sees (broken if the lines are missing or " ..
    "the agent's pid is not found)", function()
      local work = cluster.temp_dir("deploy-check")
      dash = cluster.start_dashboard()
      local env = cluster.agent_env(dash.url, work)
      agent = cluster.start_agent(env, work)
      local status = fs.join(work, "agent_status.json")
      assert(cluster.wait_until(function() return fs.exists(status) end, 60),
        "no status file: " .. tostring(fs.read(agent.log)))
      local r = H.run_host({ fs.join(cluster.source_dir, "scripts",
        "agent.lua"), "--check" }, { env = env, timeout = 120 })
      local out = r.stdout .. r.stderr
      if H.windows then
        local id = host.sys.session_id()
        -- (under wine every process is in session 1)
        assert.matches("\nOK   session: " .. id .. " %(desktop[^\n]*; the " ..
          "agent, pid " .. agent.proc.pid .. "%)\n", out)
      else
        assert.matches("\n[OKWARN]+ +display: ", out)
      end
      assert.matches("\n[OKWARN]+ +GPU: ", out)
    end)
end)
