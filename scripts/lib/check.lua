-- goliat-host scripts/agent.lua --check: is this machine ready to work?
--
-- Prints each effective setting and where it came from, then checks the
-- dashboard (reachable, TLS verified, which API it speaks, a heartbeat
-- round trip), the folders (writable, free space, configs/ and data/),
-- where studies run (Windows: the agent's session, 0 being the service's
-- with no desktop; Linux: the display), whether nvidia-smi sees a GPU, and
-- the study command (interpreter found, module importable). Each line
-- starts with OK, WARN or FAIL; the exit code is 1 when any line is FAIL.
-- It takes no work: its only trace on the dashboard is one heartbeat. It
-- works beside a running agent (it takes no lock and writes no state).
local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"

local M = {}

local LOW_SPACE = 2 ^ 30 -- bytes: less free space than this is a warning

local function gb(bytes)
  return string.format("%.1f GB", bytes / 1e9)
end

-- A setting's value as text, secrets and URL passwords hidden.
local function shown(key, value, redact)
  if value == nil then return "(unset)" end
  if value == false then return "(off)" end
  if value == true then return "on" end
  if key == "api_token" then return "***" end
  if type(value) == "table" then
    value = #value > 0 and cjson.encode(value) or "{}"
  end
  return redact(tostring(value))
end

function M.new(host, out)
  return setmetatable({ host = host, out = out or io.stdout, fails = 0,
    warns = 0 }, { __index = M })
end

function M:line(level, what, detail)
  if level == "FAIL" then self.fails = self.fails + 1 end
  if level == "WARN" then self.warns = self.warns + 1 end
  self.out:write(string.format("%-4s %s%s\n", level, what,
    detail and ": " .. detail or ""))
end

