-- GOLIAT worker agent: run by `goliat-host scripts/agent.lua` on each VM.
--
-- It registers with the monitoring dashboard, keeps a heartbeat, takes one
-- assignment at a time, downloads its split config, runs the GOLIAT study
-- and reports how it ended (../shared/PROTOCOL.md sections 1 to 3).
--
-- Operators: the settings come first, then the policy in small named steps.
-- After an edit, run the spec suite (README.md) to check it.

local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"

------------------------------------------------------------------------------
-- Settings. Each can be overridden from the environment (variable named on
-- the right); a value that does not parse stops the agent at start-up.
------------------------------------------------------------------------------
local DEFAULTS = {
  monitoring_url = nil,        -- GOLIAT_MONITORING_URL (required)
  machine_id = nil,            -- GOLIAT_MACHINE_ID (default: primary IPv4)
  api_token = nil,             -- GOLIAT_API_TOKEN (never logged)
  heartbeat_interval = 5,      -- GOLIAT_HEARTBEAT_INTERVAL, seconds
  poll_interval = 10,          -- GOLIAT_POLL_INTERVAL, seconds
  study_command = nil,         -- GOLIAT_STUDY_COMMAND, JSON array of strings
                               --   default: python -m goliat study
  work_dir = nil,              -- GOLIAT_WORK_DIR (default: current directory)

  -- Retry policy: after n consecutive failures wait a random time between
  -- 0 and min(retry_cap, retry_base * 2^(n-1)) (full jitter), but never less
  -- than the step's own interval. 429 and 503 replies wait for Retry-After.
  retry_base = 1,
  retry_cap = 60,
  heartbeat_retry_cap = 15,    -- heartbeats back off less: the dashboard
                               --   shows a worker offline after 30 s
  retry_after_max = 600,       -- ignore Retry-After beyond this (seconds)
  jitter = 0.1,                -- periodic loops vary by +/- 10%

  request_timeout = 15,        -- dashboard calls, seconds
  download_timeout = 120,      -- one config download attempt, seconds
  download_retry_for = 600,    -- keep retrying a failed download this long
  max_config_bytes = 16 * 1024 * 1024,
  study_grace = 30,            -- SIGTERM to the study, then kill after this
  shutdown_report_for = 20,    -- on stop: time allowed to deliver the report
}

------------------------------------------------------------------------------
-- The agent. `host` is the real host module, or a fake one in the specs.
------------------------------------------------------------------------------
local Agent = {}
Agent.__index = Agent

local M = { DEFAULTS = DEFAULTS }

function M.new(host, settings)
  local self = setmetatable({}, Agent)
  self.host = host
  self.s = settings
  self.failures = {}     -- per step: consecutive failures
  self.busy = false      -- an assignment is being handled
  self.study = nil       -- { proc = ..., assignment = ... } while running
  self.stopping = nil    -- the signal's name once a stop was asked for
  return self
end

-- Log a failure once when a step starts failing, and once when it recovers.
function Agent:note_failure(step, err)
  local n = (self.failures[step] or 0) + 1
  self.failures[step] = n
  if n == 1 then
    self.host.log.warn("%s failed: %s (retrying with backoff)", step, err)
  else
    self.host.log.debug("%s failed again (%d in a row): %s", step, n, err)
  end
  return n
end

function Agent:note_success(step)
  local n = self.failures[step] or 0
  if n > 0 then
    self.host.log.info("%s works again after %d failure(s)", step, n)
  end
  self.failures[step] = 0
end

-- How long to wait before the next try of a step that failed n times in a
-- row. retry_after (seconds, from the server) wins when given.
function Agent:backoff(n, retry_after, cap)
  local s = self.s
  if retry_after then
    return math.min(retry_after, s.retry_after_max)
  end
  local ceiling = math.min(cap or s.retry_cap, s.retry_base * 2 ^ (n - 1))
  return math.random() * ceiling
end

-- The interval with a little jitter, so a fleet does not beat in lockstep.
function Agent:jittered(interval)
  local j = self.s.jitter
  return interval * (1 - j + 2 * j * math.random())
