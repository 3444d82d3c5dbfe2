-- Helpers shared by the specs (not a spec itself): temporary folders,
-- running goliat-host itself as a child, and bounded waiting.
-- Every function that waits must be called from a task (an `it` body).
local host = require "host"

local M = {}

-- Windows (the suite under wine): no POSIX tools, no /proc, and the C
-- runtime's tmpnam names a file in the root of the drive.
M.windows = host.sys.platform() == "windows"

-- The goliat-host binary under test: ctest sets GOLIAT_HOST; run by hand,
-- the host running this suite is arg[-1].
function M.host_binary()
  local env = os.getenv("GOLIAT_HOST")
  if env and env ~= "" then
    return env
  end
  local self = arg and arg[-1]
  if type(self) == "string" and self:find("goliat%-host[^/]*$") then
    return self
  end
  return "./build/goliat-host"
end

local tmp_count = 0

-- A fresh empty folder under /tmp (%TEMP% on Windows).
function M.tmpdir()
  if M.windows then
    local base = host.sys.getenv("TEMP") or host.sys.getenv("TMP") or "."
    repeat
      tmp_count = tmp_count + 1
      local name = host.fs.join(base, string.format("goliat-spec-%d-%d-%d",
        host.sys.pid(), tmp_count, math.random(1e6)))
      if not host.fs.exists(name) then
        assert(host.fs.mkdir_p(name))
        return name
      end
    until false
  end
  local name = os.tmpname() -- creates the file: the name is ours
  assert(os.remove(name))
  assert(host.fs.mkdir_p(name))
  return name
end

-- Run a child to its end within timeout seconds (killing it after that).
-- Returns code, signal, timed_out.
function M.run(opts, timeout)
  local p, msg = host.proc.spawn(opts)
  assert(p, msg)
  local deadline = host.time.monotonic() + (timeout or 10)
  while p:running() and host.time.monotonic() < deadline do
    host.time.sleep(0.02)
  end
  local timed_out = p:running()
  if timed_out then
    p:kill()
  end
  local code, sig = p:wait()
  return code, sig, timed_out
end

-- rm -rf, without following links whatever host.fs.stat does with them.
function M.rm_rf(path)
  if M.windows then
    local st = host.fs.stat(path)
    if st and st.type == "directory" then
      for _, name in ipairs(assert(host.fs.list(path))) do
        M.rm_rf(host.fs.join(path, name))
      end
    end
    if st then
      assert(host.fs.remove(path))
    end
    return
  end
  local code = M.run({ argv = { "rm", "-rf", path } })
  assert(code == 0, "rm -rf " .. path .. " failed")
end

-- Wait (bounded) until pred() is true; returns whether it became true.
function M.wait_until(pred, timeout)
  local deadline = host.time.monotonic() + (timeout or 5)
  repeat
    if pred() then
      return true
    end
    host.time.sleep(0.02)
  until host.time.monotonic() > deadline
  return pred() and true or false
end

-- Whether process pid exists and is not a zombie. Orphans may stay zombies
-- for a long time where PID 1 does not reap them (some containers), and a
-- zombie has stopped running all the same.
function M.alive(pid)
  if M.windows then
    return host.proc.alive(pid)
  end
  local code = M.run({ argv = { "kill", "-0", tostring(pid) }, stderr = "null" })
  if code ~= 0 then
    return false
  end
  local stat = host.fs.read("/proc/" .. pid .. "/stat")
  if stat and stat:match("^%d+ %b() (%a)") == "Z" then
    return false
  end
  return true
end

-- Wait (bounded) until pid is gone; returns whether it went.
function M.wait_gone(pid, timeout)
  return M.wait_until(function()
    return not M.alive(pid)
  end, timeout)
end

-- Run goliat-host on args with stdout and stderr captured; returns
-- {code, signal, timed_out, stdout, stderr, elapsed}.
function M.run_host(args, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  local out, err = host.fs.join(dir, "stdout"), host.fs.join(dir, "stderr")
  local argv = { M.host_binary() }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  local t0 = host.time.monotonic()
  local code, sig, timed_out = M.run({ argv = argv, env = opts.env, stdout = out, stderr = err },
    opts.timeout or 10)
  local r = {
    code = code,
    signal = sig,
    timed_out = timed_out,
    elapsed = host.time.monotonic() - t0,
    stdout = host.fs.read(out) or "",
    stderr = host.fs.read(err) or "",
  }
  M.rm_rf(dir)
  return r
end

-- n bytes of every value, numbered every 256 bytes (a lost, doubled or
-- moved piece shows); seed shifts the values.
function M.bytes(n, seed)
  local block = {}
  for i = 0, 251 do
    block[#block + 1] = string.char((i + (seed or 0)) % 256)
  end
  block = table.concat(block)
  local parts = {}
  for i = 1, n // 256 + 1 do
    parts[i] = string.pack("<I4", i) .. block
  end
  return table.concat(parts):sub(1, n)
end

return M