function M:settings(s)
  local redact = settings_lib.redacting_log(self.host.log, s.api_token).redact
  self:line("OK", "settings file", s.config_file or
    "none (the environment and the defaults of agent.lua only)")
  local keys = {}
  for key in pairs(settings_lib.ENV) do keys[#keys + 1] = key end
  table.sort(keys, function(a, b)
    return settings_lib.ENV[a] < settings_lib.ENV[b]
  end)
  for _, key in ipairs(keys) do
    self:line("OK", string.format("%s = %s (%s)", settings_lib.ENV[key],
      shown(key, s[key], redact), s.sources[key] or "default"))
  end
  for var, v in pairs(s.host_env) do
    self:line("OK", string.format("%s = %s (%s)", var, redact(v.value),
      v.source))
  end
end

-- The dashboard: one heartbeat, then which API it speaks (read-only).
function M:dashboard(agent_mod, s)
  local h = self.host
  local caller = setmetatable({ host = h, s = s }, { __index = agent_mod.Agent })
  local body = settings_lib.host_facts(h, s.hostname)
  body.machineId = s.machine_id
  local t0 = h.time.monotonic()
  local data, err, _, res, code = caller:call("POST", "/api/heartbeat", body)
  local ms = (h.time.monotonic() - t0) * 1000
  local https = s.monitoring_url:match("^[Hh][Tt][Tt][Pp][Ss]:") ~= nil
  if code == "tls" then
    self:line("FAIL", "TLS", "the dashboard's certificate is not trusted " ..
      "(" .. tostring(err) .. "): set GOLIAT_CA_BUNDLE to its CA's " ..
      "certificate (PEM)" .. (s.ca_bundle and ", now " .. s.ca_bundle or ""))
    return
  elseif not res then
    self:line("FAIL", "dashboard " .. s.monitoring_url, "unreachable: " ..
      tostring(err))
    return
  end
  self:line("OK", "dashboard " .. s.monitoring_url, "reachable")
  if https then
    self:line("OK", "TLS", "certificate verified (CA: " ..
      (s.ca_bundle or "the system's store") .. ")")
  end
  if data then
    self:line("OK", "heartbeat", string.format("POST /api/heartbeat " ..
      "answered %d in %.0f ms (machine id %s)", res.status, ms, s.machine_id))
  elseif res.status == 401 or res.status == 403 then
    self:line("FAIL", "heartbeat", string.format("HTTP %d: the dashboard " ..
      "refuses the token (GOLIAT_API_TOKEN)", res.status))
  else
    self:line("FAIL", "heartbeat", "POST /api/heartbeat: " .. tostring(err))
  end
  self:protocol(caller, s)
end

-- Which API: GET /api/super-studies only (the planned API's poll could
-- hand out work, so --check never polls).
function M:protocol(caller, s)
  if s.protocol == "assignment" then
    self:line("OK", "protocol", "assignment (GOLIAT_PROTOCOL; not polled " ..
      "by --check: a poll can hand out work)")
    return
  end
  local list, err, _, res = caller:call("GET", "/api/super-studies")
  local array = list and res.body:match("^%s*%[") ~= nil
  if array then
    self:line("OK", "protocol", string.format("super-study (GET " ..
      "/api/super-studies answered %d super stud%s)", #list,
      #list == 1 and "y" or "ies"))
    local names = {}
    for _, st in ipairs(list) do
      if type(st) == "table" and st.name then names[st.name] = true end
    end
    for _, want in ipairs(s.super_study or {}) do
      if not names[want] then
        self:line("WARN", "GOLIAT_SUPER_STUDY", "no super study named '" ..
          want .. "' on the dashboard (yet)")
      end
    end
  elseif s.protocol == "super-study" then
    self:line("FAIL", "protocol", "GOLIAT_PROTOCOL is super-study, but " ..
      "GET /api/super-studies answered " .. tostring(err or "no JSON array"))
  else
    self:line("OK", "protocol", "the planned API (GET /api/super-studies " ..
      "answered " .. tostring(err or "no JSON array") .. "; the agent " ..
      "will poll GET /api/assignment)")
  end
end

-- The interpreter, and `-m MODULE` importable from the project dir.
function M:study_command(s)
  local h = self.host
  local cmd = s.study_command
  local exe = cmd[1]
  local found = (exe:find("[/\\]") and h.fs.exists(exe) and exe) or
    settings_lib.which(h, exe)
  if not found then
    self:line("FAIL", "study command", exe .. " is not found (PATH, or " ..
      "set GOLIAT_STUDY_COMMAND)")
    return
  end
  self:line("OK", "study command", table.concat(cmd, " ") .. " (" .. found ..
    ")")
  local module
  for i, word in ipairs(cmd) do
    if word == "-m" then module = cmd[i + 1] end
  end
  if not module then return end
  local argv = { found }
  for i = 2, #cmd do
    if cmd[i] == "-m" then break end
    argv[#argv + 1] = cmd[i] -- the py launcher's -3, say
  end
  argv[#argv + 1] = "-c"
  argv[#argv + 1] = "import " .. module
  local out = h.fs.join(s.work_dir, ".goliat-check-import.txt")
  local p = h.proc.spawn { argv = argv, cwd = s.project_dir, stdout = out,
    stderr = "stdout" }
  if not p then
    self:line("FAIL", "study command", "cannot run " .. found)
    return
  end
  local deadline = h.time.monotonic() + 60
  while p:running() and h.time.monotonic() < deadline do h.time.sleep(0.1) end
  if p:running() then p:kill() end
  local code = p:wait()
  local text = h.fs.read(out) or ""
  h.fs.remove(out)
  if code == 0 then
    self:line("OK", "study command", "python imports " .. module ..
      " (from " .. s.project_dir .. ")")
  else
    local last = text:match("([^\r\n]+)[\r\n]*$") or ("exit code " ..
      tostring(code))
    self:line("FAIL", "study command", "python cannot import " .. module ..
      ": " .. last)
  end
end

-- A folder the agent writes: can it, and how much room is left.
function M:folder(var, dir, min_free_gb)
  local h = self.host
  local probe = h.fs.join(dir, settings_lib.WRITE_PROBE)
  local ok, err = h.fs.mkdir_p(dir) -- as the agent would
  if ok then ok, err = h.fs.write_atomic(probe, "", { sync = false }) end
  if not ok then
    self:line("FAIL", var .. " " .. dir, "cannot write there: " ..
      tostring(err))
    return false
  end
  h.fs.remove(probe)
  local space = h.fs.space(dir)
  if space and min_free_gb and min_free_gb > 0 and
      space.free < min_free_gb * 1e9 then
    self:line("FAIL", var .. " " .. dir, string.format("writable, only %s " ..
      "free: below GOLIAT_MIN_FREE_GB (%g), the agent takes no new work " ..
      "until there is room", gb(space.free), min_free_gb))
  elseif space and space.free < LOW_SPACE then
    self:line("WARN", var .. " " .. dir, "writable, only " ..
      gb(space.free) .. " free")
  else
    self:line("OK", var .. " " .. dir, "writable" ..
      (space and ", " .. gb(space.free) .. " free" or ""))
  end
  return true
end

function M:folders(s)
  local h = self.host
  self:folder("GOLIAT_WORK_DIR", s.work_dir, s.min_free_gb)
  if s.project_dir ~= s.work_dir then
    self:folder("GOLIAT_PROJECT_DIR", s.project_dir, s.min_free_gb)
  end
  for _, sub in ipairs { "configs", "data" } do
    local st = h.fs.stat(h.fs.join(s.project_dir, sub))
    if not st or st.type ~= "directory" then
      self:line("WARN", "GOLIAT_PROJECT_DIR " .. s.project_dir, "has no " ..
        sub .. "/ (is it the GOLIAT project?)")
    end
  end
end

-- The pid of the agent running on this work dir, from its status file
-- (rewritten at least every status_every seconds while it runs), or nil.
function M:agent_pid(s, agent_mod)
  local h = self.host
  local st = cjson.decode(h.fs.read(h.fs.join(s.work_dir,
    agent_mod.STATUS_FILE)) or "")
  if type(st) ~= "table" then return nil end
  local pid, at = math.tointeger(st.pid), tonumber(st.updated_at)
  if not pid or not at or pid == h.sys.pid() then return nil end
  if h.time.now() - at > 3 * (s.status_every or 30) + 10 then return nil end
  return h.proc.alive(pid) and pid or nil
end

-- Windows: the session the running agent is in (else this --check's).
-- Session 0 is the service's: no desktop for GOLIAT's window, and GPU
-- programs that need a display see no GPU there. Returns the session
-- nvidia-smi runs in (this process's) and the agent's, when known.
function M:session(s, agent_mod)
  local h = self.host
  local own, own_console = h.sys.session_id()
  local pid = self:agent_pid(s, agent_mod)
  local id, console, who
  if pid then
    id, console = h.sys.session_id(pid)
    who = string.format("the agent, pid %d", pid)
  end
  if not id then
    id, console = own, own_console
    who = pid and "this --check; the agent's cannot be read" or
      "this --check; no agent runs now"
  end
  if not id then
    self:line("WARN", "session", "unknown: " .. tostring(console))
    return nil
  end
  if id == 0 then
    self:line("WARN", "session 0 (the service)", "studies have no visible " ..
      "desktop, and GPU programs may not see the GPU; see --install " ..
      "desktop (" .. who .. ")")
  else
    local user = id == own and h.sys.getenv("USERNAME")
    self:line("OK", "session", string.format("%d (desktop%s, %s; %s)", id,
      user and " of user " .. user or "",
      console and "shown on the console" or "a remote desktop session",
      who))
  end
  return own, pid and id or nil
end

-- A display server on this machine: X's sockets, or Wayland's.
local function display_server(h)
  for _, name in ipairs(h.fs.list("/tmp/.X11-unix") or {}) do
    local n = name:match("^X(%d+)$")
    if n then return "X on :" .. n end
  end
  for _, uid in ipairs(h.fs.list("/run/user") or {}) do
    for _, name in ipairs(h.fs.list("/run/user/" .. uid) or {}) do
      if name:match("^wayland%-%d+$") then
        return "Wayland, /run/user/" .. uid .. "/" .. name
      end
    end
  end
  return nil
end

-- Linux: whether the agent has a display for GOLIAT's window. None on a
-- machine without a display server is how a server runs; one that is not
-- handed to the agent is a warning.
function M:display()
  local h = self.host
  local d, w = h.sys.getenv("DISPLAY") or "", h.sys.getenv("WAYLAND_DISPLAY")
    or ""
  if d ~= "" or w ~= "" then
    self:line("OK", "display", (d ~= "" and "DISPLAY=" .. d or
      "WAYLAND_DISPLAY=" .. w) .. ": GOLIAT's window can show")
    return
  end
  local server = display_server(h)
  if server then
    self:line("WARN", "display", "neither DISPLAY nor WAYLAND_DISPLAY is " ..
      "set, though a display server runs here (" .. server .. "): " ..
      "studies have no visible window (for the packaged unit: " ..
      "systemctl edit goliat-agent, Environment=DISPLAY=:0)")
  else
    self:line("OK", "display", "none (no DISPLAY or WAYLAND_DISPLAY, and " ..
      "no display server here): studies run without a window")
  end
end

-- Whether an NVIDIA device (vendor 0x10de) is on the PCI bus (Linux).
local function nvidia_on_pci(h)
  local dir = "/sys/bus/pci/devices"
  for _, dev in ipairs(h.fs.list(dir) or {}) do
    local vendor = h.fs.read(dir .. "/" .. dev .. "/vendor")
    if vendor and vendor:match("^0x10de") then return true end
  end
  return false
end

-- Whether nvidia-smi sees a GPU from here (bounded by gpu_probe_timeout;
-- its output to a file of --check's own, never the agent's probe file).
-- own and agent are the sessions of this --check and of the agent
-- (Windows), when known.
function M:gpu(s, own, agent)
  local h = self.host
  local from = own and string.format(" from session %d", own) or ""
  if own and agent and agent ~= own then
    from = from .. string.format(" (the agent runs in session %d, where " ..
      "it may differ)", agent)
  end
  local smi = settings_lib.which(h, "nvidia-smi")
  if not smi then
    if h.sys.platform() == "windows" then
      self:line("WARN", "GPU", "nvidia-smi not found (it comes with the " ..
        "NVIDIA driver): studies would run without an NVIDIA GPU")
    elseif nvidia_on_pci(h) then
      self:line("WARN", "GPU", "an NVIDIA GPU is on the PCI bus, but " ..
        "nvidia-smi is not found: is the NVIDIA driver installed?")
    else
      self:line("OK", "GPU", "none: no NVIDIA GPU on the PCI bus, and no " ..
        "nvidia-smi")
    end
    return
  end
  local out = h.fs.join(s.work_dir, ".goliat-check-gpu.txt")
  h.fs.remove(out)
  local p = h.proc.spawn { argv = { smi, "--query-gpu=name",
    "--format=csv,noheader" }, stdout = out, stderr = "stdout" }
  if not p then
    self:line("WARN", "GPU", "cannot run " .. smi)
    return
  end
  local limit = s.gpu_probe_timeout or 10
  local deadline = h.time.monotonic() + limit
  while p:running() and h.time.monotonic() < deadline do h.time.sleep(0.1) end
  local late = p:running()
  if late then p:kill() end
  local code = p:wait()
  local text = h.fs.read(out) or ""
  h.fs.remove(out)
  local lines = {}
  for line in text:gmatch("[^\r\n]+") do
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" then lines[#lines + 1] = line end
  end
  if late then
    self:line("WARN", "GPU", string.format("nvidia-smi%s did not answer " ..
      "within %g s", from, limit))
  elseif code == 0 and #lines > 0 then
    self:line("OK", "GPU", table.concat(lines, ", ") .. " (nvidia-smi" ..
      from .. ")")
  else
    self:line("WARN", "GPU", "nvidia-smi" .. from .. " sees no GPU: " ..
      (lines[#lines] or ("exit code " .. tostring(code))))
  end
end

-- Where studies run (a desktop for GOLIAT's window) and the GPU.
function M:desktop(s, agent_mod)
  if self.host.sys.platform() == "windows" then
    self:gpu(s, self:session(s, agent_mod))
  else
    self:display()
    self:gpu(s)
  end
end

-- The gateway's hook (scripts/pyhook/): without it GOLIAT's own messages
-- go to the dashboard directly, past the gateway.
function M:hook(s)
  if not (s.gateway and s.gateway_hook) then return end
  local redact = settings_lib.redacting_log(self.host.log, s.api_token).redact
  local file = self.host.fs.join(s.hook_dir, "sitecustomize.py")
  if self.host.fs.exists(file) then
    self:line("OK", "gateway hook", string.format("%s: GOLIAT's requests " ..
      "to %s go through the gateway", file,
      redact(table.concat(s.gateway_urls, ", "))))
  else
    self:line("FAIL", "gateway hook", file .. " is missing: GOLIAT's own " ..
      "messages would bypass the gateway (install the agent again, or set " ..
      "GOLIAT_GATEWAY_HOOK=off)")
  end
end

-- The whole check; returns the exit code.
function M.run(host, agent_mod)
  local self = M.new(host)
  local s, err = agent_mod.load_settings(host, { look_only = true })
  if s then
    local ok
    ok, err = settings_lib.apply_host(host, s)
    if not ok then s = nil end
  end
  if not s then
    self:line("FAIL", "settings", err)
    return 1
  end
  self:settings(s)
  s.machine_id, s.machine_id_source = settings_lib.machine_id(host, s)
  self:line("OK", "machine id", s.machine_id .. " (" .. s.machine_id_source ..
    ")")
  self:dashboard(agent_mod, s)
  self:folders(s)
  self:desktop(s, agent_mod)
  self:study_command(s)
  self:hook(s)
  self.out:write(string.format("%s: %d FAIL, %d WARN\n",
    self.fails > 0 and "not ready" or "ready", self.fails, self.warns))
  return self.fails > 0 and 1 or 0
end

return M