end

------------------------------------------------------------------------------
-- Talking to the dashboard.
------------------------------------------------------------------------------

-- One dashboard call. Returns the decoded JSON object, or nil, message and
-- the Retry-After delay (seconds) when the server asked for one.
function Agent:call(method, path, body)
  local headers = { ["Accept"] = "application/json" }
  if body then headers["Content-Type"] = "application/json" end
  if self.s.api_token then
    headers["Authorization"] = "Bearer " .. self.s.api_token
  end
  local res, err = self.host.http.request {
    method = method,
    url = self.s.monitoring_url .. path,
    headers = headers,
    body = body and cjson.encode(body) or nil,
    timeout = self.s.request_timeout,
    max_size = 1024 * 1024,
  }
  if not res then
    return nil, err
  end
  if res.status == 429 or res.status == 503 then
    return nil, "HTTP " .. res.status, settings_lib.retry_after(
      res.headers["retry-after"], self.host.time.now())
  end
  if res.status < 200 or res.status > 299 then
    return nil, "HTTP " .. res.status
  end
  local data = cjson.decode(res.body or "")
  if type(data) ~= "table" then
    return nil, "reply is not a JSON object"
  end
  return data
end

------------------------------------------------------------------------------
-- Step 1: heartbeat, every heartbeat_interval, from start-up on.
------------------------------------------------------------------------------
function Agent:heartbeat()
  local body = { machineId = self.s.machine_id }
  for k, v in pairs(self.facts) do body[k] = v end
  return self:call("POST", "/api/heartbeat", body)
end

function Agent:heartbeat_loop()
  while true do
    local ok, err, retry_after = self:heartbeat()
    local delay = self:jittered(self.s.heartbeat_interval)
    if ok then
      self:note_success("heartbeat")
    else
      local n = self:note_failure("heartbeat", err)
      delay = math.max(delay,
        self:backoff(n, retry_after, self.s.heartbeat_retry_cap))
    end
    self.host.time.sleep(delay)
  end
end

------------------------------------------------------------------------------
-- Step 2: poll for an assignment while idle.
------------------------------------------------------------------------------
function Agent:poll()
  local path = "/api/assignment?machineId=" ..
    settings_lib.url_encode(self.s.machine_id)
  local reply, err, retry_after = self:call("GET", path)
  if not reply then
    return nil, err, retry_after
  end
  if reply.assigned ~= true then
    return false
  end
  return reply.assignment == nil and cjson.null or reply.assignment
end

------------------------------------------------------------------------------
-- Step 3: check the assignment and download its config.
------------------------------------------------------------------------------

-- Returns a clean copy {id, split_index, config_url, ...} or nil, why.
function M.validate_assignment(a)
  if type(a) ~= "table" then
    return nil, "assignment is not a JSON object"
  end
  if type(a.id) ~= "string" or a.id == "" then
    return nil, "assignment has no valid 'id'"
  end
  local index = math.type(a.split_index) and math.tointeger(a.split_index)
  if not index or index < 0 then
    return nil, "'split_index' is not a non-negative integer"
  end
  local url = a.config_url
  if type(url) ~= "string" or not settings_lib.is_http_url(url) then
    return nil, "'config_url' is not an http(s) URL"
  end
  return {
    id = a.id,
    split_index = index,
    config_url = url,
    super_study_id = type(a.super_study_id) == "string"
      and a.super_study_id or nil,
  }
end

function Agent:config_path(a)
  return self.host.fs.join(self.s.work_dir,
    string.format("assigned_config_%d.json", a.split_index))
end

-- One download attempt; the file appears only once it is complete JSON.
function Agent:download_once(a, path)
  local res, err = self.host.http.request {
    url = a.config_url,
    timeout = self.s.download_timeout,
    max_size = self.s.max_config_bytes,
  }
  if not res then return nil, err end
  if res.status ~= 200 then return nil, "HTTP " .. res.status end
  if type(cjson.decode(res.body)) ~= "table" then
    return nil, "config is not a JSON object or array"
  end
  return self.host.fs.write_atomic(path, res.body)
