-- GOLIAT worker agent: run by `goliat-host scripts/agent.lua` on each VM.
--
-- It registers with the monitoring dashboard, keeps a heartbeat, takes one
-- assignment at a time, gets its split config, runs the GOLIAT study (again
-- when it ran out of memory) and reports how it ended (PROTOCOL.md). Reports
-- go through an outbox on disk and the running study is recorded in a state
-- file, so an agent that dies and restarts loses neither.
--
-- Dashboards hand out work in different ways; each way is one module under
-- protocol/ (the planned API, and the deployed dashboard's super studies),
-- all with the same few functions. This file keeps the steps.
--
-- Operators: the settings come first, then the policy in small named steps.
-- After an edit, run the spec suite (README.md) to check it.

local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"
local durable = require "lib.durable"
local tree = require "lib.tree"

-- The dashboard APIs the agent speaks (GOLIAT_PROTOCOL's names and their
-- modules), in the order auto-detection tries them. A new API is one more
-- module here. A module is loaded when it is first used: an agent that
-- speaks one API does not hold the code of the other.
local PROTOCOLS = {
  -- GET /api/assignment (the planned API)
  { name = "assignment", module = "protocol.assignment" },
  -- super studies (the deployed dashboard)
  { name = "super-study", module = "protocol.super_study" },
}

-- The other modules loaded only when needed. --validate loads them all,
-- and the protocols' (so that a reload checks them too).
local LAZY_MODULES = { "lib.gateway", "lib.check", "lib.status",
  "lib.retention", "lib.spec_runner" }
local idle_lib = require "lib.idle"

------------------------------------------------------------------------------
-- Settings. Each can be overridden from the environment (variable named on
-- the right); a value that does not parse stops the agent at start-up.
------------------------------------------------------------------------------
local DEFAULTS = {
  monitoring_url = nil,        -- GOLIAT_MONITORING_URL (required)
  protocol = "auto",           -- GOLIAT_PROTOCOL: auto, assignment (the
                               --   planned API) or super-study
  super_study = nil,           -- GOLIAT_SUPER_STUDY: names, comma-separated
                               --   (default: any, oldest first)
  machine_id = nil,            -- GOLIAT_MACHINE_ID (default: the public IP
                               --   as GOLIAT finds it, else the local one)
  public_ip_url = "https://api.ipify.org", -- GOLIAT_PUBLIC_IP_URL ("" = off)
  public_ip_timeout = 3,       -- seconds: the first heartbeat waits for it
  hostname = nil,              -- GOLIAT_HOSTNAME sent in heartbeats
                               --   (default: the system's host name)
  api_token = nil,             -- GOLIAT_API_TOKEN (never logged)
  heartbeat_interval = 5,      -- GOLIAT_HEARTBEAT_INTERVAL, seconds
  poll_interval = 10,          -- GOLIAT_POLL_INTERVAL, seconds
  study_command = nil,         -- GOLIAT_STUDY_COMMAND, JSON array of strings
                               --   default: python -m goliat study
  work_dir = nil,              -- GOLIAT_WORK_DIR (default: current directory)
  project_dir = nil,           -- GOLIAT_PROJECT_DIR: the GOLIAT project
                               --   (configs/, data/); the study runs there
                               --   (default: the work dir)
  study_timeout = nil,         -- GOLIAT_STUDY_TIMEOUT: longest a study may
                               --   run, seconds (default: no limit)
  study_grace = 30,            -- GOLIAT_STUDY_GRACE: SIGTERM to the study's
                               --   tree, then kill after this many seconds
  study_log_max_mb = 100,      -- GOLIAT_STUDY_LOG_MAX_MB: a study log past
                               --   this size is moved to .1 (0 = no limit)
  oom_retries = 3,             -- GOLIAT_OOM_RETRIES: reruns of a study that
  oom_exit_code = 42,          --   exits with this code (out of memory)
  failure_retries = 2,         -- GOLIAT_FAILURE_RETRIES: reruns of a study
                               --   that failed otherwise (an exit code but
                               --   0 and 42, a crash), in case it passes
  failure_retry_delay = 60,    -- GOLIAT_FAILURE_RETRY_DELAY: seconds before
                               --   such a rerun
  claim_settle = 3,            -- GOLIAT_CLAIM_SETTLE: seconds between a
                               --   claim and checking that it is ours
  idle_after = 0,              -- GOLIAT_IDLE_AFTER: seconds idle (the
                               --   dashboard answers, no work for this
                               --   agent, nothing waiting to be sent) before
                               --   the VM is stopped; 0 = never
  idle_command = nil,          -- GOLIAT_IDLE_COMMAND: what stops the VM (a
                               --   JSON array); unset: the agent exits 0
  idle_hold = 600,             -- after the idle command: seconds without
                               --   taking new work (the VM is going down)
  idle_command_limit = 120,    -- the idle command may run this long, seconds
  idle_quiet_polls = 12,       -- after this many lookups in a row with no
                               --   work, lookups back off ...
  idle_poll_max = 60,          -- GOLIAT_IDLE_POLL_MAX: ... doubling up to
                               --   this many seconds apart
  min_free_gb = 20,            -- GOLIAT_MIN_FREE_GB: less free space than
                               --   this in the project or work dir, and no
                               --   new work is taken; 0 = no check
  keep_finished = 500,         -- GOLIAT_KEEP_FINISHED: finished assignments
                               --   whose files (study log, its .1, exit
                               --   file, split config) are kept; 0 = all
  keep_finished_mb = 10240,    -- GOLIAT_KEEP_FINISHED_MB: and at most this
                               --   much of them, MB; 0 = no limit
  abandoned_after = 1800,      -- GOLIAT_ABANDONED_AFTER: work RUNNING under
                               --   a worker the dashboard has not seen for
                               --   this long (its VM is gone) is taken over
                               --   (0 = never)
  ownership_every = 60,        -- GOLIAT_OWNERSHIP_EVERY: seconds between
                               --   checks, while a study runs, that its
                               --   work is still this worker's (0 = never)
  rerun_wait = 60,             -- seconds a rerun waits for the dashboard
                               --   to show its work as ours again (then it
                               --   runs anyway; the report sets it right)
  settle_tries = 10,           -- tries to set the dashboard right before
                               --   a report (then the report goes anyway)
  gateway = true,              -- GOLIAT_GATEWAY (on/off): the study's
                               --   messages go through the agent
                               --   (lib/gateway.lua)
  gateway_hook = true,         -- GOLIAT_GATEWAY_HOOK (on/off): GOLIAT's own
                               --   requests to gateway_urls are sent to
                               --   the gateway (scripts/pyhook/)
  gateway_urls = nil,          -- GOLIAT_GATEWAY_URLS, comma-separated
                               --   (default: goliat_dashboard_url and
                               --   GOLIAT_MONITORING_URL)
  goliat_dashboard_url = "https://monitor.goliat.waves-ugent.be",
                               -- written in GOLIAT's code: its window and
                               --   its result upload post there
  gateway_max_bytes = 256 * 1024 * 1024, -- GOLIAT_GATEWAY_MAX_BYTES: its
                               --   queue's disk budget (and largest upload)
  gateway_rate = 10,           -- GOLIAT_GATEWAY_RATE: messages per second
                               --   it sends the dashboard, at most
  gateway_send_timeout = 300,  -- one forwarded request (uploads), seconds

  -- Retry policy: after n consecutive failures wait a random time between
  -- 0 and min(retry_cap, retry_base * 2^(n-1)) (full jitter), but never less
  -- than the step's own interval. 429 and 503 replies wait for Retry-After.
  retry_base = 1,
  retry_cap = 60,
  heartbeat_retry_cap = 15,    -- heartbeats back off less: the dashboard
                               --   shows a worker offline after 30 s
  retry_after_max = 600,       -- ignore Retry-After beyond this (seconds)
  jitter = 0.1,                -- periodic loops vary by +/- 10%; the
                               --   heartbeat comes up to 10% early only

  request_timeout = 15,        -- dashboard calls, seconds
  gpu_probe_timeout = 10,      -- nvidia-smi, seconds
  status_every = 30,           -- agent_status.json (--status) is rewritten
                               --   on a change, else this often, seconds
  gateway_auth_patience = 600, -- a study's message refused with 401, 403 or
                               --   407 while the heartbeats go through is
                               --   set aside after this many seconds
  reload_check_limit = 30,     -- a reload's check of the edited agent.lua
                               --   and settings (--validate) may take this
                               --   long, seconds; longer, it is refused
  max_reply_bytes = 1024 * 1024, -- dashboard replies but work lookups
  lookup_max_bytes = 64 * 1024 * 1024, -- GOLIAT_LOOKUP_MAX_BYTES: a work
                               --   lookup's reply (the super-study list, a
                               --   study's assignments), decoded
  full_list_every = 300,       -- with GOLIAT_SUPER_STUDY: seconds between
                               --   reads of the whole super-study list
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

local M = { DEFAULTS = DEFAULTS, STATUS_FILE = "agent_status.json" }

function M.new(host, settings)
  local self = setmetatable({}, Agent)
  self.host = host
  self.s = settings
  self.log = settings_lib.redacting_log(host.log, settings.api_token)
  self.failures = {}     -- per step: consecutive failures
  self.idle = idle_lib.new(settings) -- GOLIAT_IDLE_AFTER, idle back-off
  self.last_error = {}   -- per step: the error last logged
  self.busy = false      -- an assignment is being handled
  self.study = nil       -- { proc, assignment, state } while one runs
  self.stopping = nil    -- the signal's name once a stop was asked for
  self.beat_done = host.task.event() -- set as each heartbeat ends
  self.beat_back = host.task.event() -- set when a heartbeat works again
  self.status_due = host.task.event() -- wakes the status task
  -- which boot the monotonic clock counts from (Agent:mark); nil unknown
  self.boot_id = host.sys.boot_id and host.sys.boot_id() or nil
  local fs = host.fs
  self.state_file = fs.join(settings.work_dir, "agent_state.json")
  self.status_file = fs.join(settings.work_dir, M.STATUS_FILE)
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
  self.last_failure = { step = step, message = self.log.redact(err),
    at = self.host.time.now() }
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

-- The request options of a dashboard call. The host reads the table while
-- the request runs: a table in use is never changed, only replaced.
-- body: a table (sent as JSON), a string already encoded, or nil.
function Agent:request_options(method, path, body)
  -- the two sets of headers, made once (they depend on the settings only)
  local sets = self.call_headers
  if not sets then
    local plain = { ["Accept"] = "application/json" }
    if self.s.api_token then
      plain["Authorization"] = "Bearer " .. self.s.api_token
    end
    local json = { ["Content-Type"] = "application/json" }
    for k, v in pairs(plain) do json[k] = v end
    sets = { plain = plain, json = json }
    self.call_headers = sets
  end
  if type(body) == "table" then body = cjson.encode(body) end
  return {
    method = method,
    url = self.s.monitoring_url .. path,
    headers = body and sets.json or sets.plain,
    body = body,
    timeout = self.s.request_timeout,
    max_size = self.s.max_reply_bytes,
    cainfo = self.s.ca_bundle,
  }
end

-- One dashboard call. Returns the decoded JSON (an object or an array),
-- or nil, message and the Retry-After delay (seconds) when the server asked
-- for one; the response itself comes fourth whenever there was one, and
-- when there was none, the transport's error code fifth.
-- body: a table (sent as JSON) or a string already encoded.
function Agent:call(method, path, body)
  return self:send(self:request_options(method, path, body))
end

-- A work lookup (the super-study list, a super study's assignments): a
-- GET with its own reply limit (lookup_max_bytes: a long history is
-- large), the reply asked for compressed. Returns what call returns.
function Agent:lookup(path)
  local opts = self:request_options("GET", path)
  opts.max_size, opts.compressed = self.s.lookup_max_bytes, true
  return self:send(opts)
end

-- Sends a request made by request_options; returns what call returns.
-- With `glance`, a reply that starts like a JSON object is not decoded:
-- true comes back in place of the object (the heartbeat's reply, which
-- the agent does not read, costs no table then).
function Agent:send(opts, glance)
  local res, err, code = self.host.http.request(opts)
  if not res then
    return nil, err, nil, nil, code -- code: "connect", "tls", "timeout", ...
  end
  if res.status == 429 or res.status == 503 then
    return nil, "HTTP " .. res.status, settings_lib.retry_after(
      res.headers["retry-after"], self.host.time.now()), res
  end
  if res.status < 200 or res.status > 299 then
    return nil, "HTTP " .. res.status, nil, res
  end
  if glance and res.body:find("^%s*{") then return true, nil, nil, res end
  local data = cjson.decode(res.body or "")
  if type(data) ~= "table" then
    return nil, "reply is not a JSON object", nil, res
  end
  return data, nil, nil, res
end

------------------------------------------------------------------------------
-- Step 1: heartbeat, every heartbeat_interval, from start-up on.
------------------------------------------------------------------------------
-- The body is encoded once, and again only when the facts change (the GPU
-- probe's answer comes after the first beats).
-- So are the request's options. The reply is glanced at, not decoded
-- (see send).
function Agent:heartbeat()
  local facts = self.facts
  local protocol = self.protocol and self.protocol.name
  if not self.beat_req or self.beat_gpu ~= facts.gpuName or
      self.beat_protocol ~= protocol then
    local body = { machineId = self.s.machine_id }
    for k, v in pairs(facts) do body[k] = v end
    -- which agent this VM runs (both dashboards ignore fields they do
    -- not know): its version, its policy (changed by an edit) and the
    -- dashboard protocol it speaks
    body.agentVersion, body.agentPolicy = self.host.version, self.policy
    body.agentProtocol = protocol
    self.beat_req = self:request_options("POST", "/api/heartbeat",
      cjson.encode(body))
    self.beat_gpu, self.beat_protocol = facts.gpuName, protocol
  end
  return self:send(self.beat_req, true)
end

-- Each heartbeat starts up to jitter (10%) before heartbeat_interval has
-- passed since the start of the one before, never after: so a connection
-- is never idle for as long as the interval, and a server that closes idle
-- connections after the interval (Node's default keep-alive timeout is
-- 5 s, the default interval) keeps it, sparing a new TLS handshake per
-- beat. A failed heartbeat is tried again at the normal interval (it is
-- one small request, and the dashboard shows the worker offline after
-- 30 s), or after the server's Retry-After, but never later than
-- heartbeat_retry_cap.
function Agent:heartbeat_loop()
  local h = self.host
  while true do
    local started = h.time.monotonic()
    local ok, err, retry_after = self:heartbeat()
    local delay = self.s.heartbeat_interval *
      (1 - self.s.jitter * math.random())
    if ok then
      if (self.failures.heartbeat or 0) > 0 then self.beat_back:set() end
      self:note_success("heartbeat")
    else
      self:note_failure("heartbeat", err)
      if retry_after then
        delay = math.max(delay,
          math.min(retry_after, self.s.heartbeat_retry_cap))
      end
    end
    local now, last = self.host.time.now(), self.last_beat
    ok = ok and true or false
    local text = not ok and self.log.redact(tostring(err)) or nil
    if last and last.ok == ok and last.error == text then
      last.at = now -- the same as before: no new table per beat
    else
      self.last_beat = { at = now, ok = ok, error = text,
        -- when the current run of successes or failures began
        since = last and last.ok == ok and last.since or now }
    end
    self.first_beat_over = true
    -- by the status task: a file operation that waits (a slow disk, a
    -- large upload being flushed) must not hold the next heartbeat up
    self.status_due:set()
    self.beat_done:set() -- the work loop's poll may ride on this wake-up
    -- after a failure, the full delay from now: a slow or struggling
    -- dashboard never gets beats back to back
    h.time.sleep(ok and math.max(0, started + delay - h.time.monotonic())
      or delay)
  end
end

------------------------------------------------------------------------------
-- Step 2: find work while idle, through the dashboard's protocol module
-- (protocol/*.lua). With GOLIAT_PROTOCOL=auto the agent asks each API in
-- turn (PROTOCOLS above) and uses the first the dashboard answers; it asks
-- again when the dashboard stops answering the one in use.
------------------------------------------------------------------------------

-- The protocol module named `name`, one instance per agent.
function Agent:protocol_for(name)
  self.protocols = self.protocols or {}
  if not self.protocols[name] then
    for _, p in ipairs(PROTOCOLS) do
      if p.name == name then
        self.protocols[name] = require(p.module).new(self)
      end
    end
  end
  return self.protocols[name]
end

-- Returns the protocol, why it was chosen, and any work its probe received;
-- or nil, why not, retry_after and the step that failed.
function Agent:detect_protocol()
  if self.s.protocol ~= "auto" then
    return self:protocol_for(self.s.protocol), "GOLIAT_PROTOCOL"
  end
  local reasons = {}
  for _, p in ipairs(PROTOCOLS) do
    local verdict, why, extra = require(p.module).probe(self)
    if not verdict then return nil, why, extra, p.name .. " poll" end
    reasons[#reasons + 1] = why
    if verdict == "yes" then
      return self:protocol_for(p.name), table.concat(reasons, " and "), extra
    end
  end
  return nil, "the dashboard answers none of the known APIs: " ..
    table.concat(reasons, "; "), nil, "dashboard protocol detection"
end

-- Work (a table), false when there is none (and maybe what the agent waits
-- for), or nil, error, retry_after and the name of the step that failed.
function Agent:find_work()
  if not self.protocol then
    local p, why, extra, step = self:detect_protocol()
    if not p then return nil, why, extra, step end
    self.protocol = p
    self.log.info("dashboard protocol: %s (%s)", p.name, why)
    self:note_success("dashboard protocol detection")
    if extra ~= nil then return extra, nil, nil, p.name .. " poll" end
  end
  local name = self.protocol.name
  local work, err, retry_after, foreign = self.protocol:find_work()
  if work == nil and foreign and self.s.protocol == "auto" then
    self.log.warn("the dashboard no longer answers the %s API (%s): " ..
      "detecting its protocol again", name, tostring(err))
    self.protocol = nil
  end
  return work, err, retry_after, name .. " poll"
end

-- A heartbeat now: sent before a claim or a report, so that the dashboard
-- has this machine's worker row (a reset may have deleted it).
function Agent:register()
  return self:heartbeat()
end

-- Where a split config goes: <GOLIAT project>/configs/<name>.
function Agent:config_path(name)
  return self.host.fs.join(self.s.project_dir, "configs", name)
end

-- The status file (agent_status.json) that `--status` reads: rewritten
-- when what it says changes (a heartbeat that fails after one that did
-- not, a study that starts or ends, ...), and at least every status_every
-- seconds, so that the time of the last heartbeat it holds is never older
-- than that.
-- The facts write_status compares (each one set by it on every call).
local STATUS_FACTS = { "protocol", "stopping", "waiting", "failure", "study",
  "ok", "error", "attempt", "study_pid", "backlog", "report" }

function Agent:write_status(force)
  local h = self.host
  -- one write at a time (the write waits: host.fs runs off the loop); a
  -- call meanwhile is done again once it is over, with what is new then
  -- (busy since: a write whose task was stopped does not hold it for good)
  if self.status_busy and h.time.monotonic() - self.status_busy < 60 then
    self.status_again = self.status_again or force or "due"
    return
  end
  local study, beat = self.study, self.last_beat
  local now = h.time.now()
  -- what the file says that can change, compared without encoding anything
  -- (this runs with every heartbeat: two tables take turns, so that it
  -- makes no garbage)
  local seen = self.status_scratch or {}
  seen.protocol = self.protocol and self.protocol.name
  seen.stopping, seen.waiting = self.stopping, self.waiting
  seen.failure, seen.study = self.last_failure, study
  seen.ok, seen.error = beat and beat.ok, beat and beat.error
  seen.attempt = study and study.state.attempt
  seen.study_pid = study and study.proc.pid
  -- the gateway's queue: whether it holds a backlog (its size is written
  -- with the rest, not a reason to write)
  seen.backlog = self.gateway and self.gateway.queue.count > 0
  seen.report = self.report_waiting
  local last = self.status_seen
  self.status_scratch = seen
  -- whether it is due goes by the monotonic clock: a wall clock stepped
  -- back must not hold the file back until it catches up
  local mono = h.time.monotonic()
  if not force and last and
      mono - (self.status_written or -math.huge) < self.s.status_every then
    local same = true
    for i = 1, #STATUS_FACTS do
      local k = STATUS_FACTS[i]
      if last[k] ~= seen[k] then same = false; break end
    end
    if same then return end
  end
  local st = {
    pid = self.pid or h.sys.pid(),
    version = h.version,
    policy = self.policy,
    started_at = self.started_at,
    dashboard = self.log.redact(self.s.monitoring_url),
    machine_id = self.s.machine_id,
    protocol = self.protocol and self.protocol.name or nil,
    stopping = self.stopping,
    waiting = self.waiting,
    heartbeat = self.last_beat and { ok = self.last_beat.ok,
      error = self.last_beat.error, since = self.last_beat.since,
      every = self.s.heartbeat_interval } or nil,
    last_error = self.last_failure,
    study = study and {
      assignment_id = study.assignment.id,
      split_index = study.assignment.split_index,
      super_study = study.assignment.super_study_name,
      pid = study.proc.pid,
      attempt = study.state.attempt,
      started_at = study.state.started_at,
      owned_at = study.owned_at,
    } or nil,
    gateway = self.gateway and self.gateway:stats() or nil,
    report_waiting = self.report_waiting,
    idle = self:idle_status(),
  }
  st.heartbeat_at = beat and beat.at or nil
  st.updated_at = now
  self.status_busy = mono
  local ok = h.fs.write_atomic(self.status_file, cjson.encode(st),
    { sync = false })
  self.status_busy = nil
  if ok then
    self.status_seen, self.status_written = seen, mono
    self.status_scratch = last -- overwritten whole by the next call
  end
  local again = self.status_again
  if again then
    self.status_again = nil
    return self:write_status(again == true)
  end
end

-- What the agent waits for (say, an operator's reset), logged when it
-- changes rather than on every poll.
function Agent:note_waiting(note)
  if note ~= self.waiting then
    if note then self.log.warn("%s", note) end
    self.waiting = note
  end
end

------------------------------------------------------------------------------
-- Step 3: run the study and wait for it. The study runs under a small
-- wrapper (study_wrapper.lua) that records its exit code in a file, and the
-- agent records the study in its state file: if the agent dies, the next
-- one takes the study back (recover) instead of starting it again. A study
-- that ran out of memory (oom_exit_code) runs again, up to oom_retries
-- times, with the same config.
------------------------------------------------------------------------------

-- Files of an assignment in the work dir, named from split_index only.
function Agent:file(a, pattern)
  return self.host.fs.join(self.s.work_dir,
    string.format(pattern, a.split_index))
end

function Agent:study_env(a)
  local env = {
    GOLIAT_WEBGUI_ENABLED = "true",
    -- with the gateway on, the study's messages go through the agent
    GOLIAT_MONITORING_URL = self.study_url or self.s.monitoring_url,
    GOLIAT_MACHINE_ID = self.s.machine_id,
    GOLIAT_ASSIGNMENT_ID = a.id,
    GOLIAT_API_TOKEN = "", -- the agent's secret, not the study's
  }
  if self.study_url and self.s.gateway_hook then self:hook_env(env) end
  return env
end

-- GOLIAT posts to the dashboard URL written in its code, not to
-- GOLIAT_MONITORING_URL (PROTOCOL.md section 6): scripts/pyhook's
-- sitecustomize.py, first on the study's PYTHONPATH, sends its requests to
-- those URLs (gateway_urls) to the gateway instead. Loopback goes around
-- any proxy the VM sets.
function Agent:hook_env(env)
  local h = self.host
  local windows = h.sys.platform() == "windows"
  local function prepend(value, var, sep)
    local old = h.sys.getenv(var)
    return (old and old ~= "") and value .. sep .. old or value
  end
  env.PYTHONPATH = prepend(self.s.hook_dir, "PYTHONPATH",
    windows and ";" or ":")
  env.GOLIAT_GATEWAY_HOOK_TARGET = self.study_url
  env.GOLIAT_GATEWAY_HOOK_URLS = cjson.encode(self.s.gateway_urls)
  -- (names of variables are one on Windows, whatever their case)
  for _, var in ipairs(windows and { "NO_PROXY" } or
      { "no_proxy", "NO_PROXY" }) do
    env[var] = prepend("127.0.0.1,localhost", var, ",")
  end
end

-- Runs the study until it ends other than out of memory, or the reruns are
-- used up. `run` continues after a restart: {attempt = n, started = when
-- the first attempt started (Agent:mark), earlier = how attempts 1 to n-1
-- ended ("42", "3", "SIGKILL"), outcome = how attempt n ended, if known}.
function Agent:run_study(a, config_path, run)
  run = run or {}
  local attempt = run.attempt or 1
  local started = run.started or self:mark()
  local earlier = run.earlier or {}
  local outcome = run.outcome
  local resumed = run.resumed -- an attempt stopped with the agent, again
  while true do
    if not outcome and (attempt > 1 or resumed) then
      local last = M.ended_as(earlier[#earlier])
      if not resumed and not self:rerun_kind(last, { table.unpack(earlier, 1,
          #earlier - 1) }) then
        -- the limits were lowered across a restart
        last.attempts, last.earlier = attempt - 1, { table.unpack(earlier,
          1, #earlier - 1) }
        return last
      end
      local go, why = self:before_rerun(a)
      if self.stopping then
        return { error = "agent stopped by " .. self.stopping .. " before " ..
          "the study's rerun", attempts = attempt - 1, earlier = earlier }
      elseif not go then
        self.log.warn("assignment %s: not run again: %s", tostring(a.id), why)
        return { error = "the study was not run again: " .. why,
          attempts = attempt - 1, earlier = earlier }
      end
    end
    resumed = false
    outcome = outcome or self:run_attempt(a, config_path, attempt, started,
      earlier)
    self.rerun_pending = nil -- (Agent:before_rerun's late claim stops)
    outcome.attempts, outcome.earlier = attempt, earlier
    local kind = self:rerun_kind(outcome, earlier)
    if not kind then return outcome end
    local ended = M.ending_of(outcome)
    if kind == "oom" then
      self.log.warn("assignment %s: the study ran out of memory (exit code " ..
        "%d) on attempt %d: running it again", a.id, outcome.exit_code,
        attempt)
    else
      self.log.warn("assignment %s: the study failed (%s) on attempt %d: " ..
        "running it again in %g s (GOLIAT_FAILURE_RETRIES)", a.id,
        tonumber(ended) and "exit code " .. ended or ended, attempt,
        self.s.failure_retry_delay)
    end
    earlier = { table.unpack(earlier) }
    earlier[#earlier + 1] = ended
    attempt, outcome = attempt + 1, nil
    -- a restart from here on starts this attempt, not the last one again
    self:save_state(M.put_started({ assignment = a,
      config_path = config_path, attempt = attempt, earlier = earlier },
      started))
    if kind == "failure" and not self:pause(self.s.failure_retry_delay) then
      return { error = "agent stopped by " .. self.stopping .. " before " ..
        "the study's rerun", attempts = attempt - 1, earlier = earlier }
    end
  end
end

-- When something starts, on both clocks: {at = wall clock, mono =
-- monotonic clock, boot = this boot's id}. Durations and time limits come
-- from the monotonic clock (Agent:since), which a wall clock step does not
-- move; it counts from the machine's boot, so a mark saved by an earlier
-- agent of the same boot still holds after a restart or a reload.
function Agent:mark()
  local clock = self.host.time
  return { at = clock.now(), mono = clock.monotonic(), boot = self.boot_id }
end

-- Seconds since a mark; by the wall clock only when the mark is of another
-- boot, or has no monotonic time (a state file of an older agent).
function Agent:since(started)
  local clock = self.host.time
  if started.mono and started.boot and started.boot == self.boot_id then
    local d = clock.monotonic() - started.mono
    if d >= 0 then return d end
  end
  return math.max(0, clock.now() - (started.at or clock.now()))
end

-- A mark into a state table's fields (started_at, started_mono, boot_id),
-- and back.
function M.put_started(state, started)
  state.started_at, state.started_mono, state.boot_id = started.at,
    started.mono, started.boot
  return state
end

function M.started_of(state)
  return { at = tonumber(state.started_at),
    mono = tonumber(state.started_mono),
    boot = type(state.boot_id) == "string" and state.boot_id or nil }
end

-- How an attempt ended, as kept in the state file: its exit code as text,
-- or the signal that killed it.
function M.ending_of(outcome)
  if outcome.exit_code then return tostring(outcome.exit_code) end
  return outcome.signal or "SIGKILL"
end

-- The outcome an ending_of text stands for.
function M.ended_as(text)
  local code = math.tointeger(tonumber(text or ""))
  if code then return { exit_code = code } end
  return { signal = text or "SIGKILL" }
end

-- Whether the attempt that ended with `outcome` is run again: "oom" (out
-- of memory, oom_retries), "failure" (any other exit code but 0, or a
-- crash; failure_retries), or nil. earlier: how the attempts before it
-- ended. A time limit, an error before the study ran, and a stop are
-- never run again.
function Agent:rerun_kind(outcome, earlier)
  if outcome.timed_out or outcome.error or outcome.lost or self.stopping or
      outcome.exit_code == 0 then
    return nil
  end
  local oom = tostring(self.s.oom_exit_code)
  local ooms = 0
  for _, e in ipairs(earlier) do
    if e == oom then ooms = ooms + 1 end
  end
  if outcome.exit_code == self.s.oom_exit_code then
    return ooms < self.s.oom_retries and "oom" or nil
  end
  return #earlier - ooms < self.s.failure_retries and "failure" or nil
end

-- Wait `seconds` unless the agent is asked to stop; returns whether the
-- whole wait passed.
function Agent:pause(seconds)
  local clock = self.host.time
  local deadline = clock.monotonic() + seconds
  while not self.stopping do
    local left = deadline - clock.monotonic()
    if left <= 0 then return true end
    clock.sleep(math.min(left, 1))
  end
  return false
end

-- Before a rerun, the dashboard shows the work as this worker's again
-- (GOLIAT's window said `finished` when the last run ended, which the
-- deployed dashboard takes for done): the protocol's before_rerun, asked
-- for up to rerun_wait seconds. When the dashboard has not answered by
-- then, the rerun starts (a VM-hour is not spent waiting) and the asking
-- goes on beside it until the dashboard answers or the rerun ends.
-- Returns true, or false and why when the work is not this worker's now.
function Agent:before_rerun(a)
  local p = type(a.protocol) == "string" and self:protocol_for(a.protocol)
  if not (p and p.before_rerun) then return true end
  local clock = self.host.time
  local deadline = clock.monotonic() + self.s.rerun_wait
  local step = "dashboard check before a rerun"
  for try = 1, math.huge do
    local go, why = p:before_rerun(a)
    if go ~= nil then
      self:note_success(step)
      return go, why
    end
    self:note_failure(step, why)
    local delay = self:backoff(try)
    if self.stopping then return true end -- (run_study stops)
    if clock.monotonic() + delay > deadline then
      self.log.warn("assignment %s: the dashboard has not answered for " ..
        "%g s: rerunning, and asking it on meanwhile", tostring(a.id),
        self.s.rerun_wait)
      local pending = {}
      self.rerun_pending = pending
      self.host.task.spawn("claim back during a rerun", function()
        for later = try + 1, math.huge do
          clock.sleep(self:backoff(later))
          if self.rerun_pending ~= pending or self.stopping then return end
          -- (the guard is asked again just before a claim: the rerun may
          -- have ended, and its report gone, during the read)
          if p:before_rerun(a, function()
                return self.rerun_pending == pending and not self.stopping
              end) ~= nil then
            self:note_success(step)
            return
          end
        end
      end)
      return true
    end
    clock.sleep(delay)
  end
end

-- The gateway serving assignment a's study (started when it is not yet),
-- or nil when it is off or cannot listen: the study then sends to the
-- dashboard itself, as without the gateway. rec: the {port, secret} of a
-- study taken back after a restart. Returns the record for the state file.
function Agent:gateway_for(a, rec)
  local gw = self.gateway
  if not (gw and self.s.gateway) then return nil end
  if gw.server and gw.assignment_id == a.id then return self.gateway_rec end
  local url, got = gw:serve(a.id, rec)
  if not url then
    self.log.error("assignment %s: %s; the study sends to the dashboard " ..
      "itself", tostring(a.id), tostring(got))
    self.study_url, self.gateway_rec = nil, nil
    return nil
  end
  self.study_url, self.gateway_rec = url, got
  return got
end

function Agent:run_attempt(a, config_path, attempt, started, earlier)
  local h = self.host
  local exit_file = self:file(a, "study_%d.exit.json")
  local log_path = self:file(a, "study_%d.log")
  h.fs.remove(exit_file) -- left by an earlier run of the same split
  local gateway = self:gateway_for(a)
  if gateway then self.gateway:new_attempt() end
  -- a restart that finds `starting` without a pid must not start it again
  self:save_state(M.put_started({ assignment = a, config_path = config_path,
    attempt = attempt, exit_file = exit_file, starting = true,
    gateway = gateway, earlier = earlier }, started))
  local argv = { self.s.host_exe, self.s.wrapper_script,
    -- what the study leaves running gets half the grace: the other half
    -- is for the agent, should the wrapper itself be killed
    "--grace", string.format("%g", self.s.study_grace / 2),
    "--log", log_path, "--log-max",
    string.format("%d", math.floor(self.s.study_log_max_mb * 1048576)),
    exit_file }
  for _, word in ipairs(self.s.study_command) do argv[#argv + 1] = word end
  argv[#argv + 1] = config_path
  self.log.info("assignment %s: starting %s in %s (attempt %d, output in %s)",
    a.id, table.concat(self.s.study_command, " ") .. " " .. config_path,
    self.s.project_dir, attempt, log_path)
  -- a stop may have come while the files above were written (host.fs
  -- waits): checked here, where nothing waits before the spawn
  if self.stopping then
    return { error = "agent stopped by " .. self.stopping .. " before the " ..
      "study started" }
  end
  local proc, err = h.proc.spawn {
    argv = argv,
    env = self:study_env(a),
    cwd = self.s.project_dir,
    stdout = log_path,
    stderr = "stdout",
  }
  if not proc then
    return { error = "study failed to start: " .. tostring(err) }
  end
  local state = {
    assignment = a,
    pid = proc.pid,
    -- a string: Windows' 18 digits do not survive lua-cjson as a number
    start_time = M.start_time_text(h.proc.start_time(proc.pid)),
    exit_file = exit_file,
    config_path = config_path,
    attempt = attempt,
    gateway = gateway,
    earlier = earlier,
  }
  self:save_state(M.put_started(state, started))
  return self:watch_study(proc, state)
end

function Agent:save_state(state)
  self.state_gen = (self.state_gen or 0) + 1
  local ok, err = durable.save_state(self.host, self.state_file, state)
  if not ok then
    self.log.error("cannot save the agent state: %s", tostring(err))
  end
  return ok, err
end

-- The state file goes (its work is reported, or no longer ours).
function Agent:clear_state()
  self.state_gen = (self.state_gen or 0) + 1
  durable.clear_state(self.host, self.state_file)
end

-- Wait for the study (ours, or taken back after a restart) to end, within
-- study_timeout; returns its outcome {exit_code, signal, error, timed_out}.
function Agent:watch_study(proc, state)
  local study = { proc = proc, assignment = state.assignment, state = state }
  self.study = study
  self:watch_ownership(study)
  if self.s.study_timeout then
    self.host.task.spawn("study timeout", function()
      -- (monotonic, across restarts too: a wall clock step changes nothing)
      local left = self.s.study_timeout - self:since(M.started_of(state))
      self.host.time.sleep(math.max(0, left))
      -- a study that ended while the agent was paused (a suspended VM)
      -- ended on time: its exit file says so before the agent noticed
      if self.study == study and not self.stopping and
          not self:read_exit_file(state.exit_file) and
          -- (again: the read waits, and a stop may come meanwhile)
          self.study == study and not self.stopping then
        study.timed_out = true
        self.log.warn("assignment %s: study timed out after %g s: stopping it",
          state.assignment.id, self.s.study_timeout)
        proc:terminate(self.s.study_grace)
      end
    end)
  end
  local wrapper_code, wrapper_signal = proc:wait()
  self:end_leftovers(proc, state.assignment)
  self.study = nil
  local outcome = self:read_exit_file(state.exit_file)
  if not outcome and wrapper_code then
    -- the wrapper could not write the file (a full disk): its own exit
    -- status is the study's exit code
    self.log.warn("assignment %s: the study's exit file %s was not " ..
      "written (is the disk full?): its exit code %d comes from the wrapper",
      state.assignment.id, state.exit_file, wrapper_code)
    outcome = { exit_code = wrapper_code, unrecorded = true }
  elseif not outcome then
    -- the wrapper itself was killed (its tree was): no exit code recorded
    outcome = { signal = wrapper_signal or "SIGKILL" }
  end
  outcome.timed_out, outcome.lost = study.timed_out, study.lost
  return outcome
end

-- While the study runs, about every ownership_every seconds: is its work
-- still this worker's on the dashboard (the protocol's still_ours: super
-- studies)? Two answers in a row that it is not (a reset, another
-- worker's claim, a deleted super study) stop the study, which is then
-- not reported (Agent:finish); a read that fails never stops it.
function Agent:watch_ownership(study)
  local a, every = study.assignment, self.s.ownership_every
  local p = type(a.protocol) == "string" and self:protocol_for(a.protocol)
  if not (p and p.still_ours) or every <= 0 then return end
  local h = self.host
  h.task.spawn("ownership watch", function()
    local misses = 0
    while true do
      h.time.sleep(self:jittered(every))
      if self.study ~= study or self.stopping then return end
      local mine, why = p:still_ours(a)
      if self.study ~= study then return end -- (it ended meanwhile)
      if mine then
        misses, study.owned_at = 0, h.time.now()
        self:note_success("ownership check")
      elseif mine == false then
        misses = misses + 1
        if misses >= 2 then
          study.lost = why
          self.log.warn("assignment %s is no longer this worker's on the " ..
            "dashboard (%s): stopping its study, reporting nothing",
            tostring(a.id), why)
          study.proc:terminate(self.s.study_grace)
          return
        end
      else
        self:note_failure("ownership check", why)
      end
    end
  end)
end

-- The wrapper has ended: whatever of the study's tree still runs ends too,
-- before the report and before the next study. That is the rest of its
-- process group or Job Object, and on Linux the orphans re-parented to the
-- agent (it keeps its tree, see start) when the wrapper itself was killed.
function Agent:end_leftovers(proc, a)
  proc:terminate(self.s.study_grace) -- returns at once when nothing is left
  local left, stuck = tree.end_orphans(self.host, self.s.study_grace)
  if left > 0 then
    self.log.warn("assignment %s: the study left %d process(es) running: " ..
      "ended them%s", tostring(a.id), left,
      stuck > 0 and string.format(" (%d would not end)", stuck) or "")
  end
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
-- Step 4: report how the assignment ended (PROTOCOL.md, "What the agent
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
  elseif outcome.exit_code == 0 and outcome.unrecorded then
    return "study finished (its exit file could not be written: is the " ..
      "disk full?)"
  elseif outcome.exit_code == 0 then
    return "study finished"
  elseif outcome.exit_code == self.s.oom_exit_code then
    return string.format("study ran out of memory (exit code %d)",
      outcome.exit_code)
  end
  return string.format("study exited with code %s%s",
    tostring(outcome.exit_code), outcome.unrecorded and " (its exit file " ..
    "could not be written: is the disk full?)" or "")
end

-- The message, plus the number of attempts when the study was run again
-- after running out of memory.
function Agent:outcome_text(outcome)
  local text = self:outcome_message(outcome)
  local n = outcome.attempts or 1
  if n <= 1 then return text end
  local earlier, oom = outcome.earlier or {}, tostring(self.s.oom_exit_code)
  local parts, all_oom = {}, true
  for i, e in ipairs(earlier) do
    all_oom = all_oom and e == oom
    parts[i] = tonumber(e) and "exit code " .. e or e
  end
  if all_oom then
    return string.format("%s on attempt %d of %d (the %s ran out of memory)",
      text, n, self.s.oom_retries + 1,
      n == 2 and "first attempt" or ("first " .. (n - 1) .. " attempts"))
  end
  return string.format("%s on attempt %d (before it: %s)", text, n,
    table.concat(parts, ", "))
end

-- The report's text, with the study's own words when it sent a `finished`
-- or `fatal_error` through the gateway (held there: the agent's report is
-- the one the dashboard gets).
function Agent:report_text(outcome, ok)
  local text = self:outcome_text(outcome)
  local said = outcome.study_said
  if not said then return text end
  local words = type(said.message) == "string" and said.message ~= "" and
    said.message or nil
  if said.type == "finished" and ok then
    return words and string.format("%s (%s)", text, words) or text
  elseif said.type == "finished" then
    return string.format("%s, although the study reported it finished%s",
      text, words and " (" .. words .. ")" or "")
  end
  return words and string.format("%s: %s", text, words) or text
end

function Agent:report_body(assignment_id, outcome, duration)
  local ok = not outcome.error and not outcome.timed_out and
    not self.stopping and outcome.exit_code == 0
  local message = {
    type = ok and "finished" or "fatal_error",
    message = self.log.redact(self:report_text(outcome, ok)),
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

-- Send one outbox item until a 2xx, or until `deadline` (monotonic). A
-- heartbeat goes first, so that the dashboard knows the worker (on the
-- deployed dashboard a report from an unknown machine can complete another
-- machine's assignment).
function Agent:deliver(file, item, deadline, on_stored)
  local clock = self.host.time
  local what = item.body.message and item.body.message.assignment_id
  -- set the dashboard right first (Agent:settle)
  local settle = self:settles(item) and item.settle or nil
  local settle_failures = 0
  while true do
    if not file and on_stored then
      -- not stored yet (a full disk): try again, it may have room now
      file = self.outbox:put(item, "quiet")
      if file then on_stored() end
    end
    -- only the report's own reply decides its fate (res): a heartbeat
    -- refused by a proxy or during a token rotation says nothing about it
    local ok, err, retry_after = self:register()
    local res
    if ok and settle then
      ok, err = self:settle(settle, item)
      if ok then
        settle = nil
      else
        settle_failures = settle_failures + 1
        if settle_failures >= self.s.settle_tries then
          self.log.error("assignment %s: the dashboard's status could not " ..
            "be checked before the report (%s): reporting anyway",
            tostring(what), tostring(err))
          ok, settle = true, nil
          item.unsettled = true -- (confirm tries once more)
        end
      end
    elseif not ok then
      err = "heartbeat before the report failed: " .. tostring(err)
    end
    if ok then
      ok, err, retry_after, res = self:call("POST", item.path, item.body)
    end
    if ok then
      self:note_success("report")
      self:note_report_waiting(nil)
      self.outbox:done(file)
      if not file and on_stored then on_stored() end
      self.log.info("reported %s for assignment %s",
        tostring(item.body.message and item.body.message.type), tostring(what))
      if self:settles(item) then return self:confirm(item, deadline) end
      return true
    end
    if res and M.report_refused(res.status) then
      -- the report itself is bad: asking again will not help, and it must
      -- not hold up all work
      self:note_report_waiting(nil)
      local kept = self.outbox:reject(file or self.outbox:put(item, "quiet"))
      self.log.error("report for assignment %s refused by the dashboard " ..
        "for good (%s): not sent again, kept in %s", tostring(what), err,
        tostring(kept))
      return true
    end
    local hint = res and M.OPERATOR_FIXES[res.status]
    if hint then err = string.format("%s (%s)", err, hint) end
    local n = self:note_failure("report", err)
    self:note_report_waiting(what, err)
    local delay = self:backoff(n, retry_after)
    if deadline and clock.monotonic() + delay > deadline then
      self.log.error("report for assignment %s not delivered yet: %s " ..
        "(kept in the outbox for the next start)", tostring(what), err)
      return false
    end
    -- a heartbeat that works again after failures ends the wait: what
    -- waits goes at once when the dashboard is back
    self.beat_back:wait(delay)
  end
end

-- A report that waits for the dashboard (what, and why), shown by
-- --status; nil once it is sent or set aside.
function Agent:note_report_waiting(what, err)
  if not what then
    self.report_waiting = nil
    return
  end
  local w = self.report_waiting
  if w and w.assignment_id == tostring(what) and w.error == err then return end
  self.report_waiting = { assignment_id = tostring(what),
    error = self.log.redact(tostring(err)),
    since = w and w.since or self.host.time.now() }
  self:write_status()
end

-- Whether a report's work is of a protocol that sets the dashboard right
-- around it (an outbox item from an older agent has no `settle`).
function Agent:settles(item)
  local w = item.settle
  local p = type(w) == "table" and type(w.protocol) == "string" and
    self:protocol_for(w.protocol)
  return p and p.settle and p.confirm and true or false
end

-- Before a report of work whose protocol can set the dashboard right
-- (protocol/super_study.lua: a failed run that GOLIAT's window completed is
-- claimed back first). Returns true, or nil and why.
function Agent:settle(w, item)
  local ok = item.body.message.type == "finished"
  local done, err = self:protocol_for(w.protocol):settle(w, ok)
  if done then return true end
  return nil, "checking the dashboard's status before the report: " ..
    tostring(err)
end

-- After the report: the dashboard is read back and what it shows logged.
-- A failure that shows COMPLETED all the same (the study's window, late),
-- or that could not be checked before the report and cannot be now, is
-- set right and reported once more, from the outbox; twice at most.
function Agent:confirm(item, deadline)
  local w = item.settle
  local ok = item.body.message.type == "finished"
  local right = self:protocol_for(w.protocol):confirm(w, ok)
  if right == nil and item.unsettled then right = false end
  item.unsettled = nil
  if right == false and not ok and (item.rounds or 0) < 2 then
    item.rounds = (item.rounds or 0) + 1
    self.log.warn("assignment %s: reporting the failure once more after " ..
      "setting the dashboard right", tostring(w.id))
    return self:deliver(self.outbox:put(item), item, deadline)
  end
  return true
end

-- Replies that an operator's fix changes (a rotated token, a proxy that
-- wants credentials, a wrong URL): what is refused with them is kept and
-- sent again; what to check is said in the log and in --status.
M.OPERATOR_FIXES = {
  [401] = "the dashboard refuses the agent's credentials: check " ..
    "GOLIAT_API_TOKEN; the report is kept and sent again",
  [403] = "refused by the dashboard or a proxy: check GOLIAT_API_TOKEN " ..
    "and the proxy; the report is kept and sent again",
  [404] = "not found: check GOLIAT_MONITORING_URL; the report is kept " ..
    "and sent again",
  [407] = "the proxy wants credentials: check the proxy settings; the " ..
    "report is kept and sent again",
}

-- A reply that says the report itself is bad (malformed, too large, not
-- understood): sending the same report again will not help, so it is set
-- aside. Every other reply, 401, 403, 404 and 407 included, keeps it.
local BAD_REPORT = { [400] = true, [413] = true, [415] = true, [422] = true }
function M.report_refused(status)
  return BAD_REPORT[status] == true
end

-- A reply that will not change if the same request is sent again (for the
-- gateway's messages of studies): a 4xx but 408 (timeout), 429 (slow
-- down) and those an operator's fix changes (OPERATOR_FIXES but 404: a
-- study may post where the dashboard has nothing). Everything else is
-- retried.
function M.refused_for_good(status)
  return status >= 400 and status < 500 and status ~= 408 and
    status ~= 429 and (status == 404 or not M.OPERATOR_FIXES[status])
end
Agent.refused_for_good = M.refused_for_good -- for lib/gateway.lua
Agent.OPERATOR_FIXES = M.OPERATOR_FIXES

-- Reports left by an earlier run, oldest first, before anything new.
function Agent:flush_outbox()
  for _, p in ipairs(self.outbox:pending()) do
    self.log.info("sending a report left from an earlier run (%s)", p.file)
    if not self:deliver(p.file, p.item) then return end
  end
end

-- What a report needs to set the dashboard right around it (the work's
-- protocol can: Agent:settle), or nil.
function Agent:settling(a)
  local p = type(a) == "table" and type(a.protocol) == "string" and
    self:protocol_for(a.protocol)
  if not (p and p.settle) then return nil end
  return { protocol = a.protocol, id = a.id, split_index = a.split_index,
    super_study_id = a.super_study_id, super_study_name = a.super_study_name,
    worker_id = a.worker_id }
end

-- The end of an assignment: the state file naming the study is removed
-- only once the report is safe, in the outbox or delivered. When neither
-- happens (a full disk, then a kill), the next start finds the state and
-- reports the assignment from it. a: the work, or only its id.
function Agent:finish(a, outcome, duration)
  if outcome.lost then return self:drop_lost(a) end
  if self.stopping and self:keep_on_stop(a, outcome) then return end
  local a_id = a
  if type(a) == "table" then a_id = a.id end
  -- with the gateway: the study has exited; what it said at its end is
  -- held, and what it sent before goes first
  local gw, upto = self.gateway, nil
  if gw then
    local held
    held, upto = gw:stop_serving(a_id)
    outcome.study_said = held
    self.study_url, self.gateway_rec = nil, nil
  end
  local body = self:report_body(a_id, outcome, duration)
  self.log.info("assignment %s ended: %s", tostring(a_id),
    body.message.message)
  local item = { path = "/api/gui-update", body = body,
    settle = self:settling(a) }
  local file = self.outbox:put(item)
  -- what goes into the retention ledger, read while the state file is
  -- there; the ledger itself waits for the report (below)
  local files = self:finished_files(a)
  local function clear() self:clear_state() end
  if file then clear() end
  local deadline = self.stopping and
    self.host.time.monotonic() + self.s.shutdown_report_for or nil
  if gw and not gw:wait_sent(upto, deadline) then
    self.log.error("assignment %s: the study's messages are not all sent " ..
      "yet: its report waits in the outbox, behind them, for the next start",
      tostring(a_id))
    return
  end
  self:deliver(file, item, deadline, clear)
  -- after the report: whatever happens here cannot hold it up or send it
  -- twice
  local ok, err = pcall(self.retain, self, a, files)
  if not ok then
    self.log.error("retention: %s (the files are kept)", tostring(err))
  end
end

-- A finished assignment's files (lib/retention.lua): its study log and the
-- copy before it, its exit file and its split config, those that exist.
function Agent:finished_files(a)
  if type(a) ~= "table" or not math.tointeger(a.split_index) then return {} end
  local h = self.host
  local files = {}
  local function add(p)
    if p and h.fs.exists(p) then files[#files + 1] = p end
  end
  local log_path = self:file(a, "study_%d.log")
  add(log_path)
  add(log_path .. ".1")
  add(self:file(a, "study_%d.exit.json"))
  local state = cjson.decode(h.fs.read(self.state_file) or "")
  if type(state) == "table" and type(state.assignment) == "table" and
      state.assignment.id == a.id and type(state.config_path) == "string" then
    add(state.config_path)
  end
  return files
end

-- Whether `path` is a file the agent makes for an assignment: a study log
-- (or its .1) or an exit file in the work dir, or a config in configs/ of
-- the project dir. The retention removes nothing else, whatever its ledger
-- says (the agent runs as root; the ledger is a file in the work dir).
function Agent:makes_file(path)
  local fs = self.host.fs
  local p = fs.join(path)
  if p:find("[/\\]%.%.?[/\\]") then return false end
  local dir, name = p:match("^(.*)[/\\]([^/\\]+)$")
  if not dir then return false end
  if dir == fs.join(self.s.work_dir) then
    return name:match("^study_%d+%.log$") ~= nil or
      name:match("^study_%d+%.log%.1$") ~= nil or
      name:match("^study_%d+%.exit%.json$") ~= nil
  end
  return dir == fs.join(self.s.project_dir, "configs") and
    name:match("%.json$") ~= nil
end

-- They go into the retention ledger, and the oldest assignments' files
-- beyond keep_finished and keep_finished_mb are removed. files: what
-- finished_files listed for `a` (nil: none; then the ledger is only
-- pruned, as when the disk runs low).
function Agent:retain(a, files)
  local h = self.host
  local ledger = require("lib.retention").open(h,
    h.fs.join(self.s.work_dir, "retention.json"), self.log,
    function(p) return self:makes_file(p) end)
  if files and #files > 0 then ledger:add(a.id, files, h.time.now()) end
  local gone, freed = ledger:prune(self.s.keep_finished,
    math.floor(self.s.keep_finished_mb * 1048576))
  if (files and #files > 0) or gone > 0 then ledger:save() end
  if gone > 0 then
    self.log.info("retention: removed the files of the %d oldest " ..
      "finished assignment(s) (%.1f MB; GOLIAT_KEEP_FINISHED=%d, " ..
      "GOLIAT_KEEP_FINISHED_MB=%g)", gone, freed / 1048576,
      self.s.keep_finished, self.s.keep_finished_mb)
  end
end

-- Work that became another's while its study ran (watch_ownership): its
-- study was stopped; nothing is reported (a report could complete or fail
-- the other worker's run), not even what the study said at its end.
function Agent:drop_lost(a)
  if self.gateway then
    self.gateway:stop_serving(a.id)
    self.study_url, self.gateway_rec = nil, nil
  end
  self:clear_state()
  self.log.info("assignment %s: its study was stopped and is not " ..
    "reported; taking other work", tostring(a.id))
end

-- At a stop, before the study's tree is asked to end: the state file marks
-- its work interrupted at once, so that a stop cut short (Windows gives a
-- service about 20 s at shutdown, and ending the tree may take longer)
-- still leaves the work to run again at the next start (keep_on_stop).
function Agent:mark_interrupted(signal)
  -- the work loop may write or clear the file while it is read (host.fs
  -- waits): what was read is written back only if nothing changed since,
  -- else a state cleared after its report would come back as interrupted
  -- and run the finished work again
  for _ = 1, 5 do
    local gen = self.state_gen
    local state = cjson.decode(self.host.fs.read(self.state_file) or "")
    if gen == self.state_gen then
      local a = type(state) == "table" and state.assignment
      local p = type(a) == "table" and type(a.protocol) == "string" and
        self:protocol_for(a.protocol)
      if p and p.ownership then
        state.interrupted = signal
        self:save_state(state)
      end
      return
    end
  end
end

-- A planned stop (a service stop, a reboot, Ctrl-C) keeps work whose
-- protocol can say whose it is (super studies): the study's tree was ended,
-- but no failure is reported. The state file keeps the assignment, marked
-- interrupted, and the next start runs it again if the dashboard still
-- shows it as this worker's (GOLIAT's caches let it resume). The planned
-- API cannot say, and its work is reported as before. Returns whether the
-- work was kept.
function Agent:keep_on_stop(a, outcome)
  -- (an exit code 0 during a stop may be a study that was stopped: it runs
  -- again, which costs little with GOLIAT's caches, rather than be taken
  -- for done)
  if type(a) ~= "table" or outcome.timed_out then return false end
  local p = type(a.protocol) == "string" and self:protocol_for(a.protocol)
  if not (p and p.ownership) then return false end
  local state = cjson.decode(self.host.fs.read(self.state_file) or "")
  if type(state) ~= "table" or type(state.assignment) ~= "table" or
      state.assignment.id ~= a.id then
    state = M.put_started({ assignment = a }, self:mark())
  end
  state.pid, state.start_time, state.exit_file, state.starting, state.gateway =
    nil, nil, nil, nil, nil
  state.interrupted = self.stopping
  local ok, err = self:save_state(state)
  if not ok then
    self.log.error("cannot keep assignment %s for the next start (%s): " ..
      "reporting it", tostring(a.id), tostring(err))
    return false
  end
  if self.gateway then
    -- what the study sent is sent at the next start; its last words are not
    self.gateway:stop_serving(a.id)
    self.study_url, self.gateway_rec = nil, nil
  end
  self.log.info("assignment %s: stopped by %s: not reported; the next " ..
    "start runs it again if the dashboard still shows it as this worker's",
    tostring(a.id), self.stopping)
  return true
end

------------------------------------------------------------------------------
-- One piece of work from start to end. Never drops it silently: once it is
-- taken, every way out sends a report. Returns whether a study ran, or
-- "lost" when another worker took it first, or "error" when taking it
-- failed.
------------------------------------------------------------------------------
function Agent:handle(work)
  local clock = self.host.time
  local started = clock.monotonic()
  local outcome
  if work.invalid then
    self.log.error("rejected assignment %s: %s", tostring(work.id or "?"),
      work.invalid)
    outcome = { error = work.invalid }
  else
    -- on disk from now on: a restart in the middle still reports it
    local state = M.put_started({ assignment = work }, self:mark())
    self:save_state(state)
    local taken, why, keep_state = self.protocol:take(work)
    if not taken then
      if not keep_state then
        self:clear_state()
      end
      if taken == false then
        self.log.info("%s: choosing other work", why)
        return "lost"
      end
      self:note_failure("claim", why)
      return "error"
    end
    self:note_success("claim")
    self:save_state(state) -- now with what taking it told (the worker row)
    if self.stopping then
      outcome = { error = "agent stopped by " .. self.stopping ..
        " before the study started" }
    else
      outcome = self:prepare_and_run(work, M.started_of(state))
    end
  end
  self:finish(work, outcome, clock.monotonic() - started)
  return outcome.exit_code ~= nil or outcome.signal ~= nil
end

function Agent:prepare_and_run(work, started)
  -- each assignment's study log starts fresh; the last one is kept as .1
  local log_path = self:file(work, "study_%d.log")
  local fs = self.host.fs
  if fs.exists(log_path) then fs.rename(log_path, log_path .. ".1") end
  local path, err = self:protocol_for(work.protocol):prepare(work)
  if not path then
    return { error = err }
  elseif self.stopping then
    return { error = "agent stopped by " .. self.stopping ..
      " before the study started" }
  end
  return self:run_study(work, path, { started = started })
end

-- After a restart: the study named in the state file either ended while
-- the agent was down (its exit file says how), still runs (take it back),
-- or is gone without a trace (report it lost). Never starts it again, but
-- for the next out-of-memory rerun, or work claimed and not yet started;
-- both only while the dashboard still shows the work as ours.
function Agent:recover()
  local h = self.host
  local state, damaged_id = durable.load_state(h, self.state_file, self.log)
  if damaged_id then
    self:finish(damaged_id, { error = "the agent's state file was damaged " ..
      "(kept as agent_state.json.bad): how the study ended is unknown" }, 0)
  end
  if not state then return end
  local a = state.assignment
  self.busy = true
  local outcome = self:read_exit_file(state.exit_file)
  local run = { attempt = math.tointeger(state.attempt) or 1,
    started = M.started_of(state) }
  run.earlier = M.earlier_of(state, run.attempt, self.s.oom_exit_code)
  local starts = false -- whether recovering starts a study
  if state.interrupted and state.config_path and
      not (state.pid and self:same_process(state)) then
    -- stopped with the agent (the tree ended, or the stop was cut short):
    -- the same attempt again, whatever the exit file says
    self.log.info("assignment %s: its study was stopped with the agent " ..
      "(%s): running it again", tostring(a.id), tostring(state.interrupted))
    starts, run.resumed, outcome = true, true, nil
  elseif outcome then
    self.log.info("assignment %s: the study ended while the agent was down",
      tostring(a.id))
    run.outcome, outcome = outcome, nil
    starts = self:rerun_due(run)
  elseif not state.pid and state.starting then
    outcome = { error = "study lost: the agent died while starting it" }
  elseif not state.pid and run.attempt > 1 and state.config_path then
    self.log.info("assignment %s: the agent restarted between two " ..
      "reruns", tostring(a.id))
    starts = true
  elseif not state.pid then
    starts = "prepare"
  elseif self:same_process(state) then
    self.log.info("assignment %s: taking back the running study (pid %d)",
      tostring(a.id), state.pid)
    self:gateway_for(a, state.gateway) -- the URL the study has: same port
    run.outcome = self:watch_study(assert(h.proc.attach(state.pid)), state)
    starts = self:rerun_due(run)
  else
    outcome = { error = "study lost: it was no longer running when the " ..
      "agent restarted and left no exit code" }
  end
  local owned = starts and self:ownership(a, starts ~= "prepare")
  if owned == "no" then
    self.log.warn("assignment %s is no longer this worker's on the " ..
      "dashboard (reset, or claimed by another): not running it", tostring(a.id))
    self:clear_state()
  else
    if starts == "prepare" then
      if owned == "yes" then
        self.log.info("assignment %s: claimed before the restart and still " ..
          "ours on the dashboard: starting its study", tostring(a.id))
        outcome = self:prepare_and_run(a, run.started)
      else
        outcome = { error = "the agent restarted before the study started" }
      end
    end
    if not outcome then
      outcome = self:run_study(a, state.config_path, run)
    end
    self:finish(a, outcome, self:since(run.started))
  end
  self.busy = false
end

-- Whether the attempt that ended ran out of memory with reruns left.
function Agent:rerun_due(run)
  return self:rerun_kind(run.outcome, run.earlier) ~= nil
end

-- Whether work taken before a restart is still this worker's: "yes", "no",
-- or "n/a" when its protocol cannot tell (the planned API). ran: a run of
-- it has ended (its study may have said `finished`). Asks until the
-- dashboard answers, or the agent stops.
function Agent:ownership(a, ran)
  local p = type(a.protocol) == "string" and self:protocol_for(a.protocol)
  if not (p and p.ownership) then return "n/a" end
  for try = 1, math.huge do
    local mine, err = p:ownership(a, ran)
    if mine ~= nil then return mine and "yes" or "no" end
    self:note_failure("ownership check", err)
    if self.stopping then return "n/a" end
    self.host.time.sleep(self:backoff(try))
  end
end

-- How the attempts before the state's ended. An agent before failure
-- retries kept none: its reruns were all out of memory.
function M.earlier_of(state, attempt, oom_code)
  local out = {}
  if type(state.earlier) == "table" then
    for _, e in ipairs(state.earlier) do
      if type(e) == "string" then out[#out + 1] = e end
    end
  end
  while #out < attempt - 1 do table.insert(out, 1, tostring(oom_code)) end
  return out
end

-- Whether the state's pid is still the study's wrapper (not a reused pid).
-- Never adopts pid 0 or 1, the agent itself, or a process whose start time
-- is not the one recorded when the agent started the wrapper: the agent
-- runs as root and would signal that process's whole tree.
function Agent:same_process(state)
  local pid = math.tointeger(state.pid)
  if not pid or pid <= 1 or pid == self.host.sys.pid() or
      state.start_time == nil or not self.host.proc.alive(pid) then
    return false
  end
  return M.start_time_text(self.host.proc.start_time(pid)) ==
    M.start_time_text(state.start_time)
end

-- A process start time as text: an integer's digits, all of them (state
-- files written before this was a string hold a number).
function M.start_time_text(t)
  if type(t) == "number" then return tostring(math.tointeger(t) or t) end
  return t
end

-- Returns once the first heartbeat has ended, or after request_timeout
-- (a hung heartbeat holds nothing back for longer).
function Agent:after_first_beat()
  if not self.first_beat_over then
    self.beat_done:wait(self.s.request_timeout)
  end
end

function Agent:work_loop()
  -- one connection at start-up: the first heartbeat opens it, then the
  -- first poll (or report) reuses it
  self:after_first_beat()
  if self.gateway then
    -- what studies sent before this start goes before their reports
    self.gateway:wait_sent(self.gateway.start_seq)
  end
  self:flush_outbox()
  self:recover()
  while not self.stopping do
    -- no new work on a disk too full for it, nor while the VM goes down
    local low = self:disk_low()
    local hold = low or self:idle_holding()
    if hold then
      self.waiting = hold -- (logged by disk_low and idle_stop themselves)
      if low and self.last_beat and self.last_beat.ok then
        -- a VM whose disk is too full for work is idle and billed all the
        -- same: GOLIAT_IDLE_AFTER stops it too (the dashboard answers)
        self.idle:answered_empty(self.host.time.monotonic(),
          self:sending_backlog())
        if self.idle:due() then self:idle_stop() end
      else
        self.idle:pause()
      end
      self:wait_riding(self:jittered(self.s.poll_interval))
      goto next
    end
    -- a stop waits for this call: the planned API hands work out with it
    self.busy = true
    self.lookup_incomplete = nil -- (set by a protocol when part failed)
    local work, err, retry_after, step = self:find_work()
    self.busy = false
    if work and self.stopping and not self.protocol.finding_takes then
      work = false -- chosen, not taken: nothing to report
    end
    local delay = self:jittered(self.s.poll_interval)
    local ride = false
    if work == nil then
      local n = self:note_failure(step, err)
      delay = math.max(delay, self:backoff(n, retry_after))
      self.idle:pause() -- an outage is not idleness
    else
      self:note_success(step)
      self:note_waiting(not work and err or nil)
      ride = not work
      if not work and self.lookup_incomplete then
        -- part of the dashboard did not answer: its work is unknown, and
        -- an outage is not idleness
        self.idle:pause()
      elseif not work then
        self.idle:answered_empty(self.host.time.monotonic(),
          self:sending_backlog())
        if self.idle:due() then self:idle_stop() end
        delay = self:jittered(self.idle:delay(self.s.poll_interval))
        -- the lookup that ends the idle time comes when it ends, not up
        -- to a back-off later
        local left = self.idle:left()
        if left and left > 0 then delay = math.min(delay, left) end
      else
        self.idle:work()
        self.busy = true
        local ran = self:handle(work)
        self.busy = false
        if ran == "lost" then
          delay = math.random() * 2 -- soon, but not in step with the others
        elseif ran == "error" then
          delay = math.max(delay, self:backoff(self.failures.claim))
        elseif ran then
          delay = 1 -- soon ask for the next one
        end
      end
    end
    if not self.stopping then
      if ride then self:wait_riding(delay) else self.host.time.sleep(delay) end
    end
    ::next::
  end
end

-- The status file, written after each heartbeat (status_due) by a task of
-- its own, so that the heartbeat never waits on the disk.
function Agent:status_loop()
  while true do
    self.status_due:wait()
    self:write_status()
  end
end

-- The last write of the status file before the agent exits: after the one
-- in flight, if any (at most 5 s), so that it is not skipped.
function Agent:final_status()
  local h = self.host
  local t = h.time.monotonic()
  while self.status_busy and h.time.monotonic() - t < 5 do
    h.time.sleep(0.05)
  end
  self:write_status(true)
end

-- What --status says of idleness: seconds idle, and the seconds left
-- before the idle stop and what it does (while GOLIAT_IDLE_AFTER is set).
function Agent:idle_status()
  if self.study then return nil end
  local idle = self.idle:seconds()
  local left = self.idle:left()
  if idle <= 0 and not left then return nil end
  return { seconds = math.floor(idle), stop_in = left and math.ceil(left),
    stop = left and (self.s.idle_command and
      table.concat(self.s.idle_command, " ") or "exit") or nil,
    held = self.idle_held_until and true or nil }
end

-- Whether something still waits to be sent (a report, a study's messages
-- in the gateway's queue): the agent is not idle then.
function Agent:sending_backlog()
  return self.report_waiting ~= nil or
    (self.gateway ~= nil and self.gateway.queue.count > 0)
end

-- Why no new work may be taken for lack of disk space (GOLIAT_MIN_FREE_GB
-- in the project dir or the work dir), or nil. Logged once when it starts
-- and once when it ends.
function Agent:disk_low()
  local min = self.s.min_free_gb
  if not min or min <= 0 then return nil end
  local why, free_gb
  for _, dir in ipairs { self.s.project_dir, self.s.work_dir } do
    local space = self.host.fs.space(dir)
    if space and space.free < min * 1e9 then
      why = string.format("less than %g GB free in %s (GOLIAT_MIN_FREE_GB):" ..
        " taking no new work until there is room", min, dir)
      free_gb = space.free / 1e9
      break
    end
  end
  if why and not self.low_disk then
    self.log.warn("only %.1f GB free: %s", free_gb, why)
    -- what the retention keeps may make room (it runs after each
    -- assignment, and none will end now)
    local ok, err = pcall(self.retain, self, nil, nil)
    if not ok then self.log.error("retention: %s", tostring(err)) end
  elseif not why and self.low_disk then
    self.log.info("the disk has room again (GOLIAT_MIN_FREE_GB %g): " ..
      "taking work", min)
  end
  self.low_disk = why
  return why
end

-- Idle for GOLIAT_IDLE_AFTER: GOLIAT_IDLE_COMMAND runs once (logged), and
-- no new work is taken for idle_hold seconds (the VM is going down); with
-- no command the agent exits with code 0, which neither the packaged
-- systemd unit (RestartPreventExitStatus=0) nor the Windows service
-- restarts.
function Agent:idle_stop()
  local h, s = self.host, self.s
  self.idle.fired = true
  local idle = self.idle:seconds()
  if not s.idle_command then
    self.log.warn("idle for %d s with no work (GOLIAT_IDLE_AFTER=%g): " ..
      "exiting with code 0", math.floor(idle), s.idle_after)
    self.stopping = "idle"
    self:final_status()
    h.exit(0)
    return
  end
  local cmd = table.concat(s.idle_command, " ")
  self.log.warn("idle for %d s with no work (GOLIAT_IDLE_AFTER=%g): " ..
    "running GOLIAT_IDLE_COMMAND: %s", math.floor(idle), s.idle_after, cmd)
  self.idle_held_until = h.time.monotonic() + s.idle_hold
  local out = h.fs.join(s.work_dir, "idle_command.log")
  -- (not the agent's token: the command is no business of the dashboard)
  local p, err = h.proc.spawn { argv = s.idle_command, stdout = out,
    stderr = "stdout", env = { GOLIAT_API_TOKEN = "" } }
  if not p then
    self.log.error("GOLIAT_IDLE_COMMAND could not start: %s (the VM " ..
      "keeps running; the agent takes work again, and tries the command " ..
      "once more after another GOLIAT_IDLE_AFTER)", tostring(err))
    self.idle_held_until = nil
    self.idle:work() -- (idle from zero: the stop may run again)
    return
  end
  h.task.spawn("idle command", function()
    local deadline = h.time.monotonic() + s.idle_command_limit
    while p:running() and h.time.monotonic() < deadline do
      h.time.sleep(1)
    end
    if p:running() then
      self.log.error("GOLIAT_IDLE_COMMAND still runs after %g s: stopping it",
        s.idle_command_limit)
      p:kill()
    end
    local code, signal = p:wait()
    local level = code == 0 and "info" or "error"
    self.log[level]("GOLIAT_IDLE_COMMAND ended with %s (its output: %s)%s",
      code and "exit code " .. code or tostring(signal), out, code == 0 and
      "" or ": the agent takes work again, and tries the command once " ..
      "more after another GOLIAT_IDLE_AFTER")
    if code ~= 0 then
      self.idle_held_until = nil
      self.idle:work()
    end
  end)
end

-- Why no work is taken while the idle command stops the VM, or nil; once
-- idle_hold has passed and the VM still runs, work is taken again.
function Agent:idle_holding()
  local until_ = self.idle_held_until
  if not until_ then return nil end
  if self.host.time.monotonic() < until_ then
    return "GOLIAT_IDLE_COMMAND ran: the VM is being stopped; taking no " ..
      "new work"
  end
  self.idle_held_until = nil
  self.log.warn("the VM still runs %g s after GOLIAT_IDLE_COMMAND: taking " ..
    "work again", self.s.idle_hold)
  return nil
end

-- Wait about `delay` seconds before the next idle poll, ending just after
-- a heartbeat: the first one that ends no more than half a heartbeat
-- interval early, or at the latest half an interval late. An idle agent
-- then wakes once for both requests, not twice (waking the process costs
-- more CPU than the request itself), and the poll goes over the
-- connection the heartbeat has just used. A delay shorter than the
-- heartbeat interval is slept as it is.
function Agent:wait_riding(delay)
  local h, hb = self.host, self.s.heartbeat_interval
  if delay < hb then return h.time.sleep(delay) end
  local now = h.time.monotonic()
  local earliest, latest = now + delay - hb / 2, now + delay + hb / 2
  while now < earliest and not self.stopping do
    if not self.beat_done:wait(latest - now) then return end
    now = h.time.monotonic()
  end
end

------------------------------------------------------------------------------
-- Step 5: stopping (SIGINT, SIGTERM, Ctrl-Break, service stop). The study's
-- whole process tree is terminated and the assignment reported as failed.
------------------------------------------------------------------------------
function Agent:stop(signal)
  if self.stopping then return end
  self.stopping = signal
  local h = self.host
  self.log.info("%s: stopping", signal)
  self:mark_interrupted(signal)
  local ended
  local function end_study()
    if self.study and self.study ~= ended then
      ended = self.study
      self.log.info("terminating the study (grace %g s)", self.s.study_grace)
      self.study.proc:terminate(self.s.study_grace)
    end
  end
  end_study()
  local deadline = h.time.monotonic() + self.s.shutdown_report_for + 1
  while self.busy and h.time.monotonic() < deadline do
    end_study() -- one that started while the stop began
    h.time.sleep(0.1)
  end
  self:final_status()
  self.log.info("agent stopped")
  h.exit(0)
end

------------------------------------------------------------------------------
-- Reload (SIGHUP on Linux; for the Windows service, `goliat-host
-- --service-reload NAME` or `sc control NAME paramchange`): the edited
-- agent.lua, its lib/ and the settings file are taken up without stopping
-- the study. A separate goliat-host
-- first loads them (--validate); if they do not load, the agent keeps
-- running as it is and logs why. Otherwise the host runs agent.lua again
-- in the same process (host.restart), and the new agent takes the running
-- study back through the state file, as after a restart.
------------------------------------------------------------------------------
function Agent:reload(why)
  local h = self.host
  if self.reloading or self.stopping then return end
  self.reloading = true
  self.log.info("%s received: checking the edited agent.lua and settings",
    why)
  local out = h.fs.join(self.s.work_dir, ".goliat-reload-check.txt")
  local p = h.proc.spawn { argv = { self.s.host_exe, M.script_path(h),
    "--validate" }, stdout = out, stderr = "stdout" }
  -- an edit that blocks while it loads (in a C call, where the task
  -- watchdog cannot stop it) must not hold every later reload up
  local checked, too_long = false, false
  if p then
    h.task.spawn("reload check limit", function()
      h.time.sleep(self.s.reload_check_limit)
      if not checked and p:running() then
        too_long = true
        p:kill()
      end
    end)
  end
  local code = p and p:wait()
  checked = true
  local text = h.fs.read(out) or ""
  h.fs.remove(out)
  if too_long then
    text = string.format("the check of the edited agent.lua and settings " ..
      "did not end within %g s (does the edit block while it loads?): " ..
      "stopped", self.s.reload_check_limit)
  end
  if code ~= 0 or too_long then
    self.log.error("reload refused, the agent keeps running as it was: %s",
      text:match("[^\r\n]+") or "the check could not run")
    self.reloading = false
    return
  end
  -- not in the middle of a claim or a report (bounded)
  local deadline = h.time.monotonic() + 30
  while self.busy and not self.study and h.time.monotonic() < deadline do
    h.time.sleep(0.1)
  end
  self.log.info("reloading agent.lua and the settings%s", self.study and
    string.format(" (the study of assignment %s keeps running and is " ..
      "taken back)", tostring(self.study.assignment.id)) or "")
  -- a stop that came during the check wins over the reload
  if self.stopping then return end
  self:final_status()
  -- the settings in use, for the next script should its settings fail
  -- all the same (M.main): the agent goes on with these, not exits
  if self.stopping then return end -- (one that came during that write)
  self:save_reload_fallback()
  h.restart()
end

-- The environment variable that names the file which carries the settings
-- across a reload: an owner-only file in the work dir (it holds the token,
-- which no environment variable a child could inherit should).
M.RELOAD_FALLBACK = "GOLIAT_AGENT_RELOAD_SETTINGS_FILE"

function Agent:save_reload_fallback()
  local h = self.host
  local file = h.fs.join(self.s.work_dir, ".goliat-reload-settings.json")
  local text = cjson.encode(self.s)
  if text and h.fs.write_atomic(file, text) then
    h.sys.setenv(M.RELOAD_FALLBACK, file)
  end
end

-- The settings the agent had before a reload (Agent:reload), or nil; the
-- variable and the file go at once. Settings this agent.lua has and the
-- one before did not (an upgrade) come from DEFAULTS.
local function reload_fallback(host)
  local file = host.sys.getenv(M.RELOAD_FALLBACK)
  if not file then return nil end
  host.sys.setenv(M.RELOAD_FALLBACK, nil)
  local text = host.fs.read(file)
  host.fs.remove(file)
  local s = cjson.decode(text or "")
  if type(s) ~= "table" then return nil end
  -- JSON gave 5.0 for 5: whole numbers back as integers ("42", not "42.0")
  local function whole(t)
    for k, v in pairs(t) do
      if type(v) == "table" then
        whole(v)
      elseif math.type(v) == "float" and math.tointeger(v) then
        t[k] = math.tointeger(v)
      end
    end
  end
  whole(s)
  for k, v in pairs(DEFAULTS) do
    if s[k] == nil then s[k] = v end
  end
  return s
end

-- agent.lua's own path, as goliat-host was given it.
function M.script_path(host)
  local source = debug.getinfo(1, "S").source:gsub("^@", "")
  return settings_lib.absolute(host, source)
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
  self.started_at = h.time.now()
  self.pid = h.sys.pid()
  -- on Linux, what a killed wrapper leaves is re-parented to the agent
  -- (end_leftovers), not to init
  h.proc.keep_tree()
  self.facts = settings_lib.host_facts(h, self.s.hostname)
  -- nvidia-smi can hang: the heartbeat does not wait for it, and it starts
  -- once the first heartbeat is out (bounded), not before it
  h.task.spawn("gpu probe", function()
    self:after_first_beat()
    self.facts.gpuName = settings_lib.gpu_name(h, self.s.work_dir,
      self.s.gpu_probe_timeout)
  end)
  self.policy = settings_lib.policy_hash(h, settings_lib.scripts_dir(h))
  self.log.info("goliat agent %s (policy %s) for %s, protocol %s, work " ..
    "dir %s, project dir %s", h.version or "?", self.policy,
    self.s.monitoring_url, self.s.protocol, self.s.work_dir,
    self.s.project_dir)
  self.log.info("machine id %s (%s)", self.s.machine_id,
    self.s.machine_id_source)
  local signals = h.sys.platform() == "windows"
    and { "SIGINT", "SIGBREAK", "SIGHUP" } or { "SIGINT", "SIGTERM" }
  for _, name in ipairs(signals) do
    h.sys.on_signal(name, function(sig) self:stop(sig) end)
  end
  -- an edited agent.lua or settings file, taken up without a stop: SIGHUP
  -- on Linux, the service's reload control on Windows
  local reload = h.sys.platform() == "windows" and "a service reload"
    or "SIGHUP"
  h.sys.on_signal("reload", function() self:reload(reload) end)
  self:supervise("heartbeat", Agent.heartbeat_loop)
  self:supervise("status", Agent.status_loop)
  if self.s.gateway or self:gateway_leftovers() then self:start_gateway() end
  self:supervise("worker", Agent.work_loop)
end

-- Whether the gateway's queue holds messages (from when it was on).
function Agent:gateway_leftovers()
  local fs = self.host.fs
  for _, name in ipairs(fs.list(fs.join(self.s.work_dir, "gateway")) or {}) do
    if name:match("^%d+%.json$") then return true end
  end
  return false
end

-- The study's local gateway (lib/gateway.lua): its queue is sent by a loop
-- of its own from now on (also with the gateway turned off, while messages
-- from when it was on wait). A study still running from before a restart
-- gets its gateway back at once, on the same port, so that it loses as
-- little as possible while the agent catches up.
function Agent:start_gateway()
  local gw = require("lib.gateway").new(self)
  self.gateway = gw
  self:supervise("gateway", function() gw:forward_loop() end)
  local state = self.s.gateway and
    cjson.decode(self.host.fs.read(self.state_file) or "")
  if type(state) == "table" and type(state.assignment) == "table" and
      type(state.gateway) == "table" and self:same_process(state) then
    self:gateway_for(state.assignment, state.gateway)
  end
end

-- Settings from DEFAULTS, the settings file and the environment; nil,
-- message when one is bad. opts.look_only: create and write nothing.
function M.load_settings(host, opts)
  return settings_lib.load(host, DEFAULTS, opts)
end

local USAGE = [==[
usage: goliat-host scripts/agent.lua [--check | --status [--json] | --test | --version]
  (no option)  run the agent
  --check      check the settings, the dashboard, the study command and the
               folders; exit code 1 when anything is FAIL
  --status     what the agent on this machine is doing now (--json: as JSON)
  --test       run the policy specs (shipped beside scripts/) against this
               agent.lua: a few seconds; exit code 0 when they all pass
  --version    the agent's version, and the hash of its policy (agent.lua
               and its lib/ and protocol/, changed by an edit)
]==]

function M.main(host, option, ...)
  -- The agent lives for months and its garbage is young (a few hundred
  -- bytes per request): Lua's generational collector keeps the heap nearer
  -- its live size than the incremental default, which lets it double
  -- before each cycle, and does less work (bench/: RssAnon after 3000
  -- fast-paced requests 1880 kB against 2068; 8 % fewer instructions per
  -- idle request). The incremental collector made to run without a pause
  -- kept the heap smaller still but tripled the instructions per request.
  collectgarbage("generational")
  if option == "--check" then
    host.exit(require("lib.check").run(host, M))
    return
  elseif option == "--status" then
    host.exit(require("lib.status").show(host, M, ...))
    return
  elseif option == "--validate" then
    -- for a reload: do this file and all its modules load, and the
    -- settings?
    local names = { table.unpack(LAZY_MODULES) }
    for _, p in ipairs(PROTOCOLS) do names[#names + 1] = p.module end
    for _, name in ipairs(names) do
      local ok, err = pcall(require, name)
      if not ok then -- on one line: require's message spans two
        io.stdout:write((tostring(err):gsub("%s*[\r\n]+%s*", " ")), "\n")
        host.exit(2)
        return
      end
    end
    -- as a start checks them, the folders included (made if missing, as
    -- the start would)
    local s, err = M.load_settings(host)
    if s then
      local ok
      ok, err = settings_lib.apply_host(host, s)
      if not ok then s = nil end
    end
    if not s then io.stdout:write(err, "\n") end
    host.exit(s and 0 or 2)
    return
  elseif option == "--test" then
    host.exit(require("lib.spec_runner").run(host, { ... }))
    return
  elseif option == "--version" then
    io.stdout:write(string.format("goliat-agent %s (policy %s, %s; " ..
      "goliat-host %s)\n", host.version or "?", settings_lib.policy_hash(host,
      settings_lib.scripts_dir(host)), M.script_path(host),
      host.version or "?"))
    host.exit(0)
    return
  elseif option == "--help" or option == "-h" then
    io.stdout:write(USAGE)
    host.exit(0)
    return
  elseif option then
    io.stderr:write("goliat-agent: unknown option ", option, "\n", USAGE)
    host.exit(2)
    return
  end
  local fallback = reload_fallback(host)
  local settings, err = M.load_settings(host)
  if settings then
    local ok
    ok, err = settings_lib.apply_host(host, settings)
    if not ok then settings = nil end
  end
  if not settings and fallback then
    -- checked by --validate, yet refused now (a folder gone since): the
    -- study under way stays supervised with the settings from before
    host.log.error("reload: the edited settings are refused (%s): the " ..
      "agent goes on with the settings it had before the reload", err)
    settings = fallback
  end
  if not settings then
    io.stderr:write("goliat-agent: ", err, "\n")
    host.exit(2)
    return
  end
  -- one agent per work dir: two would write the same outbox and state
  local lock, lerr = host.fs.lock(host.fs.join(settings.work_dir, "agent.lock"))
  if not lock then
    io.stderr:write("goliat-agent: GOLIAT_WORK_DIR ", settings.work_dir,
      " cannot be used: ", tostring(lerr), lerr and lerr:match("locked") and
      " (another agent runs with it: give each agent its own work dir)" or "",
      "\n")
    host.exit(2)
    return
  end
  math.randomseed(host.sys.pid(), math.floor(host.time.now() * 1000))
  -- once, before the first heartbeat: the id does not change while the
  -- agent runs
  settings.machine_id, settings.machine_id_source =
    settings_lib.machine_id(host, settings)
  local agent = M.new(host, settings)
  agent.lock = lock -- held while the agent lives
  agent:start()
end

M.Agent = Agent -- for lib/check.lua

-- `require "agent"` (the specs) gets the module; goliat-host runs it.
if ... == "agent" then
  return M
end
M.main(require "host", ...)
