-- goliat-host scripts/agent.lua --status [--json]: what the agent on this
-- machine is doing now, read from its work dir (no network): whether it
-- runs (it holds agent.lock), and what its status file (agent_status.json,
-- rewritten by the running agent on every change and at least every 30 s)
-- says: the protocol, the study under way and for how long, the last
-- heartbeat, the last error; and the reports waiting in outbox/.
-- Exit code: 0 when the agent runs, 3 when it does not, 2 when the
-- settings are bad.
local cjson = require "cjson.safe"

local M = {}

local function ago(now, t)
  if type(t) ~= "number" then return "?" end
  local s = math.max(0, math.floor(now - t + 0.5))
  if s < 120 then return s .. " s" end
  if s < 7200 then return string.format("%d min", s // 60) end
  return string.format("%d h %d min", s // 3600, s % 3600 // 60)
end

-- A number as JSON gave it back (1.0 for 1), as an integer where it is one.
local function num(v)
  return tostring(math.tointeger(v) or v or "?")
end

local function iso(t)
  return type(t) == "number" and os.date("!%Y-%m-%dT%H:%M:%SZ",
    math.floor(t)) or "?"
end

-- What --status knows: a table (the --json output).
function M.collect(host, agent_mod, s)
  local fs = host.fs
  local out = { work_dir = s.work_dir, now = host.time.now() }
  -- the running agent holds the lock; taking it here means none runs
  local lock, _, code = fs.lock(fs.join(s.work_dir, "agent.lock"))
  if lock then
    lock:unlock()
    out.running = false
  else
    out.running = code == "EBUSY"
  end
  local st = cjson.decode(fs.read(fs.join(s.work_dir,
    agent_mod.STATUS_FILE)) or "")
  out.status = type(st) == "table" and st or nil
  local waiting = 0
  for _, name in ipairs(fs.list(fs.join(s.work_dir, "outbox")) or {}) do
    if name:match("^%d+%.json$") then waiting = waiting + 1 end
  end
  out.outbox = waiting
  local rejected = fs.list(fs.join(s.work_dir, "rejected")) or {}
  out.rejected = #rejected
  -- the study's gateway queue (lib/gateway.lua), read from its files
  local gdir = fs.join(s.work_dir, "gateway")
  local metas = {}
  for _, name in ipairs(fs.list(gdir) or {}) do
    if name:match("^%d+%.json$") then metas[#metas + 1] = name end
  end
  if #metas > 0 or s.gateway then
    table.sort(metas)
    local first = metas[1] and
      cjson.decode(fs.read(fs.join(gdir, metas[1])) or "")
    out.gateway = { waiting = #metas, on = s.gateway,
      oldest_at = type(first) == "table" and tonumber(first.at) or nil }
  end
  return out
end

function M.text(info)
  local now, st = info.now, info.status or {}
  local lines = {}
  local function add(fmt, ...) lines[#lines + 1] = string.format(fmt, ...) end
  if info.running then
    add("agent: running (pid %s, since %s, %s; version %s, policy %s)",
      num(st.pid), iso(st.started_at), ago(now, st.started_at),
      tostring(st.version or "?"), tostring(st.policy or "?"))
  else
    add("agent: not running (work dir %s)%s", info.work_dir,
      st.pid and string.format("; last seen with pid %s at %s, %s ago",
        num(st.pid), iso(st.updated_at), ago(now, st.updated_at)) or "")
  end
  if st.dashboard then
    add("dashboard: %s, protocol %s, machine id %s", st.dashboard,
      st.protocol or "not detected yet", tostring(st.machine_id))
  end
  local hb = st.heartbeat
  if hb then
    -- the file is rewritten when the heartbeat starts or stops failing, and
    -- every 30 s otherwise: say how old the last one it holds is
    add("heartbeat: %s%s (every %s s; the last one recorded %s ago)",
      hb.ok and "ok" or "FAILING for " .. ago(now, hb.since or st.heartbeat_at),
      hb.error and ": " .. hb.error or "", num(hb.every or "?"),
      ago(now, st.heartbeat_at))
  end
  local study = st.study
  if study then
    add("%s: assignment %s (split %s%s), pid %s, attempt %s, started %s ago",
      info.running and "study" or "last known study",
      tostring(study.assignment_id), num(study.split_index),
      study.super_study and ", super study " .. study.super_study or "",
      num(study.pid), num(study.attempt or 1), ago(now, study.started_at))
    if study.owned_at then
      add("  still this worker's on the dashboard %s ago", ago(now,
        study.owned_at))
    end
  elseif info.running then
    add("study: none%s", st.waiting and " (" .. st.waiting .. ")" or
      " (looking for work)")
  end
  local idle = st.idle
  if type(idle) == "table" and info.running then
    local stop = ""
    if idle.stop_in then
      -- counted from when the file was written: idle time runs on since
      local left = math.max(0, idle.stop_in - (now - (st.updated_at or now)))
      stop = string.format("; the VM is stopped (%s) in about %s, " ..
        "GOLIAT_IDLE_AFTER", idle.stop == "exit" and "the agent exits" or
        idle.stop, ago(now, now - left))
    elseif idle.held then
      stop = "; GOLIAT_IDLE_COMMAND ran: the VM is being stopped"
    end
    add("idle: for %s%s", ago(now, now - (idle.seconds or 0)), stop)
  end
  if st.stopping then add("stopping: %s", st.stopping) end
  add("outbox: %d report%s waiting%s", info.outbox,
    info.outbox == 1 and "" or "s", info.rejected > 0 and string.format(
      ", %d refused for good in rejected/", info.rejected) or "")
  local rw = st.report_waiting
  if type(rw) == "table" then
    add("report for assignment %s waiting for %s: %s", tostring(
      rw.assignment_id), ago(now, rw.since), tostring(rw.error))
  end
  local g = info.gateway
  if g then
    add("gateway: %s, %d message%s of studies waiting to be sent%s",
      g.on and "on" or "off (messages left from when it was on)", g.waiting,
      g.waiting == 1 and "" or "s", g.oldest_at and
      string.format(", the oldest from %s ago", ago(now, g.oldest_at)) or "")
  end
  local e = st.last_error
  if e then
    add("last error: %s failed: %s (%s ago)", tostring(e.step),
      tostring(e.message), ago(now, e.at))
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.show(host, agent_mod, option)
  local s, err = agent_mod.load_settings(host, { look_only = true })
  if not s then
    io.stderr:write("goliat-agent: ", err, "\n")
    return 2
  end
  local info = M.collect(host, agent_mod, s)
  if option == "--json" then
    io.stdout:write(cjson.encode(info), "\n")
  elseif option then
    io.stderr:write("goliat-agent: --status knows only --json\n")
    return 2
  else
    io.stdout:write(M.text(info))
  end
  return info.running and 0 or 3
end

return M