end

-- Retries with backoff for download_retry_for seconds: the dashboard will
-- not hand this assignment out again.
function Agent:download(a)
  local path = self:config_path(a)
  local clock = self.host.time
  local give_up_at = clock.monotonic() + self.s.download_retry_for
  while true do
    local ok, err = self:download_once(a, path)
    if ok then
      self:note_success("config download")
      return path
    end
    local n = self:note_failure("config download", err)
    local delay = self:backoff(n)
    if self.stopping or clock.monotonic() + delay > give_up_at then
      return nil, string.format("config download failed %d time(s): %s",
        n, err)
    end
    clock.sleep(delay)
  end
end

------------------------------------------------------------------------------
-- Step 4: run the study and wait for it.
------------------------------------------------------------------------------
function Agent:study_env(a)
  return {
    GOLIAT_WEBGUI_ENABLED = "true",
    GOLIAT_MONITORING_URL = self.s.monitoring_url,
    GOLIAT_MACHINE_ID = self.s.machine_id,
    GOLIAT_ASSIGNMENT_ID = a.id,
  }
end

-- Returns the outcome {exit_code, signal, error} of the study.
function Agent:run_study(a, config_path)
  local argv = {}
  for i, word in ipairs(self.s.study_command) do argv[i] = word end
  argv[#argv + 1] = config_path
  local log_path = self.host.fs.join(self.s.work_dir,
    string.format("study_%d.log", a.split_index))
  self.host.log.info("assignment %s: starting %s (output in %s)", a.id,
    table.concat(argv, " "), log_path)
  local proc, err = self.host.proc.spawn {
    argv = argv,
    env = self:study_env(a),
    cwd = self.s.work_dir,
    stdout = log_path,
    stderr = "stdout",
  }
  if not proc then
    return { error = "study failed to start: " .. tostring(err) }
  end
  self.study = { proc = proc, assignment = a }
  local code, signal = proc:wait()
  self.study = nil
  return { exit_code = code, signal = signal }
end

------------------------------------------------------------------------------
-- Step 5: report how the assignment ended (PROTOCOL.md, "What the agent
-- itself reports"), retried until the dashboard answers 2xx.
------------------------------------------------------------------------------
function M.outcome_message(outcome, stopping)
  if outcome.error then
    return outcome.error
  elseif stopping then
    return string.format("agent stopped by %s: study terminated (%s)",
      stopping, outcome.signal or ("exit code " .. tostring(outcome.exit_code)))
  elseif outcome.signal then
    return "study killed by " .. outcome.signal
  elseif outcome.exit_code == 0 then
    return "study finished"
  end
  return string.format("study exited with code %d", outcome.exit_code)
end

function Agent:report_body(assignment_id, outcome, duration)
  local ok = not outcome.error and not self.stopping and
    outcome.exit_code == 0
  local message = {
    type = ok and "finished" or "fatal_error",
    message = M.outcome_message(outcome, self.stopping),
    assignment_id = assignment_id or cjson.null,
    exit_code = outcome.exit_code or cjson.null,
    duration_s = math.floor(duration * 1000 + 0.5) / 1000,
  }
  if not ok then message.signal = outcome.signal or cjson.null end
  return {
    machineId = self.s.machine_id,
    message = message,
    timestamp = self.host.time.now(),
  }
end

-- Until a 2xx, or until `deadline` (monotonic) when one is given.
function Agent:report(body, deadline)
  local clock = self.host.time
  while true do
    local ok, err, retry_after = self:call("POST", "/api/gui-update", body)
    if ok then
      self:note_success("report")
      self.host.log.info("reported %s for assignment %s", body.message.type,
        tostring(body.message.assignment_id))
      return true
    end
    local n = self:note_failure("report", err)
    local delay = self:backoff(n, retry_after)
    if deadline and clock.monotonic() + delay > deadline then
      self.host.log.error("report for assignment %s not delivered: %s",
        tostring(body.message.assignment_id), err)
      return false
    end
    clock.sleep(delay)
  end
end

------------------------------------------------------------------------------
-- One assignment from start to end. Never drops it silently: every way out
-- sends a report.
------------------------------------------------------------------------------
function Agent:handle(raw)
  local clock = self.host.time
  local started = clock.monotonic()
  local a, why = M.validate_assignment(raw)
  local outcome
  if not a then
    local id = type(raw) == "table" and type(raw.id) == "string" and raw.id
    self.host.log.error("rejected assignment %s: %s", tostring(id or "?"), why)
    outcome = { error = "invalid assignment: " .. why }
    a = { id = id or nil }
  else
    self.host.log.info("assignment %s (split %d): downloading config",
      a.id, a.split_index)
    local path, err = self:download(a)
    if not path then
      outcome = { error = err }
    elseif self.stopping then
      outcome = { error = "agent stopped by " .. self.stopping ..
        " before the study started" }
    else
      outcome = self:run_study(a, path)
    end
  end
  local body = self:report_body(a.id, outcome, clock.monotonic() - started)
  self.host.log.info("assignment %s ended: %s", tostring(a.id),
    body.message.message)
  local deadline = self.stopping and
    clock.monotonic() + self.s.shutdown_report_for or nil
  self:report(body, deadline)
  return outcome.exit_code ~= nil or outcome.signal ~= nil
end

function Agent:work_loop()
  while not self.stopping do
    local assignment, err, retry_after = self:poll()
    local delay = self:jittered(self.s.poll_interval)
    if assignment == nil then
      local n = self:note_failure("assignment poll", err)
      delay = math.max(delay, self:backoff(n, retry_after))
    else
      self:note_success("assignment poll")
      if assignment then
        self.busy = true
        local ran = self:handle(assignment)
        self.busy = false
        if ran then delay = 1 end -- soon ask for the next one
      end
    end
    if not self.stopping then self.host.time.sleep(delay) end
  end
end

------------------------------------------------------------------------------
-- Step 6: stopping (SIGINT, SIGTERM, Ctrl-Break, service stop). The study's
-- whole process tree is terminated and the assignment reported as failed.
------------------------------------------------------------------------------
function Agent:stop(signal)
  if self.stopping then return end
  self.stopping = signal
  local h = self.host
  h.log.info("%s: stopping", signal)
  if self.study then
    h.log.info("terminating the study (grace %g s)", self.s.study_grace)
    self.study.proc:terminate(self.s.study_grace)
  end
  local deadline = h.time.monotonic() + self.s.shutdown_report_for + 1
  while self.busy and h.time.monotonic() < deadline do
    h.time.sleep(0.1)
  end
  h.log.info("agent stopped")
  h.exit(0)
end

------------------------------------------------------------------------------
-- Start-up.
------------------------------------------------------------------------------
function Agent:start()
  local h = self.host
  self.facts = settings_lib.host_facts(h)
  h.log.info("goliat agent %s for %s, machine id %s, work dir %s",
    h.version or "?", self.s.monitoring_url, self.s.machine_id,
    self.s.work_dir)
  local signals = h.sys.platform() == "windows"
    and { "SIGINT", "SIGBREAK", "SIGHUP" } or { "SIGINT", "SIGTERM" }
  for _, name in ipairs(signals) do
    h.sys.on_signal(name, function(sig) self:stop(sig) end)
  end
  h.task.spawn("heartbeat", function() self:heartbeat_loop() end)
  h.task.spawn("worker", function() self:work_loop() end)
end

-- Settings from DEFAULTS and the environment; nil, message when one is bad.
function M.load_settings(host)
  return settings_lib.load(host, DEFAULTS)
end

function M.main(host)
  local settings, err = M.load_settings(host)
  if not settings then
    io.stderr:write("goliat-agent: ", err, "\n")
    host.exit(2)
    return
  end
  math.randomseed(host.sys.pid(), math.floor(host.time.now() * 1000))
  M.new(host, settings):start()
end

-- `require "agent"` (the specs) gets the module; goliat-host runs it.
if ... == "agent" then
  return M
end
M.main(require "host")
