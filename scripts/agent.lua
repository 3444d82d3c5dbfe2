-- GOLIAT worker agent: run by `goliat-host scripts/agent.lua` on each VM.
--
-- It registers with the monitoring dashboard, keeps a heartbeat, takes one
-- assignment at a time, downloads its split config, runs the GOLIAT study
-- and reports how it ended (../shared/PROTOCOL.md sections 1 to 3). Reports
-- go through an outbox on disk and the running study is recorded in a state
-- file, so an agent that dies and restarts loses neither.
--
-- Operators: the settings come first, then the policy in small named steps.
-- After an edit, run the spec suite (README.md) to check it.

local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"
local durable = require "lib.durable"

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
  study_timeout = nil,         -- GOLIAT_STUDY_TIMEOUT: longest a study may
                               --   run, seconds (default: no limit)
  study_grace = 30,            -- GOLIAT_STUDY_GRACE: SIGTERM to the study's
                               --   tree, then kill after this many seconds

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
  max_reply_bytes = 1024 * 1024,
  download_timeout = 120,      -- one config download attempt, seconds
  download_retry_for = 600,    -- keep retrying a failed download this long
  max_config_bytes = 16 * 1024 * 1024,
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
  self.log = settings_lib.redacting_log(host.log, settings.api_token)
  self.failures = {}     -- per step: consecutive failures
  self.last_error = {}   -- per step: the error last logged
  self.busy = false      -- an assignment is being handled
  self.study = nil       -- { proc, assignment, state } while one runs
  self.stopping = nil    -- the signal's name once a stop was asked for
  local fs = host.fs
  self.state_file = fs.join(settings.work_dir, "agent_state.json")
  self.outbox = durable.outbox(host, fs.join(settings.work_dir, "outbox"),
    self.log)
  return self
end

-- Log a failing step when it starts failing or its error changes, and once
-- when it recovers: not once per retry.
function Agent:note_failure(step, err)
  local n = (self.failures[step] or 0) + 1
  self.failures[step] = n
  err = tostring(err)
  if n == 1 or err ~= self.last_error[step] then
    self.log.warn("%s failed: %s (retrying with backoff)", step, err)
    self.last_error[step] = err
  else
    self.log.debug("%s failed again (%d in a row): %s", step, n, err)
  end
  return n
end

function Agent:note_success(step)
  local n = self.failures[step] or 0
  if n > 0 then
    self.log.info("%s works again after %d failure(s)", step, n)
  end
  self.failures[step] = 0
  self.last_error[step] = nil
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
-- Talking to the dashboard. The token goes to the dashboard's own URL only,
-- and redirects are not followed (so it cannot leak to another host).
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
    max_size = self.s.max_reply_bytes,
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

-- Files of an assignment in the work dir, named from split_index only.
function Agent:file(a, pattern)
  return self.host.fs.join(self.s.work_dir,
    string.format(pattern, a.split_index))
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
  local path = self:file(a, "assigned_config_%d.json")
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
-- Step 4: run the study and wait for it. The study runs under a small
-- wrapper (study_wrapper.lua) that records its exit code in a file, and the
-- agent records the study in its state file: if the agent dies, the next
-- one takes the study back (recover) instead of starting it again.
------------------------------------------------------------------------------
function Agent:study_env(a)
  return {
    GOLIAT_WEBGUI_ENABLED = "true",
    GOLIAT_MONITORING_URL = self.s.monitoring_url,
    GOLIAT_MACHINE_ID = self.s.machine_id,
    GOLIAT_ASSIGNMENT_ID = a.id,
    GOLIAT_API_TOKEN = "", -- the agent's secret, not the study's
  }
end

