-- The deployed GOLIAT dashboard (PROTOCOL.md section 4): work is organised
-- in super studies whose assignments a worker claims. The module shape is
-- described in protocol/assignment.lua.
--
-- The dashboard's traps, and what this module does about each:
-- * A claim is never refused: the last claim wins the row. After claiming,
--   wait `claim_settle` seconds, read the stored status again and run the
--   assignment only if it is still RUNNING under this worker.
-- * The derived view (GET /api/super-studies/<id>) shows PENDING for work
--   that runs under an idle or stale worker: work is chosen from the stored
--   status (GET /api/super-studies/<id>/assignments) only.
-- * `fatal_error` leaves the assignment RUNNING, and the next `finished`
--   completes any one RUNNING assignment of the worker: while one of its
--   assignments is RUNNING and no study of ours runs, this worker takes no
--   new work, until an operator resets the worker on the dashboard.
-- * A claim or report from a machine without a worker row can create or
--   complete the wrong rows: a heartbeat goes first (agent:register()).
-- * GOLIAT's own window sends `finished` after every run, failed or out of
--   memory too, which completes the assignment: before a rerun it is
--   claimed back (before_rerun), and before the report the stored status
--   is set right and read again after it (settle, confirm).
-- * Machines sending the same hostname share one worker row, whose IP
--   flips: warned about.
local cjson = require "cjson.safe"
local settings_lib = require "lib.settings"

local M = { name = "super-study" }
M.__index = M

local enc = settings_lib.url_encode

local function is_json_array(res)
  return res ~= nil and res.body:match("^%s*%[") ~= nil
end

-- The dashboard speaks this API when the list of super studies is a JSON
-- array. It is asked for one name only (the first of GOLIAT_SUPER_STUDY,
-- or one no study has): a long history is not read to find that out.
function M.probe(agent)
  local name = agent.s.super_study and agent.s.super_study[1] or
    "goliat-host-probe"
  local list, err, retry_after, res = agent:lookup("/api/super-studies" ..
    "?name=" .. enc(name))
  if list and is_json_array(res) then
    return "yes", "GET /api/super-studies answered a JSON array"
  end
  if list or (res and res.status == 404) then
    return "no", "GET /api/super-studies did not answer a JSON array"
  end
  return nil, err, retry_after
end

function M.new(agent)
  return setmetatable({
    agent = agent,
    finding_takes = false, -- work found is claimed by take()
    worker_id = nil,  -- our worker row on the dashboard, once a claim told
    configs = {},     -- assignment id -> splitConfig, from the last read
    said = {},        -- warnings given once
  }, M)
end

function M:warn_once(key, fmt, ...)
  if self.said[key] then return end
  self.said[key] = true
  self.agent.log.warn(fmt, ...)
end

-- The worker row an assignment of the stored view runs under (its id or
-- nil), and the row itself.
local function worker_of(a)
  local w = type(a.worker) == "table" and a.worker or nil
  return (w and w.id) or (a.workerId ~= cjson.null and a.workerId) or nil, w
end

-- Whether an assignment of the stored view runs under this machine's
-- worker: the row a claim told us about, or a row with our machine id.
function M:ours(a)
  local id, w = worker_of(a)
  if id ~= nil and self.worker_id ~= nil and id == self.worker_id then
    return true
  end
  return w ~= nil and w.ipAddress == self.agent.s.machine_id
end

-- Machines that send the same hostname share one worker row; its IP then
-- flips to whichever beat last. Machines with the same machine id (behind
-- one NAT) share one row too; its hostname flips.
function M:check_shared_row(a)
  local id, w = worker_of(a)
  local s = self.agent.s
  if w and w.ipAddress == s.machine_id and type(w.hostname) == "string" and
      w.hostname ~= s.hostname then
    self:warn_once("same id " .. tostring(id), "the dashboard shows this " ..
      "agent's machine id %s on a worker with hostname %s, not %s: another " ..
      "machine uses the same machine id (behind the same NAT?) and shares " ..
      "its row. Give each VM its own GOLIAT_MACHINE_ID", s.machine_id,
      w.hostname, tostring(s.hostname))
  end
  if w and self.worker_id ~= nil and id == self.worker_id and
      type(w.ipAddress) == "string" and w.ipAddress ~= s.machine_id
  then
    self:warn_once("shared " .. tostring(id),
      "the dashboard shows this agent's worker %s under IP %s, not %s: " ..
      "another machine sends the same hostname (%s) and shares its row. " ..
      "Give each VM its own hostname (or set GOLIAT_HOSTNAME)",
      tostring(id), w.ipAddress, self.agent.s.machine_id,
      tostring(self.agent.s.hostname))
  end
