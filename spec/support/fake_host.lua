-- A fake `host` module for policy specs: a virtual clock, tasks as plain
-- coroutines run by a small discrete-event scheduler, scripted HTTP and
-- processes, and an in-memory file system. Nothing here touches the real
-- network, clock, processes or disk, so a spec of hours of agent time runs
-- in milliseconds and always the same way.
--
--   local f = fake_host.new { env = { GOLIAT_MONITORING_URL = "http://d" } }
--   f.http_handler = function(req) return { status = 200, body = "{}" } end
--   f.spawn_handler = function(opts) return { exit_code = 0, after = 30 } end
--   (and on_end = function(code, signal) ... end: called as it ends)
--   f:start(function(host) agent.main(host) end)
--   f:run_for(120)          -- two minutes of agent time
--   f:run_until(function() return #f.reports() >= 1 end, 3600)
local cjson = require "cjson"

local M = {}

local Fake = {}
Fake.__index = Fake

local WALL_START = 1800000000 -- a fixed wall clock origin (2027)

function M.new(opts)
  opts = opts or {}
  local f = setmetatable({}, Fake)
  f.now = 0
  f.tasks = {}
  f.env = opts.env or {}
  f.files = {}         -- path -> contents
  f.locks = {}         -- path -> true while an agent holds it
  f.dirs = { ["/"] = true }
  f.writes = {}        -- every path written, in order
  f.requests = {}      -- every HTTP request, in order, with .at
  f.spawned = {}       -- every spawn's options, in order
  f.procs = {}         -- fake process objects, in order
  f.logs = {}          -- { level, text }
  f.signal_handlers = {}
  f.servers = {}       -- every host.http.serve, in order (kept when closed)
  f.random_calls = 0
  f.exit_code = nil
  f.task_errors = {}   -- tracebacks of tasks that failed
  f.raise_errors = true -- a failing task fails the spec (unless joined)
  f.platform = opts.platform or "linux"
  f.cwd = opts.cwd or "/work"
  f.http_handler = function() return nil, "no handler", "connect" end
  f.spawn_handler = function() return { exit_code = 0, after = 1 } end
  f.host = f:make_host()
  return f
end

------------------------------------------------------------------------------
-- Scheduler
------------------------------------------------------------------------------

-- Block the running task until `cond()` is true or the clock reaches `at`.
local function block(at, cond)
  local why = coroutine.yield("block", at, cond)
  if why == "dead" then error("task stopped by the fake host exiting", 0) end
end

function Fake:spawn(name, fn, ...)
  local args = table.pack(...)
  local task = { name = name, at = self.now }
  task.co = coroutine.create(function() return fn(table.unpack(args, 1, args.n)) end)
  function task.join()
    block(nil, function() return task.done end)
    if task.error then return false, task.error end
    return true
  end
  table.insert(self.tasks, task)
  return task
end

function Fake:runnable(t)
  return (t.at and t.at <= self.now) or (t.cond and t.cond())
end

-- Resume every task that can run, until none can.
-- Processes whose time has come end now, writing their exit file as the
-- study wrapper does (M.exit_file).
function Fake:finish_procs()
  for _, p in ipairs(self.procs) do
    if not p.ended and p.exit_at <= self.now then p.finish() end
  end
end

function Fake:settle()
  self:finish_procs()
  local progress, rounds = true, 0
  while progress and not self.exit_code do
    progress = false
    rounds = rounds + 1
    if rounds > 10000 then
      error("fake host: tasks keep running without time passing (a loop " ..
        "that never sleeps?) at t=" .. self.now, 0)
    end
    for _, t in ipairs(self.tasks) do
      if not t.done and self:runnable(t) and not self.exit_code then
        progress = true
        t.at, t.cond = nil, nil
        local ok, kind, at, cond = coroutine.resume(t.co)
        if not ok then
          t.done, t.error = true, debug.traceback(t.co, kind)
          table.insert(self.task_errors, t.error)
          if self.raise_errors then
            error(string.format("fake task '%s' failed: %s", t.name, t.error), 0)
          end
        elseif coroutine.status(t.co) == "dead" then
          t.done = true
        elseif kind == "block" then
          t.at, t.cond = at, cond
        else
          t.at = self.now -- a plain yield: run again
        end
      end
    end
  end
end

function Fake:next_time()
  local next_at
  for _, t in ipairs(self.tasks) do
    if not t.done and t.at and (not next_at or t.at < next_at) then
      next_at = t.at
    end
  end
  for _, p in ipairs(self.procs) do
    if not p.ended and (not next_at or p.exit_at < next_at) then
      next_at = p.exit_at
    end
  end
  return next_at
end

-- Run until pred() is true (checked after each step) or `limit` seconds of
-- fake time have passed. Returns whether pred became true.
function Fake:run_until(pred, limit)
  local deadline = self.now + limit
  while true do
    self:settle()
    if pred() then return true end
    if self.exit_code then return false end
    local next_at = self:next_time()
    if not next_at or next_at > deadline then
      self.now = deadline
      self:settle()
      return pred()
    end
    self.now = math.max(self.now, next_at)
  end
end

function Fake:run_for(seconds)
  self:run_until(function() return false end, seconds)
end

function Fake:start(main)
  self.main = main
  self:spawn("main", main, self.host)
end

-- The agent dies at once (kill -9): its tasks vanish; files and processes
-- stay. start() then runs a new agent on the same machine.
function Fake:kill_agent()
  for _, t in ipairs(self.tasks) do t.done = true end
  for _, srv in ipairs(self.servers) do srv.closed = true end
  self.locks = {}
  self.signal_handlers = {}
  self.exit_code = nil
end

-- A host.fs operation that waits f.fs_wait(op, path) seconds, if set.
function Fake:fs_wait(op, path)
  local s = self.fs_wait_for and self.fs_wait_for(op, path)
  if s and s > 0 then self.host.time.sleep(s) end
end

-- Deliver a signal: its handler runs as a new task.
function Fake:signal(name)
  local fn = self.signal_handlers[name]
  assert(fn, "no handler for " .. name)
  self:spawn("on " .. name, fn, name)
end

------------------------------------------------------------------------------
-- Views for assertions
------------------------------------------------------------------------------

-- A request to the open server whose URL prefix `url` is (a study posting
-- through the agent's gateway): runs the handler as a task, as the real
-- server does; returns its reply once the handler is done (nil and "closed"
-- when no server is listening there: a connection refused).
function Fake:send_to(url, method, path, body, headers)
  local port, prefix = url:match("^http://127%.0%.0%.1:(%d+)(.*)$")
  local srv
  for _, s in ipairs(self.servers) do
    if s.port_n == tonumber(port) and not s.closed then srv = s end
  end
  if not srv then return nil, "closed" end
  local full = prefix .. path
  local query = full:match("%?(.*)$") or ""
  local req = { method = method, path = full:gsub("%?.*$", ""), query = query,
    target = full, headers = headers or {}, body = body or "",
    peer = "127.0.0.1" }
  local spooled
  if srv.opts.spool_dir and #req.body > (srv.opts.spool_over or 1048576) then
    -- as the real server: a large body comes as a file in spool_dir
    self.spool_n = (self.spool_n or 0) + 1
    spooled = srv.opts.spool_dir .. "/.spool-fake-" .. self.spool_n .. ".part"
    self.files[spooled] = req.body
    req.body, req.body_file, req.body_size = nil, spooled, #body
  end
  local reply
  local t = self:spawn("gateway request", function()
    reply = srv.handler(req)
  end)
  self:run_until(function() return t.done end, 60)
  if spooled and self.files[spooled] then
    -- what the handler left (removed, as the real server does)
    self.spool_left = (self.spool_left or 0) + 1
    self.files[spooled] = nil
  end
  return reply
end

function Fake:requests_to(path_pattern)
  local out = {}
  for _, r in ipairs(self.requests) do
    if r.url:match(path_pattern) then table.insert(out, r) end
  end
  return out
end

-- The decoded bodies of agent reports (gui updates with an assignment_id).
function Fake:reports()
  local out = {}
  for _, r in ipairs(self:requests_to("/api/gui%-update$")) do
    if r.delivered then table.insert(out, cjson.decode(r.body)) end
  end
  return out
end

function Fake:log_text()
  local lines = {}
  for _, l in ipairs(self.logs) do table.insert(lines, l.text) end
  return table.concat(lines, "\n")
end

------------------------------------------------------------------------------
-- The host module
------------------------------------------------------------------------------

local function normalize(path)
  return (path:gsub("/+", "/"))
end

function Fake:make_host()
  local f = self
  local host = { version = "fake" }

  host.time = {
    monotonic = function() return f.now end,
    -- f.wall_step: the wall clock stepped (forward, or back when < 0)
    now = function() return WALL_START + f.now + (f.wall_step or 0) end,
    sleep = function(s)
      assert(type(s) == "number" and s >= 0, "sleep: bad duration")
      block(f.now + s)
    end,
  }

  host.task = {
    spawn = function(name, fn, ...)
      if type(name) == "function" then return f:spawn("task", name, fn, ...) end
      return f:spawn(name, fn, ...)
    end,
    yield = function() coroutine.yield() end,
    -- host.task.event(): a pulse; wait(s) is true when set, false after s
    event = function()
      local ev = { gen = 0, waiting = 0 }
      function ev.wait(_, s)
        local g = ev.gen
        ev.waiting = ev.waiting + 1
        block(s and f.now + s or nil, function() return ev.gen ~= g end)
        ev.waiting = ev.waiting - 1
        return ev.gen ~= g
      end
      function ev.set()
        ev.gen = ev.gen + 1
        return ev.waiting
      end
      return ev
    end,
  }

  host.exit = function(code)
    f.exit_code = code or 0
    coroutine.yield("block", nil, function() return false end)
  end
  -- the script runs again in the same process: a new agent, same machine
  host.restart = function()
    f.restarts = (f.restarts or 0) + 1
    f:spawn("host restart", function()
      f:kill_agent()
      f:start(f.main)
    end)
    coroutine.yield("block", nil, function() return false end)
  end

  local function log(level)
    return function(fmt, ...)
      local text = select("#", ...) > 0 and string.format(fmt, ...) or fmt
      table.insert(f.logs, { level = level, text = text })
    end
  end
  host.log = { debug = log("debug"), info = log("info"), warn = log("warn"),
    error = log("error") }

  host.sys = {
    getenv = function(name) return f.env[name] end,
    setenv = function(name, value) f.env[name] = value; return true end,
    hostname = function() return "fake-vm" end,
    pid = function() return 4242 end,
    -- f.boot_id: a reboot between two starts changes it
    boot_id = function() return f.boot_id or "fake-boot-1" end,
    -- distinct bytes on every call (not random: the specs are repeatable)
    random = function(n)
      f.random_calls = f.random_calls + 1
      local out = {}
      for i = 1, n do out[i] = string.char((f.random_calls * 31 + i * 7) % 256) end
      return table.concat(out)
    end,
    exepath = function() return "/opt/goliat/goliat-host" end,
    cpu_count = function() return 8 end,
    total_memory = function() return 32 * 2 ^ 30 end,
    platform = function() return f.platform end,
    cwd = function() return f.cwd end,
    interfaces = function()
      return {
        { name = "lo", address = "127.0.0.1", family = "inet", internal = true },
        { name = "eth0", address = "198.51.100.7", family = "inet",
          internal = false },
      }
    end,
    on_signal = function(name, fn)
      -- as the real host: "reload" is SIGHUP on POSIX
      if name == "reload" and f.platform ~= "windows" then name = "SIGHUP" end
      f.signal_handlers[name] = fn
      return { close = function() f.signal_handlers[name] = nil end }
    end,
  }

  host.fs = {
    join = function(...)
      return normalize(table.concat({ ... }, "/"))
    end,
    -- f.free: free bytes (a function of the path, or a number)
    space = function(path)
      local free = f.free
      if type(free) == "function" then free = free(normalize(path)) end
      return { free = free or 500e9, total = 1000e9 }
    end,
    mkdir_p = function(path)
      path = normalize(path)
      -- a file where a folder of the path should be: as a real disk
      local at = 1
      while true do
        local slash = path:find("/", at + 1, true)
        local part = slash and path:sub(1, slash - 1) or path
        if f.files[part] then
          return nil, part .. ": not a directory", "ENOTDIR"
        end
        if not slash then break end
        at = slash
      end
      f.dirs[path] = true
      return true
    end,
    exists = function(path)
      path = normalize(path)
      return f.files[path] ~= nil or f.dirs[path] ~= nil
    end,
    stat = function(path)
      path = normalize(path)
      if f.files[path] then
        return { type = "file", size = #f.files[path], mtime = 0 }
      elseif f.dirs[path] then
        return { type = "directory", size = 0, mtime = 0 }
      end
      return nil, path .. ": no such file or directory", "ENOENT"
    end,
    -- f.fs_wait_for(op, path): seconds the operation waits, as host.fs does
    -- on a slow disk (a read returns what it read before the wait)
    read = function(path)
      local data = f.files[normalize(path)]
      f:fs_wait("read", normalize(path))
      if not data then return nil, path .. ": no such file", "ENOENT" end
      return data
    end,
    sync = function(path)
      if not f.files[normalize(path)] then
        return nil, path .. ": no such file", "ENOENT"
      end
      f.synced = f.synced or {}
      table.insert(f.synced, normalize(path))
      return true
    end,
    write_atomic = function(path, data)
      path = normalize(path)
      f:fs_wait("write", path)
      table.insert(f.writes, path)
      f.files[path] = data
      return true
    end,
    remove = function(path)
      path = normalize(path)
      if not f.files[path] then
        return nil, path .. ": no such file or directory", "ENOENT"
      end
      f.files[path] = nil
      return true
    end,
    -- the lock of a process: a killed agent's lock goes with it
    lock = function(path)
      path = normalize(path)
      if f.locks[path] then return nil, path .. ": locked by another process", "EBUSY" end
      f.locks[path] = true
      return { unlock = function() f.locks[path] = nil end }
    end,
    rename = function(from, to)
      from, to = normalize(from), normalize(to)
      if not f.files[from] then
        return nil, from .. ": no such file or directory", "ENOENT"
      end
      table.insert(f.writes, to)
      f.files[to], f.files[from] = f.files[from], nil
      return true
    end,
    list = function(dir)
      dir = normalize(dir .. "/")
      local names = {}
      for path in pairs(f.files) do
        if path:sub(1, #dir) == dir and not path:find("/", #dir + 1, true) then
          table.insert(names, path:sub(#dir + 1))
        end
      end
      table.sort(names)
      return names
    end,
  }

  -- lossy where lua-cjson is ([] becomes {}); the real one is exact
  host.json = {
    select = function(text, ...)
      local ok, v = pcall(cjson.decode, text)
      if not ok then return nil, "not JSON", "EINVAL" end -- as the real one
      for _, k in ipairs { ... } do
        if type(v) ~= "table" then return nil, "nothing there", "ENOENT" end
        v = v[k]
      end
      if v == nil then return nil, "nothing there", "ENOENT" end
      return cjson.encode(v)
    end,
    set_string = function(text, key, value)
      local ok, v = pcall(cjson.decode, text)
      if not ok or type(v) ~= "table" then return nil, "not JSON", "EINVAL" end
      if v[key] == nil then return nil, "no member", "ENOENT" end
      v[key] = value
      return cjson.encode(v)
    end,
  }

  host.http = {
    -- a server: its handler is called by Fake:send_to (no sockets); a port
    -- asked for again is given again unless f.ports_taken[port]; none at
    -- all while f.serve_error is set
    serve = function(opts, handler)
      local port = opts.port ~= 0 and opts.port or 41000 + #f.servers
      if f.serve_error then return nil, f.serve_error, "EADDRINUSE" end
      if f.ports_taken and f.ports_taken[port] then
        return nil, "address already in use", "EADDRINUSE"
      end
      local srv = { opts = opts, handler = handler, port_n = port }
      function srv.port() return srv.port_n end
      function srv.close() srv.closed = true end
      table.insert(f.servers, srv)
      return srv
    end,
    request = function(opts)
      assert(type(opts.url) == "string", "request: url required")
      assert(opts.url:match("^https?://"), "only http and https URLs")
      assert(not (opts.body and opts.body_file), "body and body_file")
      local body = opts.body
      if opts.body_file then -- recorded as the body that was sent
        body = f.files[normalize(opts.body_file)]
        if not body then return nil, opts.body_file .. ": missing", "io" end
      end
      local req = {
        method = opts.method or (body and "POST" or "GET"),
        url = opts.url, headers = opts.headers or {}, body = body,
        body_file = opts.body_file, at = f.now, cainfo = opts.cainfo,
        max_size = opts.max_size, compressed = opts.compressed,
      }
      table.insert(f.requests, req)
      local res, err, code = f.http_handler(req, f)
      if res then
        res.headers = res.headers or {}
        res.body = res.body or ""
        req.status = res.status
        req.delivered = res.status >= 200 and res.status <= 299
      end
      return res, err, code
    end,
  }

  host.proc = {
    spawn = function(opts)
      table.insert(f.spawned, opts)
      local spec, err, errcode = f.spawn_handler(opts, f)
      if not spec then return nil, err, errcode end
      local p = { pid = 5000 + #f.spawned, started = f.now, opts = opts,
        exit_at = f.now + (spec.after or 0), spec = spec }
      table.insert(f.procs, p)
      -- the study wrapper's exit file, written when the study ends
      local function ended(code, sig)
        if p.ended then return end
        p.ended, p.code, p.sig = true, code, sig
        -- what the study sent as it ended (GOLIAT's window: `finished`)
        if spec.on_end then spec.on_end(code, sig) end
        local exit_file = M.exit_file(opts.argv)
        if exit_file and not spec.no_exit_file then
          f.files[normalize(exit_file)] = cjson.encode {
            exit_code = code, signal = sig, ended_at = WALL_START + f.now }
        end
      end
      function p.running() return not p.ended end
      function p.finish() ended(spec.exit_code, spec.signal) end
      function p.wait()
        block(nil, function() return p.ended end)
        if p.attached_copy then return nil, nil end
        return p.code, p.sig
      end
      function p.terminate(_, grace)
        -- (the agent also calls it once the wrapper ended, for leftovers)
        if not p.ended then p.terminated_with_grace = grace end
        ended(nil, "SIGTERM")
        return p.code, p.sig
      end
      function p.kill()
        ended(nil, "SIGKILL")
        return true
      end
      return p
    end,
    alive = function(pid)
      for _, p in ipairs(f.procs) do
        if p.pid == pid then return not p.ended end
      end
      return false
    end,
    start_time = function(pid)
      for _, p in ipairs(f.procs) do
        if p.pid == pid then return p.started end
      end
      return nil, "no such process", "ESRCH"
    end,
    keep_tree = function() return true end,
    -- the orphans a spec planted: each signal is recorded, SIGKILL ends them
    orphans = function(sig)
      f.orphan_signals = f.orphan_signals or {}
      if sig and (f.orphans or 0) > 0 then
        table.insert(f.orphan_signals, sig)
        if sig == "SIGKILL" then f.orphans = 0 end
      end
      return f.orphans or 0
    end,
    attach = function(pid)
      for _, p in ipairs(f.procs) do
        if p.pid == pid and not p.ended then
          f.attached = (f.attached or 0) + 1
          local copy = setmetatable({ attached_copy = true }, { __index = p })
          copy.wait = function()
            block(nil, function() return p.ended end)
            return nil, nil
          end
          return copy
        end
      end
      return nil, "process is not running", "ESRCH"
    end,
  }

  return host
end

-- The exit file in a study wrapper's argv: the first argument after the
-- host, the script and the wrapper's --options.
function M.exit_file(argv)
  local i = 3
  while argv[i] and argv[i]:match("^%-%-") do i = i + 2 end
  return argv[i]
end

return M
