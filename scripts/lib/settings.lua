-- Helpers of the agent: reading its settings from the environment, the host
-- facts sent with each heartbeat, and small parsers. The policy itself is in
-- agent.lua.
local cjson = require "cjson.safe"
local config_file = require "lib.config_file"

local M = {}

-- The file written and removed at start-up to check the work dir.
M.WRITE_PROBE = ".goliat-write-test"

-- Environment variable for each setting that can be overridden.
M.ENV = {
  monitoring_url = "GOLIAT_MONITORING_URL",
  machine_id = "GOLIAT_MACHINE_ID",
  api_token = "GOLIAT_API_TOKEN",
  heartbeat_interval = "GOLIAT_HEARTBEAT_INTERVAL",
  poll_interval = "GOLIAT_POLL_INTERVAL",
  study_command = "GOLIAT_STUDY_COMMAND",
  work_dir = "GOLIAT_WORK_DIR",
  study_timeout = "GOLIAT_STUDY_TIMEOUT",
  study_grace = "GOLIAT_STUDY_GRACE",
  protocol = "GOLIAT_PROTOCOL",
  super_study = "GOLIAT_SUPER_STUDY",
  project_dir = "GOLIAT_PROJECT_DIR",
  oom_retries = "GOLIAT_OOM_RETRIES",
  public_ip_url = "GOLIAT_PUBLIC_IP_URL",
  hostname = "GOLIAT_HOSTNAME",
  claim_settle = "GOLIAT_CLAIM_SETTLE",
  study_log_max_mb = "GOLIAT_STUDY_LOG_MAX_MB",
  ca_bundle = "GOLIAT_CA_BUNDLE",
  gateway = "GOLIAT_GATEWAY",
  gateway_max_bytes = "GOLIAT_GATEWAY_MAX_BYTES",
  gateway_rate = "GOLIAT_GATEWAY_RATE",
  gateway_hook = "GOLIAT_GATEWAY_HOOK",
  gateway_urls = "GOLIAT_GATEWAY_URLS",
  lookup_max_bytes = "GOLIAT_LOOKUP_MAX_BYTES",
  failure_retries = "GOLIAT_FAILURE_RETRIES",
  failure_retry_delay = "GOLIAT_FAILURE_RETRY_DELAY",
  ownership_every = "GOLIAT_OWNERSHIP_EVERY",
  abandoned_after = "GOLIAT_ABANDONED_AFTER",
  idle_after = "GOLIAT_IDLE_AFTER",
  idle_command = "GOLIAT_IDLE_COMMAND",
  idle_poll_max = "GOLIAT_IDLE_POLL_MAX",
  min_free_gb = "GOLIAT_MIN_FREE_GB",
  keep_finished = "GOLIAT_KEEP_FINISHED",
  keep_finished_mb = "GOLIAT_KEEP_FINISHED_MB",
}

-- Variables the host itself reads at start-up (host/README.md); the
-- settings file may hold them too, and the agent applies them (apply_host).
M.HOST_ENV = { "GOLIAT_LOG_LEVEL", "GOLIAT_LOG_FILE", "GOLIAT_LOG_MAX_BYTES",
  "GOLIAT_LOG_KEEP", "GOLIAT_TASK_LIMIT" }

-- Settings whose empty value means "off" rather than "use the default".
local EMPTY_MEANS_OFF = { public_ip_url = true }

function M.is_http_url(s)
  local scheme, rest = s:match("^(%a[%w+.-]*)://(.+)$")
  scheme = scheme and scheme:lower()
  return (scheme == "http" or scheme == "https") and rest:match("^[^/?#]+")
    ~= nil
end

-- FNV-1a, 32 bits, as 8 hex digits (not for security: to tell texts apart)
function M.short_hash(text, h)
  h = h or 0x811c9dc5
  for i = 1, #text do
    h = ((h ~ text:byte(i)) * 0x01000193) & 0xffffffff
  end
  return string.format("%08x", h), h
end