end

-- GET of a list of super studies: the list, or nil, err, retry_after,
-- foreign (this dashboard does not speak the API).
function M:study_list(path)
  local list, err, retry_after, res = self.agent:lookup(path)
  if not list then
    return nil, err, retry_after, res and res.status == 404
  end
  if not is_json_array(res) then
    return nil, "GET " .. path .. " did not answer a JSON array", nil, true
  end
  return list
end

-- The super studies named in GOLIAT_SUPER_STUDY, each looked up by name
-- (a long history is not read for them). A name that cannot be looked up
-- now is left out of this round, with a warning; nil and why when none
-- can.
function M:named(names)
  local out, err, retry_after, foreign
  local read = 0
  for _, name in ipairs(names) do
    local step = "super study " .. name .. " lookup"
    local list
    list, err, retry_after, foreign = self:study_list("/api/super-studies" ..
      "?name=" .. enc(name))
    if foreign then return nil, err, retry_after, foreign end
    if list then
      read = read + 1
      self.agent:note_success(step)
      for _, st in ipairs(list) do
        out = out or {}
        out[#out + 1] = st
      end
    else
      self.agent:note_failure(step, err)
      self.agent.lookup_incomplete = true -- (not idleness: Agent:work_loop)
    end
  end
  if read == 0 then return nil, err, retry_after end
  return out or {}
end

-- Every super study, oldest first, those of GOLIAT_SUPER_STUDY (or all)
-- marked `wanted`: work is taken from those only, but a failed assignment
-- of ours holds the worker wherever it is. With GOLIAT_SUPER_STUDY set the
-- named studies are looked up by name, and the whole list is read at the
-- start and every full_list_every seconds only (a failed assignment of
-- ours in another super study is found there, and its study is then read
-- every round). Returns the list, or nil, err, retry_after, foreign (this
-- dashboard does not speak the API).
function M:studies()
  local agent = self.agent
  local names = agent.s.super_study
  local now = agent.host.time.monotonic()
  local list, err, retry_after, foreign
  if names and self.full_at and now - self.full_at < agent.s.full_list_every
  then
    list, err, retry_after, foreign = self:named(names)
    if list and self.held_study then
      list[#list + 1] = self.held_study
    end
  else
    list, err, retry_after, foreign = self:study_list("/api/super-studies")
    if list then
      self.full_at = now
      if names then agent:note_success("whole super-study list") end
    elseif names and not foreign then
      -- (too large, a 500): the named studies are looked up all the same,
      -- and the whole list asked for again after full_list_every
      agent:note_failure("whole super-study list", err)
      self.full_at = now
      list, err, retry_after, foreign = self:named(names)
    end
  end
  if not list then return nil, err, retry_after, foreign end
  local wanted, found = {}, {}
  for _, name in ipairs(names or {}) do wanted[name] = true end
  local out, seen = {}, {}
  for _, st in ipairs(list) do
    if type(st) == "table" and type(st.id) == "string" and not seen[st.id]
    then
      seen[st.id] = true
      out[#out + 1] = st
      st.position = #out
      st.wanted = names == nil or wanted[st.name] == true
      if st.wanted and names then found[st.name] = true end
    end
  end
  for _, name in ipairs(names or {}) do
    if not found[name] then
      self:warn_once("missing " .. name, "super study '%s' " ..
        "(GOLIAT_SUPER_STUDY) is not on the dashboard (yet)", name)
    end
  end
  -- the dashboard lists newest first: work on the oldest first
  table.sort(out, function(x, y)
    local cx = type(x.createdAt) == "string" and x.createdAt or ""
    local cy = type(y.createdAt) == "string" and y.createdAt or ""
    if cx ~= cy then return cx < cy end
    return x.position > y.position
  end)
  return out
end

-- Whether a super study can hold work for us or a RUNNING assignment of
-- ours, judged from the ids and statuses its list entry carries.
local function worth_reading(st)
  if type(st.assignments) ~= "table" then return true end
  for _, a in ipairs(st.assignments) do
    if type(a) == "table" and (a.status == "RUNNING" or
        (a.status == "PENDING" and st.wanted)) then
      return true
    end
  end
  return false
end

-- A super study's assignments with their stored status, sorted by index.
function M:assignments(study_id)
  local list, err, retry_after, res = self.agent:lookup(
    "/api/super-studies/" .. enc(study_id) .. "/assignments")
  if not list then return nil, err, retry_after end
  if not is_json_array(res) then
    return nil, "the assignments of super study " .. study_id ..
      " are not a JSON array"
  end
  local out = {}
  for i, a in ipairs(list) do
    if type(a) == "table" then
      out[#out + 1] = a
      -- where its exact text is: cjson would turn [] into {} on the way
      self.configs[a.id or ""] = { value = a.splitConfig, body = res.body,
        at = i }
      self:check_shared_row(a)
    end
  end
  table.sort(out, function(a, b)
    return (tonumber(a.index) or math.huge) < (tonumber(b.index) or math.huge)
  end)
  return out
end

-- The work an assignment stands for, or nil and why it cannot be run.
local function work_of(a, st)
  local index = math.type(a.index) and math.tointeger(a.index)
  if type(a.id) ~= "string" or a.id == "" then
    return nil, "it has no valid 'id'"
  elseif not index or index < 0 then
    return nil, "its 'index' is not a non-negative integer"
  elseif type(st.name) ~= "string" or st.name == "" then
    return nil, "its super study has no name"
  end
  return { protocol = M.name, id = a.id, split_index = index,
    super_study_id = st.id, super_study_name = st.name }
end

-- Chooses the lowest-index PENDING assignment of the oldest super study,
-- from the stored status. While an assignment is RUNNING under this worker
-- (a failed one: nothing of ours runs while we look for work), returns
-- false and what it waits for.
function M:find_work()
  local studies, err, retry_after, foreign = self:studies()
  if not studies then return nil, err, retry_after, foreign end
  self.configs = {}
  local candidate, held, unread
  local orphans = {} -- RUNNING under other workers: maybe abandoned
  for _, st in ipairs(studies) do
    local list
    if worth_reading(st) then
      local step = "super study " .. tostring(st.name) .. " assignments"
      local aerr
      list, aerr = self:assignments(st.id)
      if list then
        self.agent:note_success(step)
      else
        -- (too large, a 500, ...): skipped this round, the others go on;
        -- the round says nothing of this study's work (not idleness)
        self.agent:note_failure(step, aerr)
        self.agent.lookup_incomplete = true
        if self:may_hold(st) then unread = unread or st end
      end
    end
    if list then
      for _, a in ipairs(list) do
        if a.status == "RUNNING" and self:ours(a) and not held then
          held = { a = a, st = st }
        elseif a.status == "RUNNING" and st.wanted and not self:ours(a) then
          orphans[#orphans + 1] = { a = a, st = st }
        elseif a.status == "PENDING" and st.wanted and not candidate then
          local work, why = work_of(a, st)
          if work then
            candidate = work
          else
            self:warn_once("invalid " .. tostring(a.id), "skipping " ..
              "assignment %s of super study %s: %s", tostring(a.id),
              tostring(st.name), why)
          end
        end
      end
    end
  end
  if not candidate and not held and not unread then
    candidate = self:abandoned(orphans)
  end
  if not held and unread then
    return false, string.format("super study %s cannot be read now, and " ..
      "it may hold a failed assignment of this worker: taking no new work " ..
      "until it can be read", tostring(unread.name))
  end
  if held then
    self.held = held.a.id
    self.held_study = { id = held.st.id, name = held.st.name,
      createdAt = held.st.createdAt }
    return false, string.format("assignment %s (index %s of super study " ..
      "%s) is still RUNNING under this worker on the dashboard after it " ..
      "failed; taking no new work until an operator resets this worker " ..
      "there (a new report could complete the wrong assignment)",
      tostring(held.a.id), tostring(math.tointeger(held.a.index) or
      held.a.index), tostring(held.st.name))
  end
  if self.held then
    -- the operator's reset deleted our worker row: forget it
    self.agent.log.info("assignment %s is no longer RUNNING under this " ..
      "worker (the worker was reset on the dashboard): taking work again",
      tostring(self.held))
    self.held, self.worker_id, self.held_study = nil, nil, nil
  end
  return candidate or false
end

-- The work of the first assignment in `orphans` (RUNNING under other
-- workers) whose worker the dashboard last saw more than abandoned_after
-- ago, by its own clock (the worker's lastSeen against the Date of the
-- reply: the VM's clock plays no part), or nil. A VM that is gone takes
-- its study with it, and a study that still runs beats through GOLIAT's
-- window, so only a worker whose agent and study are both gone looks
-- abandoned. Each worker is asked once per round.
function M:abandoned(orphans)
  local after = self.agent.s.abandoned_after
  if after <= 0 then return nil end
  local ages = {}
  for _, o in ipairs(orphans) do
    local id, w = worker_of(o.a)
    if id ~= nil and ages[id] == nil then
      ages[id] = self:worker_age(id) or false
    end
    local age = id ~= nil and ages[id]
    if age and age > after then
      local work = work_of(o.a, o.st)
      if work then
        work.abandoned = { worker = id, ip = w and w.ipAddress, age = age }
        return work
      end
    end
  end
  return nil
end

-- How long ago (seconds, by the dashboard's clock) the dashboard last saw
-- worker `id`, or nil when it cannot say.
function M:worker_age(id)
  local reply, _, _, res = self.agent:lookup("/api/workers/" .. enc(id))
  local w = reply and type(reply.worker) == "table" and reply.worker
  local seen = w and settings_lib.iso_time(w.lastSeen)
  local now = res and settings_lib.http_date(res.headers["date"])
  if not (seen and now) then return nil end
  return now - seen
end

-- Whether a super study that could not be read may hold a RUNNING
-- assignment of this worker (as its list entry says, or the one where a
-- failed assignment of ours was last seen).
function M:may_hold(st)
  if self.held_study and self.held_study.id == st.id then return true end
  if type(st.assignments) ~= "table" then return true end
  local mine = self:my_worker_id()
  for _, a in ipairs(st.assignments) do
    if type(a) == "table" and a.status == "RUNNING" and
        (mine == nil or a.workerId == mine) then
      return true
    end
  end
  return false
end

-- This machine's worker row: the one a claim told, else the newest row
-- with this machine id in GET /api/workers (after a start or a reset no
-- claim has told it yet); nil when the dashboard cannot say.
function M:my_worker_id()
  if self.worker_id ~= nil then return self.worker_id end
  local list = self.agent:lookup("/api/workers")
  if type(list) ~= "table" then return nil end
  local id, seen
  for _, w in ipairs(list) do
    if type(w) == "table" and w.ipAddress == self.agent.s.machine_id and
        w.id ~= nil and (seen == nil or tostring(w.lastSeen) > seen) then
      id, seen = w.id, tostring(w.lastSeen)
    end
  end
  return id
end

-- The stored view of one assignment, or nil, err.
function M:read_back(work)
  local list, err = self:assignments(work.super_study_id)
  if not list then return nil, err end
  for _, a in ipairs(list) do
    if a.id == work.id then return a end
  end
  return nil, "assignment " .. work.id .. " is no longer on the dashboard"
end

-- Reads the stored view of `work` until it answers (with backoff), or
-- the agent stops. Returns the assignment, or nil and the last error.
function M:read_back_patiently(work)
  local agent = self.agent
  local a, err
  for try = 1, math.huge do
    a, err = self:read_back(work)
    if a or agent.stopping then return a, err end
    agent.host.time.sleep(agent:backoff(try))
  end
end

-- Work taken before a restart names the worker row its claim was told:
-- this agent's, unless a claim since told another.
function M:adopt_worker(work)
  if self.worker_id == nil and work.worker_id ~= nil and
      work.worker_id ~= cjson.null then
    self.worker_id = work.worker_id
  end
end

-- The worker row a claim's reply names becomes this agent's.
function M:remember_worker(reply)
  local id = reply.workerId
  if type(reply.worker) == "table" and reply.worker.id ~= nil then
    id = reply.worker.id
  end
  if id ~= nil and id ~= cjson.null then self.worker_id = id end
end

-- Claims the assignment and makes sure it is really ours: the dashboard
-- never refuses a claim, so agents that claim the same assignment at the
-- same time all get 200, and only the last one holds it. The claim follows
-- a fresh reading of PENDING at once; once every claim made on an earlier
-- reading has landed (claim_settle), the stored status tells who holds it.
-- Returns true, or false and why (another worker has it), or nil, err and
-- whether the claim may have gone through (then the state is kept, so that
-- a restart asks the dashboard again).
function M:take(work)
  local agent = self.agent
  local clock = agent.host.time
  local ok, err = agent:register()
  if not ok then
    return nil, "heartbeat before the claim failed: " .. tostring(err)
  end
  local read_at = clock.monotonic()
  local a, rerr = self:read_back(work)
  if not a then
    return nil, "cannot read assignment " .. work.id .. ": " .. tostring(rerr)
  end
  local gone = work.abandoned
  if gone and a.status == "RUNNING" and worker_of(a) == gone.worker then
    agent.log.warn("assignment %s was RUNNING under worker %s (%s), which " ..
      "the dashboard last saw %s ago: its VM is gone; taking it over",
      work.id, tostring(gone.worker), tostring(gone.ip), gone.age >= 120 and
      string.format("%.0f min", gone.age / 60) or
      string.format("%.0f s", gone.age))
  elseif a.status ~= "PENDING" then
    return false, string.format("assignment %s is %s by now", work.id,
      tostring(a.status))
  end
  local reply, cerr = agent:call("POST", "/api/assignments/" ..
    enc(work.id) .. "/claim", { machineId = agent.s.machine_id })
  if reply then
    self:remember_worker(reply)
  else
    agent.log.warn("claim of assignment %s: %s; checking whether it " ..
      "went through", work.id, tostring(cerr))
  end
  local took = clock.monotonic() - read_at
  if took > agent.s.claim_settle then
    agent.log.warn("claim of assignment %s took %.1f s from reading it " ..
      "PENDING, more than claim_settle (%g s): another worker that claimed " ..
      "it meanwhile may not notice", work.id, took, agent.s.claim_settle)
  end
  clock.sleep(agent.s.claim_settle)
  a, rerr = self:read_back_patiently(work)
  if not a then
    return nil, "cannot check the claim of assignment " .. work.id .. ": " ..
      tostring(rerr), true
  end
  if a.status == "RUNNING" and self:ours(a) then
    work.worker_id = self.worker_id
    return true
  end
  if not reply then
    return nil, "claim of assignment " .. work.id .. " failed: " ..
      tostring(cerr)
  end
  local id, w = worker_of(a)
  return false, string.format("assignment %s went to another worker (%s, " ..
    "status %s): it was claimed at the same time", work.id,
    tostring(w and w.ipAddress or id), tostring(a.status))
end

-- Whether work claimed before an agent restart is still RUNNING under this
-- worker: true or false, or nil and why when the dashboard cannot tell now.
-- ran: a run of it ended; GOLIAT's own `finished` may have completed it,
-- and COMPLETED under this worker counts as ours (before_rerun claims it
-- back).
function M:ownership(work, ran)
  self:adopt_worker(work)
  if type(work.super_study_id) ~= "string" or type(work.id) ~= "string" then
    return false
  end
  local ok, err = self.agent:register()
  if not ok then return nil, err end
  local a, rerr = self:read_back(work)
  if not a then
    if rerr and rerr:match("no longer on the dashboard") then return false end
    return nil, rerr
  end
  return (a.status == "RUNNING" or (ran and a.status == "COMPLETED")) and
    self:ours(a)
end

------------------------------------------------------------------------------
-- Reconciling the dashboard with how a run really ended. GOLIAT's own
-- window sends `finished` after every run, also after a failure and after
-- running out of memory (PROTOCOL.md section 6), and each `finished`
-- completes a RUNNING assignment of the machine's worker. So a failed split,
-- or one about to be rerun, may show COMPLETED. A claim by this worker sets
-- it RUNNING again (claims are never refused); the agent's own report then
-- says how it ended.
------------------------------------------------------------------------------

-- The stored view of work this agent ran (taken before a restart too):
-- the assignment, or nil, err and whether it is gone from the dashboard.
function M:look_up(work)
  self:adopt_worker(work)
  local a, err = self:read_back(work)
  if a then return a end
  return nil, err, (err and err:match("no longer on the dashboard")) ~= nil
end

-- Claims `work` back for this worker and reads it again. Returns the
-- stored view after the claim, or nil, err.
function M:claim_back(work)
  local agent = self.agent
  local ok, err = agent:register()
  if not ok then
    return nil, "heartbeat before the claim failed: " .. tostring(err)
  end
  local reply, cerr = agent:call("POST", "/api/assignments/" ..
    enc(work.id) .. "/claim", { machineId = agent.s.machine_id })
  if not reply then return nil, "claim failed: " .. tostring(cerr) end
  self:remember_worker(reply)
  return self:read_back(work)
end

local function what(a)
  local index = math.tointeger(a.index) or a.index
  return string.format("assignment %s (index %s)", tostring(a.id),
    tostring(index))
end

-- Before an out-of-memory rerun: the assignment RUNNING under this worker,
-- whatever the last run's `finished` made of it (COMPLETED under this
-- worker is claimed back). Returns true when the rerun may go, false and
-- why when the work is not this worker's any more (reset, cancelled, or
-- another worker's: as after a restart, it is not run again), or nil and
-- err when the dashboard cannot say now.
function M:before_rerun(work, still_wanted)
  local a, err, gone = self:look_up(work)
  if gone then return false, err end
  if not a then return nil, err end
  if a.status == "RUNNING" and self:ours(a) then return true end
  if not (a.status == "COMPLETED" and self:ours(a)) then
    local _, w = worker_of(a)
    local who = w and w.ipAddress or (a.workerId ~= cjson.null and
      a.workerId) or nil
    return false, string.format("%s is %s%s on the dashboard", what(a),
      tostring(a.status), who and " under another worker (" ..
      tostring(who) .. ")" or "")
  end
  local was = tostring(a.status)
  if still_wanted and not still_wanted() then
    return false, "the rerun has ended"
  end
  a, err = self:claim_back(work)
  if not a then return nil, err end
  self.agent.log.warn("%s: the dashboard showed it %s before its rerun " ..
    "(GOLIAT's own `finished`): claimed back, now %s", what(a), was,
    tostring(a.status) .. (self:ours(a) and " under this worker" or
    " under another worker"))
  return a.status == "RUNNING" and self:ours(a)
end

-- Before the agent's report of a run that ended (ok: it succeeded): the
-- report must land on this assignment. After a failure, a COMPLETED of
-- ours is claimed back (the failure report then shows it FAILED); after a
-- success, a PENDING one (a reset meanwhile) is claimed back so that the
-- agent's `finished` completes it and the split does not run twice.
-- Returns true when the report may go, or nil, err.
function M:settle(work, ok)
  local a, err, gone = self:look_up(work)
  if gone then return true end
  if not a then return nil, err end
  local wrong = (not ok and a.status == "COMPLETED" and self:ours(a)) or
    (ok and a.status == "PENDING")
  if not wrong then return true end
  local was = a.status
  a, err = self:claim_back(work)
  if not a then return nil, err end
  self.agent.log.warn("%s: the dashboard showed it %s after the study %s: " ..
    "claimed back (now %s) before reporting the %s", what(a), was,
    ok and "succeeded" or "failed", tostring(a.status),
    ok and "success" or "failure")
  return true
end

-- After the report: reads what the dashboard shows now and logs it in one
-- line. Returns true when it shows the outcome (COMPLETED after a success;
-- after a failure anything but COMPLETED under this worker), false when it
-- does not, nil and err when it cannot be read.
function M:confirm(work, ok)
  local a, err, gone = self:look_up(work)
  if gone then return true end
  if not a then return nil, err end
  local right
  if ok then
    right = a.status == "COMPLETED"
  else
    -- (COMPLETED by another worker, which ran it since, is right too)
    right = not (a.status == "COMPLETED" and self:ours(a))
  end
  local log = right and self.agent.log.info or self.agent.log.error
  log("%s: the dashboard shows it %s%s after the %s report", what(a),
    tostring(a.status), self:ours(a) and " under this worker" or "",
    ok and "success" or "failure")
  return right
end

-- While its study runs: is `work` still RUNNING under this worker (or
-- COMPLETED under it: GOLIAT's own `finished` of an earlier attempt)?
-- true; false and why not (a reset, another worker's claim, a deleted
-- super study or assignment); nil and err when the dashboard cannot say.
function M:still_ours(work)
  local a, err, gone = self:look_up(work)
  if gone then return false, err end
  if not a then return nil, err end
  if (a.status == "RUNNING" or a.status == "COMPLETED") and self:ours(a) then
    return true
  end
  local _, w = worker_of(a)
  local who = w and w.ipAddress or (a.workerId ~= cjson.null and
    a.workerId) or nil
  return false, string.format("%s is %s%s", what(a), tostring(a.status),
    who and " under another worker (" .. tostring(who) .. ")" or "")
end

-- A name safe as part of a file name: the super study's name comes from
-- the dashboard and must not reach outside configs/.
-- A name longer than NAME_MAX is cut, and a hash of the whole name keeps
-- it apart from others that start alike: the file name stays far under
-- the 255 bytes a file system allows, and the path under Windows' 260
-- characters for a project folder of up to about 170.
local NAME_MAX = 64

local short_hash = settings_lib.short_hash

local function file_part(name)
  local safe = name:gsub("[^%w%-_.]", "_"):gsub("^%.+", "_")
  if #safe > NAME_MAX then
    safe = safe:sub(1, NAME_MAX - 9) .. "-" .. short_hash(name)
  end
  return safe
end

-- Writes the assignment's splitConfig (an object, or a JSON string holding
-- one) to <project>/configs/<super study>_assignment_<index>.json, where a
-- relative `extends` resolves as it does for `goliat worker`.
function M:prepare(work)
  local agent = self.agent
  if self.configs[work.id] == nil then
    local a, err = self:read_back(work)
    if not a then return nil, err end
  end
  local found = self.configs[work.id]
  local cfg, text = found.value, nil
  if type(cfg) == "string" then
    text = cfg
  elseif type(cfg) == "table" then
    text = agent.host.json.select(found.body, found.at, "splitConfig")
  end
  cfg = text and cjson.decode(text)
  if type(cfg) ~= "table" or not text:match("^%s*{") then
    return nil, "invalid assignment: its splitConfig is not a JSON object " ..
      "(or a JSON string holding one)"
  end
  local path = agent:config_path(string.format("%s_assignment_%d.json",
    file_part(work.super_study_name), work.split_index))
  local ok, err = agent.host.fs.write_atomic(path, text)
  if not ok then
    return nil, "cannot write the config " .. path .. ": " .. tostring(err)
  end
  local extends = cfg.extends
  if type(extends) == "string" and not extends:match("^[/\\]") and
      not extends:match("^%a:") and
      not agent.host.fs.exists(agent:config_path(extends)) then
    agent.log.warn("assignment %s: its config extends %s, which is not in " ..
      "%s: GOLIAT will not find it", work.id, cfg.extends,
      agent:config_path(""))
  end
  agent.log.info("assignment %s (index %d of super study %s): config " ..
    "written to %s", work.id, work.split_index, work.super_study_name, path)
  return path
end

return M
