-- Signal handlers across host.restart(): a signal that arrives while the
-- script restarts (its handlers closed with its run, the next run's not yet
-- installed) is held and handed to the next run's handler for it, instead of
-- ending the process. A real goliat-host child restarts itself; the spec
-- signals the child's pid it recorded while the second run has no handler.
-- POSIX signals only: on Windows, spec/windows_spec.lua sends a service stop
-- and a reload during a restart instead.
local host = require "host"
local H = require "support.helpers"

local fs = host.fs

-- The child: its first run installs handlers for `held` (as the agent does
-- for SIGINT, SIGTERM and reload) and restarts; the second run writes
-- "waiting", waits until the spec has sent its signals (the file "sent"),
-- then installs handlers for `wanted` (the first one last), each appending
-- "got NAME" to the file "got"; the handler of the first one exits 0.
local CHILD = [[
local host = require "host"
local fs = host.fs
local dir = arg[1]
local function path(name) return fs.join(dir, name) end
local held, wanted = {}, {}
for name in arg[2]:gmatch("[^,]+") do held[#held + 1] = name end
for name in arg[3]:gmatch("[^,]+") do wanted[#wanted + 1] = name end
if not fs.exists(path("first")) then
  for _, name in ipairs(held) do host.sys.on_signal(name, function() end) end
  assert(fs.write_atomic(path("first"), "first run " .. host.sys.pid()))
  host.restart()
end
assert(fs.write_atomic(path("waiting"), "waiting " .. host.sys.pid()))
local deadline = host.time.monotonic() + 20
while not fs.exists(path("sent")) and host.time.monotonic() < deadline do
  host.time.sleep(0.02)
end
for i = #wanted, 1, -1 do
  host.sys.on_signal(wanted[i], function(name)
    assert(fs.append(path("got"), "got " .. name .. "\n"))
    if i == 1 then
      host.time.sleep(0.2) -- a second delivery would show by now
      os.exit(0)
    end
  end)
end
host.time.sleep(20)
os.exit(3) -- the held signal never reached its handler
]]

-- Start the child; wait for its second run; send signals to the child's
-- pid (recorded here, never 0 or 1); let it go on; wait for its end.
-- Returns {code, signal, got, stderr}.
local function restart_and_signal(held, signals, wanted)
  local dir = H.tmpdir()
  local function path(name) return fs.join(dir, name) end
  assert(fs.write_atomic(path("child.lua"), CHILD))
  local p = assert(host.proc.spawn({
    argv = { H.host_binary(), path("child.lua"), dir, held, wanted },
    stdout = path("stdout"), stderr = path("stderr"),
  }))
  local pid = p.pid
  assert(type(pid) == "number" and pid > 1, "no pid of the child")
  local waiting = H.wait_until(function()
    return fs.exists(path("waiting")) or not p:running()
  end, 20)
  local code, sig
  if waiting and p:running() then
    assert.equal("first run " .. pid, fs.read(path("first")))
    assert.equal("waiting " .. pid, fs.read(path("waiting")), "not restarted in place")
    for _, name in ipairs(signals) do
      assert(p:signal(name))
    end
    assert(fs.write_atomic(path("sent"), "sent"))
    H.wait_until(function() return not p:running() end, 20)
  end
  if p:running() then p:kill() end
  code, sig = p:wait()
  local r = { code = code, signal = sig, got = fs.read(path("got")),
    stderr = fs.read(path("stderr")) or "" }
  H.rm_rf(dir)
  return r
end

describe("signal handlers across host.restart()", function()
  if H.windows then
    it("are checked with POSIX signals", function()
      pending("no kill on Windows: spec/windows_spec.lua sends a service stop "
        .. "and a reload during a restart")
    end)
    return
  end

  it("a SIGTERM that arrives while the restarted script has no handler yet "
    .. "runs its handler once it installs one (broken if the signal kills the "
    .. "process during the restart)", function()
      local r = restart_and_signal("SIGINT,SIGTERM,reload", { "SIGTERM" },
        "SIGTERM")
      assert.same({ 0 }, { r.code, r.signal }, r.stderr)
      assert.equal("got SIGTERM\n", r.got)
      assert.matches("received SIGTERM %(during the restart%)", r.stderr)
    end)

  it("each kind of signal held is delivered once, to the handler of its "
    .. "kind; a second SIGHUP is not a second reload (broken if a held signal "
    .. "is lost, doubled, or given to another handler)", function()
      local r = restart_and_signal("SIGINT,SIGTERM,reload",
        { "SIGHUP", "SIGHUP", "SIGTERM" }, "SIGTERM,reload,SIGINT")
      assert.same({ 0 }, { r.code, r.signal }, r.stderr)
      local lines = {}
      for line in (r.got or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
      table.sort(lines)
      assert.same({ "got SIGTERM", "got reload" }, lines)
    end)

  it("a signal the script had no handler for when it restarted keeps its "
    .. "default action (broken if every signal is held)", function()
      local r = restart_and_signal("SIGTERM", { "SIGINT" }, "SIGTERM,SIGINT")
      assert.same({ nil, "SIGINT" }, { r.code, r.signal }, r.stderr)
      assert.is_nil(r.got)
    end)
end)