-- Which policy runs: a hash of agent.lua and the .lua files of its lib/
-- and protocol/ folders (an operator's edit changes it), as 8 hex digits.
function M.policy_hash(host, dir)
  local fs, files = host.fs, { "agent.lua" }
  for _, sub in ipairs { "lib", "protocol" } do
    local names = fs.list(fs.join(dir, sub)) or {}
    table.sort(names)
    for _, name in ipairs(names) do
      if name:match("%.lua$") then files[#files + 1] = sub .. "/" .. name end
    end
  end
  local hex, h = "00000000", nil
  for _, f in ipairs(files) do
    local text = fs.read(fs.join(dir, f))
    if text then hex, h = M.short_hash(f .. "\0" .. text, h) end
  end
  return hex
end

function M.url_encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- The program `name` on PATH, or nil.
function M.which(host, name)
  local windows = host.sys.platform() == "windows"
  local sep = windows and ";" or ":"
  for dir in (host.sys.getenv("PATH") or ""):gmatch("[^" .. sep .. "]+") do
    for _, suffix in ipairs(windows and { ".exe", "" } or { "" }) do
      local path = host.fs.join(dir, name .. suffix)
      local st = host.fs.stat(path)
      if st and st.type ~= "directory" then return path end
    end
  end
  return nil
end

-- The Microsoft Store's python.exe stub opens the Store instead of Python.
local function store_stub(path)
  return path:lower():find("[/\\]microsoft[/\\]windowsapps[/\\]") ~= nil
end

-- python -m goliat study, with the Python users have: on Windows the first
-- real python.exe on PATH, else the py launcher; elsewhere python, or
-- python3 where there is no python.
function M.default_study_command(host)
  if host.sys.platform() == "windows" then
    for dir in (host.sys.getenv("PATH") or ""):gmatch("[^;]+") do
      local exe = host.fs.join(dir, "python.exe")
      local st = host.fs.stat(exe)
      if st and st.type ~= "directory" and not store_stub(exe) then
        return { exe, "-m", "goliat", "study" }
      end
    end
    if M.which(host, "py") then return { "py", "-3", "-m", "goliat", "study" } end
    return { "python", "-m", "goliat", "study" }
  end
  local python = "python"
  if not M.which(host, "python") and M.which(host, "python3") then
    python = "python3"
  end
  return { python, "-m", "goliat", "study" }
end

-- This machine's primary non-loopback IPv4 address.
function M.primary_ipv4(host)
  local list = host.sys.interfaces() or {}
  for _, i in ipairs(list) do
    if i.family == "inet" and not i.internal then return i.address end
  end
  return nil
end

-- Whether s is an IPv4 or IPv6 address (what a public-IP service answers).
function M.is_ip(s)
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts == 4 then
    for _, p in ipairs(parts) do
      if tonumber(p) > 255 then return false end
    end
    return true
  end
  return #s <= 45 and s:find(":", 1, true) ~= nil and
    s:match("^[%x:.]+$") ~= nil
end

-- The machine id GOLIAT itself uses (PROTOCOL.md section 5): the public IP
-- address, else the local address, else the host name. GOLIAT_MACHINE_ID
-- overrides all of them. Returns the id and where it came from.
function M.machine_id(host, s)
  if s.machine_id then return s.machine_id, "GOLIAT_MACHINE_ID" end
  local why = "the public IP lookup is off (GOLIAT_PUBLIC_IP_URL is empty)"
  if s.public_ip_url then
    local res, err = host.http.request { url = s.public_ip_url,
      timeout = s.public_ip_timeout, connect_timeout = s.public_ip_timeout,
      max_size = 1024, cainfo = s.ca_bundle }
    local ip = res and res.status == 200 and res.body:match("^%s*(.-)%s*$")
    if ip and M.is_ip(ip) then
      return ip, "public IP address from " .. s.public_ip_url
    end
    why = "the public IP lookup failed: " .. tostring(err or
      (res.status ~= 200 and "HTTP " .. res.status) or
      "the reply is not an IP address")
  end
  local address = M.primary_ipv4(host)
  if address then return address, "local address; " .. why end
  return host.sys.hostname(), "host name, no IPv4 address; " .. why
end

-- The heartbeat and poll intervals: at least 10 ms, so that a typo such
-- as 1e-9 cannot turn the agent into a flood of requests.
local function interval(name, value)
  local n = tonumber(value)
  if not n or n ~= n or n == math.huge or n < 0.01 then
    return nil, string.format(
      "%s must be a number of seconds >= 0.01, got '%s'", name, value)
  end
  return n
end

local function positive_seconds(name, value)
  local n = tonumber(value)
  if not n or n <= 0 or n ~= n or n == math.huge then
    return nil, string.format(
      "%s must be a positive number of seconds, got '%s'", name, value)
  end
  return n
end

local function seconds_or_zero(name, value)
  local n = tonumber(value)
  if not n or n < 0 or n ~= n or n == math.huge then
    return nil, string.format(
      "%s must be a number of seconds >= 0, got '%s'", name, value)
  end
  return n
end

-- A command as a JSON array of strings; `example` goes in the message.
local function command_list(example)
  return function(name, value)
    local cmd = cjson.decode(value)
    if type(cmd) ~= "table" or #cmd == 0 then
      return nil, name .. " must be a JSON array of strings, e.g. " .. example
    end
    for k, v in pairs(cmd) do
      if math.type(k) ~= "integer" or k > #cmd or type(v) ~= "string" then
        return nil, name .. " must be a JSON array of strings"
      end
    end
    return cmd
  end
end
local study_command = command_list('["python","-m","goliat","study"]')

local function megabytes(name, value)
  local n = tonumber(value)
  if not n or n < 0 or n ~= n or n == math.huge then
    return nil, string.format("%s must be a number of megabytes >= 0 " ..
      "(0 = no limit), got '%s'", name, value)
  end
  return n
end

local function gigabytes(name, value)
  local n = tonumber(value)
  if not n or n < 0 or n ~= n or n == math.huge then
    return nil, string.format("%s must be a number of gigabytes >= 0 " ..
      "(0 = no check), got '%s'", name, value)
  end
  return n
end

local function count(name, value)
  local n = math.tointeger(tonumber(value))
  if not n or n < 0 then
    return nil, string.format("%s must be a whole number >= 0, got '%s'",
      name, value)
  end
  return n
end

local ON_OFF = { on = true, off = false, ["true"] = true, ["false"] = false,
  ["1"] = true, ["0"] = false, yes = true, no = false }

local function on_off(name, value)
  local v = ON_OFF[value:lower()]
  if v == nil then
    return nil, string.format("%s must be on or off, got '%s'", name, value)
  end
  return v
end

-- A number of bytes, with an optional K, M or G (powers of 1024).
local function bytes(name, value)
  local digits, unit = value:match("^%s*(%d+%.?%d*)%s*([KkMmGg]?)[Bb]?%s*$")
  local n = tonumber(digits)
  if n then
    n = math.floor(n * (({ k = 2 ^ 10, m = 2 ^ 20, g = 2 ^ 30 })[unit:lower()]
      or 1))
  end
  if not n or n < 1048576 then
    return nil, string.format("%s must be a number of bytes >= 1 MiB (a K, " ..
      "M or G may follow), got '%s'", name, value)
  end
  return n
end

local function rate(name, value)
  local n = tonumber(value)
  if not n or n ~= n or n == math.huge or n < 0.1 then
    return nil, string.format("%s must be a number of messages per second " ..
      ">= 0.1, got '%s'", name, value)
  end
  return n
end

-- "https://a, http://b/" -> { "https://a", "http://b" }: base URLs
local function url_list(name, value)
  local list = {}
  for item in value:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$"):gsub("/+$", "")
    if item ~= "" then
      if not M.is_http_url(item) then
        return nil, string.format("%s must list http:// or https:// URLs, " ..
          "comma-separated; '%s' is not one", name, item)
      end
      list[#list + 1] = item
    end
  end
  if #list == 0 then
    return nil, name .. " must list at least one URL (turn the hook off " ..
      "with GOLIAT_GATEWAY_HOOK=off)"
  end
  return list
end

local PROTOCOLS = { auto = true, assignment = true, ["super-study"] = true }

local function protocol(name, value)
  if not PROTOCOLS[value] then
    return nil, string.format("%s must be auto, assignment or super-study, " ..
      "got '%s'", name, value)
  end
  return value
end

-- "a, b,c" -> { "a", "b", "c" }
local function name_list(name, value)
  local list = {}
  for item in value:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then list[#list + 1] = item end
  end
  if #list == 0 then
    return nil, name .. " must name at least one super study"
  end
  return list
end

local function public_ip_url(name, value)
  if value == "" then return false end
  if not M.is_http_url(value) then
    return nil, string.format("%s must be an http:// or https:// URL, or " ..
      "empty to skip the public IP lookup", name)
  end
  return value
end

local function monitoring_url(name, value)
  local url = value:gsub("/+$", "")
  if not M.is_http_url(url) then
    return nil, string.format("%s must be an http:// or https:// URL", name)
  end
  return url
end

local function absolute(host, dir)
  dir = dir:gsub("^%./+", "")
  if dir == "." or dir == "" then return assert(host.sys.cwd()) end
  if dir:match("^/") or dir:match("^%a:[/\\]") or dir:match("^\\\\") then
    -- (join alone: one separator on Windows, C:/x becomes C:\x)
    return host.fs.join(dir)
  end
  return host.fs.join(assert(host.sys.cwd()), dir)
end

local PARSERS = {
  monitoring_url = monitoring_url,
  heartbeat_interval = interval,
  poll_interval = interval,
  study_command = study_command,
  study_timeout = positive_seconds,
  study_grace = seconds_or_zero,
  protocol = protocol,
  super_study = name_list,
  oom_retries = count,
  public_ip_url = public_ip_url,
  claim_settle = seconds_or_zero,
  study_log_max_mb = megabytes,
  gateway = on_off,
  gateway_max_bytes = bytes,
  gateway_rate = rate,
  gateway_hook = on_off,
  gateway_urls = url_list,
  lookup_max_bytes = bytes,
  failure_retries = count,
  failure_retry_delay = seconds_or_zero,
  ownership_every = seconds_or_zero,
  abandoned_after = seconds_or_zero,
  idle_after = seconds_or_zero,
  idle_command = command_list('["shutdown","/s","/t","60"] or ' ..
    '["systemctl","poweroff"]'),
  idle_poll_max = interval,
  min_free_gb = gigabytes,
  keep_finished = count,
  keep_finished_mb = megabytes,
}

-- scripts/, the folder of agent.lua and study_wrapper.lua.
local function scripts_dir(host)
  local source = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = source:gsub("[/\\][^/\\]*$", ""):gsub("[/\\]?lib$", "")
  if dir == source or dir == "lib" then dir = "." end
  return absolute(host, dir == "" and "." or dir)
end

-- The value of variable `var` and where it comes from: the environment
-- (an empty variable counts as unset), else the settings file, else nil.
local function lookup(host, file, path, var, empty_is_value)
  local value = host.sys.getenv(var)
  if value and (value ~= "" or empty_is_value) then
    return value, "environment"
  end
  local entry = file[var]
  if entry then return entry.value, string.format("%s:%d", path, entry.line) end
  return nil
end

M.scripts_dir = scripts_dir
M.absolute = absolute

-- Settings: defaults, then the settings file, then the environment.
-- Returns the table, or nil and a one-line message naming the variable
-- (and the file and line when the value came from the file). s.sources
-- says where each setting came from. With opts.look_only (--check, --status)
-- nothing is created or written.
function M.load(host, defaults, opts)
  local known = {}
  for _, var in pairs(M.ENV) do known[var] = true end
  for _, var in ipairs(M.HOST_ENV) do known[var] = true end
  local file, path = config_file.load(host, scripts_dir(host), known)
  if not file then return nil, path end
  local s = { config_file = path, sources = {}, host_env = {} }
  for k, v in pairs(defaults) do s[k] = v end
  for key, var in pairs(M.ENV) do
    local value, source = lookup(host, file, path, var, EMPTY_MEANS_OFF[key])
    local where = source and source ~= "environment" and
      " (" .. source .. ")" or ""
    -- a token pasted from a file ends with a newline: surrounding blanks
    -- go; any other control character is refused (it could forge a log
    -- line or break a header)
    value = value and value:match("^%s*(.-)%s*$")
    if value and value:find("%c") then
      return nil, var .. " contains a control character (a line break, " ..
        "a tab, ...): remove it" .. where
    end
    if value and (value ~= "" or EMPTY_MEANS_OFF[key]) then
      local parse = PARSERS[key]
      if parse then
        local parsed, err = parse(var, value)
        if parsed == nil then return nil, err .. where end
        value = parsed
      end
      s[key], s.sources[key] = value, source
    end
  end
  for _, var in ipairs(M.HOST_ENV) do
    local value, source = lookup(host, file, path, var)
    if source and source ~= "environment" then
      s.host_env[var] = { value = value, source = source }
    end
  end
  if not s.monitoring_url then
    return nil, "GOLIAT_MONITORING_URL is not set: set it to the " ..
      "dashboard's base URL, e.g. https://dashboard.example.org" ..
      (path and " (in the environment or in " .. path .. ")" or "")
  end
  local ca_var = "GOLIAT_CA_BUNDLE"
  if not s.ca_bundle then
    -- else the variables curl's own tools read
    for _, var in ipairs { "CURL_CA_BUNDLE", "SSL_CERT_FILE" } do
      local v = host.sys.getenv(var)
      if v and v ~= "" and not s.ca_bundle then
        s.ca_bundle, s.sources.ca_bundle = v, "environment, " .. var
        ca_var = var
      end
    end
  end
  if s.ca_bundle then
    local st = host.fs.stat(s.ca_bundle)
    if not st or st.type == "directory" then
      return nil, string.format("%s: the CA bundle %s is not a file%s",
        ca_var, s.ca_bundle, s.sources.ca_bundle:match("^environment") and ""
        or " (" .. s.sources.ca_bundle .. ")")
    end
  end
  s.study_command = s.study_command or M.default_study_command(host)
  s.work_dir = absolute(host, s.work_dir or ".")
  s.project_dir = absolute(host, s.project_dir or s.work_dir)
  s.hostname = s.hostname or host.sys.hostname()
  s.host_exe = s.host_exe or host.sys.exepath()
  s.wrapper_script = s.wrapper_script or
    host.fs.join(scripts_dir(host), "study_wrapper.lua")
  s.hook_dir = s.hook_dir or host.fs.join(scripts_dir(host), "pyhook")
  if not s.gateway_urls then
    -- GOLIAT's own dashboard URL, and the one the agent reports to
    s.gateway_urls = { s.goliat_dashboard_url }
    if s.monitoring_url ~= s.goliat_dashboard_url then
      s.gateway_urls[2] = s.monitoring_url
    end
  end
  if opts and opts.look_only then return s end
  local ok, err = host.fs.mkdir_p(s.work_dir)
  if not ok then
    return nil, "GOLIAT_WORK_DIR: cannot create " .. s.work_dir .. ": " ..
      tostring(err)
  end
  local probe = host.fs.join(s.work_dir, M.WRITE_PROBE)
  ok, err = host.fs.write_atomic(probe, "", { sync = false })
  if not ok then
    return nil, "GOLIAT_WORK_DIR: cannot write in " .. s.work_dir .. ": " ..
      tostring(err)
  end
  host.fs.remove(probe)
  local configs = host.fs.join(s.project_dir, "configs")
  ok, err = host.fs.mkdir_p(configs)
  if not ok then
    return nil, "GOLIAT_PROJECT_DIR: cannot create " .. configs .. ": " ..
      tostring(err)
  end
  return s
end

-- Apply what the settings file says of the host's own variables (those of
-- the environment were applied by the host at start-up). Returns true, or
-- nil and a message naming the variable and the file's line.
function M.apply_host(host, s)
  local e = s.host_env or {}
  local level = e.GOLIAT_LOG_LEVEL
  if level and not pcall(host.log.set_level, level.value) then
    return nil, "GOLIAT_LOG_LEVEL must be debug, info, warn or error, got '" ..
      level.value .. "' (" .. level.source .. ")"
  end
  local limit = e.GOLIAT_TASK_LIMIT
  if limit then
    local n = tonumber(limit.value)
    if not n or n < 0 or n ~= n then
      return nil, "GOLIAT_TASK_LIMIT must be a number of seconds >= 0, got '" ..
        limit.value .. "' (" .. limit.source .. ")"
    end
    host.task.set_limit(n)
  end
  -- the host took GOLIAT_LOG_FILE from the environment, if it was there
  local file = e.GOLIAT_LOG_FILE
  if file and host.log.file and not host.log.file() then
    local function log_count(var, default, low, high)
      local v = host.sys.getenv(var)
      local src = "environment"
      if not v or v == "" then
        v, src = e[var] and e[var].value, e[var] and e[var].source
      end
      if not v then return default end
      local n = math.tointeger(tonumber(v))
      if not n or n < low or n > high then
        return nil, string.format("%s must be a whole number from %d to " ..
          "%d, got '%s' (%s)", var, low, high, v, src)
      end
      return n
    end
    local max, err = log_count("GOLIAT_LOG_MAX_BYTES", 10485760, 1,
      math.maxinteger)
    if not max then return nil, err end
    local keep
    keep, err = log_count("GOLIAT_LOG_KEEP", 5, 0, 100)
    if not keep then return nil, err end
    local ok, ferr = host.log.to_file(file.value, max, keep)
    if not ok then
      return nil, "GOLIAT_LOG_FILE: cannot write the log to " .. file.value ..
        ": " .. tostring(ferr) .. " (" .. file.source .. ")"
    end
  end
  return true
end

-- host.log with the API token (and its URL-encoded form), and the user and
-- password of any URL (scheme://user:password@host), replaced by "***" in
-- every message; redact(s) does the same to any string.
function M.redacting_log(log, token)
  local secrets = {}
  if token and token ~= "" then
    secrets = { token, M.url_encode(token) }
  end
  local function redact(s)
    s = tostring(s):gsub("(%a[%w+.-]*://)[^/?#@%s]+@", "%1***@")
    for _, secret in ipairs(secrets) do
      local at = 1
      while true do
        local i, j = s:find(secret, at, true)
        if not i then break end
        s = s:sub(1, i - 1) .. "***" .. s:sub(j + 1)
        at = i + 3
      end
    end
    return s
  end
  local out = { redact = redact }
  for _, level in ipairs { "debug", "info", "warn", "error" } do
    out[level] = function(fmt, ...)
      local text = select("#", ...) > 0 and string.format(fmt, ...) or fmt
      log[level]("%s", redact(text))
    end
  end
  return out
end

-- Facts sent with each heartbeat (PROTOCOL.md section 3); gpuName is
-- added later by gpu_name, which may take a while.
function M.host_facts(host, hostname)
  return {
    hostname = hostname or host.sys.hostname(),
    cpuCores = host.sys.cpu_count(),
    totalRamGB = math.floor(host.sys.total_memory() / 2 ^ 30 * 10 + 0.5) / 10,
  }
end

-- The first NVIDIA GPU's name, from nvidia-smi when it is installed, or
-- nil. Its output goes to a file in the agent's own work dir (never a
-- shared folder such as /tmp, where a planted link could redirect it), and
-- a probe that hangs is killed after `timeout` seconds.
function M.gpu_name(host, work_dir, timeout)
  local smi = M.which(host, "nvidia-smi")
  if not smi then return nil end
  local out = host.fs.join(work_dir, ".gpu_name.txt")
  host.fs.remove(out)
  local p = host.proc.spawn {
    argv = { smi, "--query-gpu=name", "--format=csv,noheader" },
    stdout = out, stderr = "null",
  }
  if not p then return nil end
  local deadline = host.time.monotonic() + timeout
  while p:running() and host.time.monotonic() < deadline do
    host.time.sleep(0.1)
  end
  if p:running() then p:kill() end
  local code = p:wait()
  local text = code == 0 and host.fs.read(out) or nil
  host.fs.remove(out)
  local name = text and text:match("^%s*([^\r\n]-)%s*[\r\n]")
  return name ~= "" and name or nil
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
  Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds since the epoch of a UTC civil date (no time zone involved).
local function utc_epoch(y, m, d, hh, mm, ss)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + hh * 3600 + mm * 60 + ss
end

-- An HTTP-date (RFC 9110, "Sun, 06 Dec 2026 12:00:00 GMT") as Unix
-- seconds, or nil.
function M.http_date(value)
  if type(value) ~= "string" then return nil end
  local d, mon, y, hh, mm, ss =
    value:match("^%s*%a+,%s*(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+GMT")
  if not d or not MONTHS[mon] then return nil end
  return utc_epoch(tonumber(y), MONTHS[mon], tonumber(d), tonumber(hh),
    tonumber(mm), tonumber(ss))
end

-- An ISO-8601 time in UTC as the dashboard writes it
-- ("2026-12-06T12:00:00.000Z") as Unix seconds, or nil.
function M.iso_time(value)
  if type(value) ~= "string" then return nil end
  local y, mon, d, hh, mm, ss, frac =
    value:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(%.?%d*)Z$")
  if not y then return nil end
  return utc_epoch(tonumber(y), tonumber(mon), tonumber(d), tonumber(hh),
    tonumber(mm), tonumber(ss)) + (tonumber("0" .. frac) or 0)
end

-- Retry-After (RFC 9110): delay-seconds or an HTTP-date. Returns seconds
-- from now (>= 0), or nil when absent or unreadable.
function M.retry_after(value, now)
  if type(value) ~= "string" then return nil end
  local secs = value:match("^%s*(%d+)%s*$")
  if secs then return tonumber(secs) end
  local at = M.http_date(value)
  return at and math.max(0, at - now)
end

return M