function Agent:run_study(a, config_path)
  local h = self.host
  local exit_file = self:file(a, "study_%d.exit.json")
  local log_path = self:file(a, "study_%d.log")
  h.fs.remove(exit_file) -- left by an earlier run of the same split
  local argv = { self.s.host_exe, self.s.wrapper_script, exit_file }
  for _, word in ipairs(self.s.study_command) do argv[#argv + 1] = word end
  argv[#argv + 1] = config_path
  self.log.info("assignment %s: starting %s (output in %s)", a.id,
    table.concat(self.s.study_command, " ") .. " " .. config_path, log_path)
  local proc, err = h.proc.spawn {
    argv = argv,
    env = self:study_env(a),
    cwd = self.s.work_dir,
    stdout = log_path,
    stderr = "stdout",
  }
  if not proc then
    return { error = "study failed to start: " .. tostring(err) }
  end
  local state = {
    assignment = a,
    pid = proc.pid,
    start_time = h.proc.start_time(proc.pid),
    exit_file = exit_file,
    started_at = h.time.now(),
  }
  self:save_state(state)
  return self:watch_study(proc, state)
end

function Agent:save_state(state)
  local ok, err = durable.save_state(self.host, self.state_file, state)
  if not ok then
    self.log.error("cannot save the agent state: %s", tostring(err))
  end
end

-- Wait for the study (ours, or taken back after a restart) to end, within
-- study_timeout; returns its outcome {exit_code, signal, error, timed_out}.
function Agent:watch_study(proc, state)
  local study = { proc = proc, assignment = state.assignment, state = state }
  self.study = study
  if self.s.study_timeout then
    self.host.task.spawn("study timeout", function()
      local left = self.s.study_timeout -
        (self.host.time.now() - state.started_at)
      self.host.time.sleep(math.max(0, left))
      if self.study == study and not self.stopping then
        study.timed_out = true
        self.log.warn("assignment %s: study timed out after %g s: stopping it",
          state.assignment.id, self.s.study_timeout)
        proc:terminate(self.s.study_grace)
      end
    end)
  end
  local _, wrapper_signal = proc:wait()
  self.study = nil
  local outcome = self:read_exit_file(state.exit_file)
  if not outcome then
    -- the wrapper itself was killed (its tree was): no exit code recorded
    outcome = { signal = wrapper_signal or "SIGKILL" }
  end
  outcome.timed_out = study.timed_out
  return outcome
end

-- What the wrapper recorded: {exit_code, signal, error}, or nil.
function Agent:read_exit_file(path)
  local rec = cjson.decode(self.host.fs.read(path or "") or "")
  if type(rec) ~= "table" then return nil end
  return {
    exit_code = math.tointeger(rec.exit_code),
    signal = type(rec.signal) == "string" and rec.signal or nil,
    error = type(rec.error) == "string" and rec.error or nil,
  }
end

------------------------------------------------------------------------------
-- Step 5: report how the assignment ended (PROTOCOL.md, "What the agent
-- itself reports"). Reports go to the outbox on disk first and leave it
-- only after a 2xx reply.
------------------------------------------------------------------------------
function Agent:outcome_message(outcome)
  if outcome.timed_out then
    return string.format("study timed out after %g s and was stopped (%s)",
      self.s.study_timeout, outcome.signal or
      ("exit code " .. tostring(outcome.exit_code)))
  elseif outcome.error then
    return outcome.error
  elseif self.stopping then
    return string.format("agent stopped by %s: study terminated (%s)",
      self.stopping, outcome.signal or
      ("exit code " .. tostring(outcome.exit_code)))
  elseif outcome.signal then
    return "study killed by " .. outcome.signal
  elseif outcome.exit_code == 0 then
    return "study finished"
  end
  return string.format("study exited with code %s", tostring(outcome.exit_code))
end

function Agent:report_body(assignment_id, outcome, duration)
  local ok = not outcome.error and not outcome.timed_out and
    not self.stopping and outcome.exit_code == 0
  local message = {
    type = ok and "finished" or "fatal_error",
    message = self.log.redact(self:outcome_message(outcome)),
    assignment_id = assignment_id or cjson.null,
    exit_code = math.tointeger(outcome.exit_code) or cjson.null,
    duration_s = math.floor(math.max(0, duration) * 1000 + 0.5) / 1000,
  }
  if not ok then message.signal = outcome.signal or cjson.null end
  return {
    machineId = self.s.machine_id,
    message = message,
    timestamp = self.host.time.now(),
  }
end

-- Send one outbox item until a 2xx, or until `deadline` (monotonic).
function Agent:deliver(file, item, deadline)
  local clock = self.host.time
  local what = item.body.message and item.body.message.assignment_id
  while true do
    local ok, err, retry_after = self:call("POST", item.path, item.body)
    if ok then
      self:note_success("report")
      self.outbox:done(file)
      self.log.info("reported %s for assignment %s",
        tostring(item.body.message and item.body.message.type), tostring(what))
      return true
    end
    local n = self:note_failure("report", err)
    local delay = self:backoff(n, retry_after)
    if deadline and clock.monotonic() + delay > deadline then
      self.log.error("report for assignment %s not delivered yet: %s " ..
        "(kept in the outbox for the next start)", tostring(what), err)
      return false
    end
    clock.sleep(delay)
  end
end

-- Reports left by an earlier run, oldest first, before anything new.
function Agent:flush_outbox()
  for _, p in ipairs(self.outbox:pending()) do
    self.log.info("sending a report left from an earlier run (%s)", p.file)
    if not self:deliver(p.file, p.item) then return end
  end
end

-- The end of an assignment: the report is safe in the outbox before the
-- state file naming the study is removed.
function Agent:finish(a_id, outcome, duration)
  local body = self:report_body(a_id, outcome, duration)
  self.log.info("assignment %s ended: %s", tostring(a_id),
    body.message.message)
  local item = { path = "/api/gui-update", body = body }
  local file = self.outbox:put(item)
  durable.clear_state(self.host, self.state_file)
  local deadline = self.stopping and
    self.host.time.monotonic() + self.s.shutdown_report_for or nil
  self:deliver(file, item, deadline)
end

------------------------------------------------------------------------------
-- One assignment from start to end. Never drops it silently: every way out
-- sends a report. Returns whether a study ran.
------------------------------------------------------------------------------
function Agent:handle(raw)
  local clock = self.host.time
  local started = clock.monotonic()
  local a, why = M.validate_assignment(raw)
  local outcome
  if not a then
    local id = type(raw) == "table" and type(raw.id) == "string" and raw.id
    self.log.error("rejected assignment %s: %s", tostring(id or "?"), why)
    outcome = { error = "invalid assignment: " .. why }
    a = { id = id or nil }
  else
    -- on disk from now on: a restart in the middle still reports it
    self:save_state { assignment = a, started_at = self.host.time.now() }
    self.log.info("assignment %s (split %d): downloading config",
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
  self:finish(a.id, outcome, clock.monotonic() - started)
  return outcome.exit_code ~= nil or outcome.signal ~= nil
end

-- After a restart: the study named in the state file either ended while
-- the agent was down (its exit file says how), still runs (take it back),
-- or is gone without a trace (report it lost). Never starts it again.
function Agent:recover()
  local h = self.host
  local state = durable.load_state(h, self.state_file, self.log)
  if not state then return end
  local a = state.assignment
  self.busy = true
  local outcome = self:read_exit_file(state.exit_file)
  if outcome then
    self.log.info("assignment %s: the study ended while the agent was down",
      tostring(a.id))
  elseif not state.pid then
    outcome = { error = "the agent restarted before the study started" }
  elseif self:same_process(state) then
    self.log.info("assignment %s: taking back the running study (pid %d)",
      tostring(a.id), state.pid)
    outcome = self:watch_study(assert(h.proc.attach(state.pid)), state)
  else
    outcome = { error = "study lost: it was no longer running when the " ..
      "agent restarted and left no exit code" }
  end
  self:finish(a.id, outcome, h.time.now() - (state.started_at or h.time.now()))
  self.busy = false
end

-- Whether the state's pid is still the study's wrapper (not a reused pid).
function Agent:same_process(state)
  local pid = math.tointeger(state.pid)
  if not pid or not self.host.proc.alive(pid) then return false end
  local started = self.host.proc.start_time(pid)
  return state.start_time == nil or started == state.start_time
end

function Agent:work_loop()
  self:flush_outbox()
  self:recover()
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
  self.log.info("%s: stopping", signal)
  if self.study then
    self.log.info("terminating the study (grace %g s)", self.s.study_grace)
    self.study.proc:terminate(self.s.study_grace)
  end
  local deadline = h.time.monotonic() + self.s.shutdown_report_for + 1
  while self.busy and h.time.monotonic() < deadline do
    h.time.sleep(0.1)
  end
  self.log.info("agent stopped")
  h.exit(0)
end

------------------------------------------------------------------------------
-- Start-up. Each loop runs in its own task under a supervisor: an error in
-- an edited policy is logged with file and line and the loop starts again,
-- while the other loops (the heartbeat above all) go on.
------------------------------------------------------------------------------
function Agent:supervise(name, loop)
  local h = self.host
  h.task.spawn(name .. " supervisor", function()
    local restarts = 0
    while not self.stopping do
      local _, err = h.task.spawn(name, function() loop(self) end):join()
      if self.stopping then return end
      restarts = restarts + 1
      local delay = self:backoff(restarts)
      self.log.error("%s loop stopped (%s); restarting it in %.1f s", name,
        tostring(err), delay)
      h.time.sleep(delay)
      self.busy = false
    end
  end)
end

function Agent:start()
  local h = self.host
  self.facts = settings_lib.host_facts(h)
  self.log.info("goliat agent %s for %s, machine id %s, work dir %s",
    h.version or "?", self.s.monitoring_url, self.s.machine_id,
    self.s.work_dir)
  local signals = h.sys.platform() == "windows"
    and { "SIGINT", "SIGBREAK", "SIGHUP" } or { "SIGINT", "SIGTERM" }
  for _, name in ipairs(signals) do
    h.sys.on_signal(name, function(sig) self:stop(sig) end)
  end
  self:supervise("heartbeat", Agent.heartbeat_loop)
  self:supervise("worker", Agent.work_loop)
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
