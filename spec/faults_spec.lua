-- Fault injection: the real agent (goliat-host scripts/agent.lua) against
-- the example dashboard misbehaving on purpose (POST /dev/fail, see the
-- head of examples/dashboard.lua), as separate processes on 127.0.0.1.
-- Each case checks what a user would: what the dashboard received, that
-- the agent still runs and beats, that its memory stays bounded, and that
-- it logs a fault when it starts rather than on every retry.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"
local H = require "support.helpers"

local TOKEN = "tok-FAULTSPEC-7Qz9xK2mW4vB"
local FAST = { GOLIAT_HEARTBEAT_INTERVAL = "0.3", GOLIAT_POLL_INTERVAL = "0.3" }
local MiB = 1024 * 1024

local procs, dirs -- what the running case started, stopped after it

local function track_dir(d)
  dirs[#dirs + 1] = d
  return d
end

local function dashboard(args)
  local d = cluster.start_dashboard(args)
  procs[#procs + 1] = { proc = d.proc, log = host.fs.join(d.dir, "dashboard.log") }
  track_dir(d.dir)
  return d
end

-- A fresh work dir inside a folder of its own (base), so that a file
-- written outside the work dir shows up in base.
local function work_dir()
  local base = track_dir(cluster.temp_dir())
  local work = host.fs.join(base, "work")
  assert(host.fs.mkdir_p(work))
  return work, base
end

-- The agent's resident memory in KiB (RssAnon where the kernel gives it),
-- or nil where there is no /proc (then memory is not checked).
local function rss_kib(pid)
  local status = host.fs.read("/proc/" .. pid .. "/status")
  if not status then return nil end
  return tonumber(status:match("RssAnon:%s*(%d+)") or
    status:match("VmRSS:%s*(%d+)"))
end

local function log_of(agent)
  return host.fs.read(agent.log) or ""
end

-- Start the agent (fast intervals); once it has logged its start-up line,
-- note its memory (agent.rss0) to compare with at the end of the case.
local function agent_for(dash, work, env)
  local extra = {}
  for k, v in pairs(FAST) do extra[k] = v end
  for k, v in pairs(env or {}) do extra[k] = v end
  local a = cluster.start_agent(cluster.agent_env(dash.url, work, extra), work)
  procs[#procs + 1] = { proc = a.proc, log = a.log }
  cluster.wait_until(function()
    return log_of(a):find("goliat agent", 1, true)
  end, 10, 0.05)
  a.rss0 = rss_kib(a.proc.pid)
  return a
end

local function fail(dash, faults)
  cluster.post_json(dash.url .. "/dev/fail", faults)
end

local function clear(dash)
  cluster.post_json(dash.url .. "/dev/clear", {})
end

local function events(dash)
  return assert(cluster.events(dash), "no /dev/events from the dashboard")
end

-- Calls the dashboard received whose path matches pattern (and that got
-- fault `mode`, when given; `false` for calls that got none).
local function calls(dash, pattern, mode)
  local out = {}
  for _, r in ipairs(events(dash).requests) do
    if r.path:match(pattern) and (mode == nil or (r.fault or false) == mode) then
      out[#out + 1] = r
    end
  end
  return out
end

local function faulted(dash, pattern)
  local n = 0
  for _, r in ipairs(calls(dash, pattern)) do
    if r.fault then n = n + 1 end
  end
  return n
end

local function wait_faulted(dash, pattern, n, limit)
  return cluster.wait_until(function()
    return faulted(dash, pattern) >= n
  end, limit or 20)
end

-- Wait for a heartbeat that arrived after time t (wall clock).
local function beat_after(dash, t, limit)
  return cluster.wait_until(function()
    for _, b in ipairs(events(dash).heartbeats) do
      if b.at > t then return true end
    end
    return false
  end, limit or 20)
end

local function heartbeats_between(dash, t0, t1)
  local list = {}
  for _, b in ipairs(events(dash).heartbeats) do
    if b.at >= t0 and b.at <= t1 then list[#list + 1] = b.at end
  end
  return list
end

local function max_gap(times)
  local gap = 0
  for i = 2, #times do gap = math.max(gap, times[i] - times[i - 1]) end
  return gap
end

-- Warn lines "<step> failed: ..." in the agent's log.
local function warns(agent, step)
  local n = 0
  local pattern = "warn%s+" .. step:gsub("%p", "%%%0") .. " failed:"
  for line in log_of(agent):gmatch("[^\n]+") do
    if line:match(pattern) then n = n + 1 end
  end
  return n
end

local function reports(dash, n, limit)
  return assert(cluster.reports_at_least(dash, n, limit or 30),
    "fewer than " .. n .. " report(s) arrived")
end

-- The agent is alive, still beating (a heartbeat arrives after now), and
-- its memory grew by less than 20 MiB since it started.
local function assert_healthy(agent, dash)
  assert.is_true(agent.proc:running(), "the agent stopped:\n" .. log_of(agent))
  assert.is_true(beat_after(dash, host.time.now(), 20),
    "no heartbeat arrives any more")
  local now = rss_kib(agent.proc.pid)
  if agent.rss0 and now then
    assert.is_true(now - agent.rss0 < 20 * 1024, string.format(
      "the agent grew from %d to %d KiB", agent.rss0, now))
  end
end

-- Every file under dir (recursively).
local function files_under(dir, out)
  out = out or {}
  for _, name in ipairs(host.fs.list(dir) or {}) do
    local path = host.fs.join(dir, name)
    local st = host.fs.stat(path)
    if st and st.type == "directory" then
      files_under(path, out)
    elseif st then
      out[#out + 1] = path
    end
  end
  return out
end

local function http_date(t)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
end

local STUDY = { duration_s = 0.1, steps = 1 }

-- Faults on the poll, then an assignment: the agent must get past the
-- faults, take the assignment and report it finished, exactly once.
local function survives_poll_faults(faults, id)
  local dash = dashboard()
  local work = work_dir()
  for _, f in ipairs(faults) do f.path = f.path or "^/api/assignment$" end
  fail(dash, faults)
  cluster.queue(dash, STUDY, { id = id })
  local agent = agent_for(dash, work)
  local r = reports(dash, 1)
  assert.equals(#faults, faulted(dash, "^/api/assignment$"))
  assert.equals("finished", r[1].type)
  assert.equals(id, r[1].assignment_id)
  assert.equals(1, #events(dash).handed)
  assert_healthy(agent, dash)
  assert.equals(1, #cluster.reports(dash), "the report arrived twice")
  assert.is_true(warns(agent, "assignment poll") >= 1)
  assert.is_true(warns(agent, "assignment poll") <= #faults)
  return dash, agent, work
end

describe("the agent against a misbehaving dashboard", function()
  before_each(function()
    procs, dirs = {}, {}
  end)

  -- Stop what the case started (the agent first). Each process must have
  -- exited cleanly, with code 0: a crash, or a sanitizer's report in an
  -- ASan build, shows up here with the end of its log.
  after_each(function()
    local bad = {}
    for i = #procs, 1, -1 do
      local p = procs[i].proc
      local code, sig
      if p:running() then
        code, sig = p:terminate(5)
      else
        code, sig = p:wait()
      end
      if code ~= 0 then
        local log = host.fs.read(procs[i].log) or ""
        bad[#bad + 1] = string.format("pid %d ended with code %s, signal %s:\n%s",
          p.pid, tostring(code), tostring(sig), log:sub(-3000))
      end
    end
    for _, d in ipairs(dirs) do H.rm_rf(d) end
    assert(#bad == 0, table.concat(bad, "\n"))
  end)

  describe("assignment poll", function()
    it("gets past a 500 with a JSON error and a 404 without JSON", function()
      survives_poll_faults({ { mode = "status", status = 500 },
        { mode = "status", status = 404, body = "Not Found\n" } }, "st-1")
    end)

    it("gets past a connection reset with no reply and a reply dropped mid-body",
      function()
        survives_poll_faults({ { mode = "reset" }, { mode = "truncate" } }, "cut-1")
      end)

    it("treats an HTML error page with status 200 and invalid JSON as failed polls",
      function()
        survives_poll_faults({ { mode = "html200" }, { mode = "bad_json" } }, "html-1")
      end)

    it("treats a JSON array, a number and null as failed polls", function()
      survives_poll_faults({ { mode = "json_array" }, { mode = "json_number" },
        { mode = "json_null" } }, "shape-1")
    end)

    it("keeps beating while a poll hangs past its request timeout, then polls again",
      function()
        local dash = dashboard()
        local work = work_dir()
        fail(dash, { mode = "hang", seconds = 25, path = "^/api/assignment$" })
        local agent = agent_for(dash, work)
        assert(wait_faulted(dash, "^/api/assignment$", 1), "the poll never came")
        local hung_at = calls(dash, "^/api/assignment$", "hang")[1].at
        -- the agent gives up after its request timeout (15 s) and polls again
        local next_poll = cluster.wait_until(function()
          return calls(dash, "^/api/assignment$", false)[1]
        end, 35, 0.25)
        assert(next_poll, "no poll after the hung one")
        clear(dash) -- ends the hanging reply
        assert.is_true(next_poll.at - hung_at >= 14,
          "polled again after " .. (next_poll.at - hung_at) .. " s")
        local beats = heartbeats_between(dash, hung_at, next_poll.at)
        assert.is_true(#beats >= 15, #beats .. " heartbeats during the hang")
        assert.is_true(max_gap(beats) < 3,
          "longest gap between heartbeats: " .. max_gap(beats))
        assert.equals(1, warns(agent, "assignment poll"))
        assert.equals(0, warns(agent, "heartbeat"))
        assert_healthy(agent, dash)
      end)

    it("waits the Retry-After seconds of a 429 before polling again", function()
      local dash = dashboard()
      local work = work_dir()
      local agent = agent_for(dash, work)
      assert(cluster.wait_until(function()
        return #calls(dash, "^/api/assignment$") >= 2
      end, 10), "no polls")
      fail(dash, { status = 429, retry_after = "2", path = "^/api/assignment$" })
      assert(wait_faulted(dash, "^/api/assignment$", 1), "the 429 was not served")
      local refused = calls(dash, "^/api/assignment$", "status")[1]
      local after = cluster.wait_until(function()
        for _, r in ipairs(calls(dash, "^/api/assignment$", false)) do
          if r.at > refused.at then return r end
        end
      end, 15)
      assert(after, "no poll after the 429")
      local gap = after.at - refused.at
      assert.is_true(gap >= 1.9, "polled again after " .. gap .. " s")
      assert.is_true(gap < 10, "waited " .. gap .. " s")
      assert.is_true(#heartbeats_between(dash, refused.at, after.at) >= 3,
        "the heartbeat waited too")
      assert_healthy(agent, dash)
    end)

    it("waits until the HTTP date in the Retry-After of a 503 before polling again",
      function()
        local dash = dashboard()
        local work = work_dir()
        local agent = agent_for(dash, work)
        assert(cluster.wait_until(function()
          return #calls(dash, "^/api/assignment$") >= 2
        end, 10), "no polls")
        local until_t = math.floor(host.time.now()) + 4
        fail(dash, { status = 503, retry_after = http_date(until_t),
          path = "^/api/assignment$" })
        assert(wait_faulted(dash, "^/api/assignment$", 1), "the 503 was not served")
        local refused = calls(dash, "^/api/assignment$", "status")[1]
        local after = cluster.wait_until(function()
          for _, r in ipairs(calls(dash, "^/api/assignment$", false)) do
            if r.at > refused.at then return r end
          end
        end, 20)
        assert(after, "no poll after the 503")
        assert.is_true(until_t - refused.at > 2, "the test itself was too slow")
        assert.is_true(after.at >= until_t - 0.3, string.format(
          "polled again %.2f s before the Retry-After date", until_t - after.at))
        assert.is_true(after.at < until_t + 8)
        assert_healthy(agent, dash)
      end)

    it("takes {\"assigned\": \"yes\"} as no assignment, and reports an assignment " ..
      "that is null or has no valid id as fatal_error", function()
      local dash = dashboard()
      local work = work_dir()
      fail(dash, {
        { mode = "wrong_types", path = "^/api/assignment$", count = 3 }, -- "yes"
        { mode = "wrong_types", path = "^/api/assignment$",
          body = '{"assigned": true, "assignment": null}' },
        { mode = "wrong_types", path = "^/api/assignment$",
          body = '{"assigned": true, "assignment": {"id": 7, "split_index": 0,' ..
            ' "config_url": "http://127.0.0.1:1/c.json"}}' },
      })
      local agent = agent_for(dash, work)
      local r = reports(dash, 2)
      assert.equals(5, faulted(dash, "^/api/assignment$"))
      assert.equals(2, #r, "\"yes\" was taken for an assignment")
      for i = 1, 2 do
        assert.equals("fatal_error", r[i].type)
        assert.equals(cjson.null, r[i].assignment_id)
        assert.matches("invalid assignment", r[i].message)
      end
      -- and it goes on to a good one
      cluster.queue(dash, STUDY, { id = "good" })
      r = reports(dash, 3)
      assert.equals("finished", r[3].type)
      assert.equals("good", r[3].assignment_id)
      assert_healthy(agent, dash)
    end)

    it("rejects split_index \"../x\" and other bad fields with fatal_error, " ..
      "writing nothing outside its work dir", function()
        local dash = dashboard()
        local work, base = work_dir()
        local bad = {
          { id = "dots", split_index = "../x" },
          { id = "negative", split_index = -1 },
          { id = "fraction", split_index = 1.5 },
          { id = "file-url", split_index = 0, config_url = "file:///etc/passwd" },
          { id = "traversal-url", split_index = 0, config_url = "../../etc/passwd" },
        }
        for _, a in ipairs(bad) do cluster.queue(dash, STUDY, a) end
        local agent = agent_for(dash, work)
        local r = reports(dash, #bad)
        for i, a in ipairs(bad) do
          assert.equals("fatal_error", r[i].type, a.id)
          assert.equals(a.id, r[i].assignment_id)
          assert.matches(i <= 3 and "split_index" or "config_url", r[i].message)
        end
        assert.same({ "work" }, host.fs.list(base))
        for _, path in ipairs(files_under(work)) do
          assert.is_nil(path:match("assigned_config_"), path)
          assert.is_nil(path:match("study_"), path)
          assert.is_nil((host.fs.read(path) or ""):match("root:"), path)
        end
        assert.equals(0, #calls(dash, "^/configs/"))
        assert_healthy(agent, dash)
      end)

    it("refuses replies of hundreds of megabytes (too_large) and its memory stays bounded",
      function()
        local dash = dashboard()
        local work = work_dir()
        local agent = agent_for(dash, work)
        assert(cluster.wait_until(function()
          return #events(dash).heartbeats >= 3
        end, 10), "no heartbeats")
        local before = rss_kib(agent.proc.pid)
        fail(dash, {
          { mode = "huge", bytes = 300 * 1000 * 1000, path = "^/api/assignment$", count = 2 },
          { mode = "huge", bytes = 300 * 1000 * 1000, path = "^/api/heartbeat$", count = 2 },
          { mode = "huge", bytes = 200 * 1000 * 1000, path = "^/configs/", count = 2 },
        })
        cluster.queue(dash, { duration_s = 0.1, steps = 1, note = "the real one" },
          { id = "big", split_index = 3 })
        local r = reports(dash, 1, 60)
        assert.equals("finished", r[1].type)
        assert.equals(6, faulted(dash, "."))
        assert.matches('"the real one"', assert(host.fs.read(host.fs.join(work,
          "configs", "assigned_config_3.json"))))
        local log = log_of(agent)
        assert.matches("assignment poll failed: [^\n]*larger than", log)
        assert.matches("config download failed: [^\n]*larger than", log)
        assert_healthy(agent, dash)
        local after = rss_kib(agent.proc.pid)
        if before and after then
          assert.is_true(after - before < 20 * 1024, string.format(
            "the agent grew from %d to %d KiB", before, after))
          -- the dashboard streamed the bodies without building them
          assert.is_true(rss_kib(dash.proc.pid) < 150 * 1024)
        end
      end)

    it("does not follow redirects (to file:// or another host) and never sends " ..
      "the token elsewhere", function()
        local dash = dashboard()
        local other = dashboard() -- "another host"
        local work = work_dir()
        fail(dash, {
          { mode = "redirect", location = "file:///etc/passwd",
            path = "^/api/assignment$" },
          { mode = "redirect", status = 307, path = "^/api/assignment$",
            location = other.url .. "/api/assignment?machineId=spec-worker" },
          { mode = "redirect", status = 308, path = "^/api/heartbeat$", count = 2,
            location = other.url .. "/api/heartbeat" },
          { mode = "redirect", path = "^/configs/",
            location = other.url .. "/configs/moved.json" },
        })
        cluster.queue(dash, STUDY, { id = "redir", split_index = 0 })
        local agent = agent_for(dash, work, { GOLIAT_API_TOKEN = TOKEN })
        local r = reports(dash, 1)
        assert.equals("finished", r[1].type)
        assert.equals(5, faulted(dash, "."))
        assert.same({}, events(other).requests)
        -- the token went with the agent's API calls, not with the config
        -- download (the study's own GUI updates carry none either)
        for _, c in ipairs(calls(dash, "^/api/[ah]")) do
          assert.is_true(c.auth, c.path)
        end
        assert.is_false(calls(dash, "^/configs/")[1].auth)
        for _, path in ipairs(files_under(work)) do
          assert.is_nil((host.fs.read(path) or ""):match("root:"), path)
        end
        assert_healthy(agent, dash)
      end)

    it("sends the token to the dashboard only, not to a config_url on another host",
      function()
        local dash = dashboard()
        local other = dashboard() -- blob storage on another host
        local work = work_dir()
        cluster.queue(other, STUDY, { id = "ext" })
        cluster.queue(dash, STUDY, { id = "ext", split_index = 1,
          config_url = other.url .. "/configs/ext.json" })
        local agent = agent_for(dash, work, { GOLIAT_API_TOKEN = TOKEN })
        local r = reports(dash, 1)
        assert.equals("finished", r[1].type)
        local got = events(other).requests
        assert.equals(1, #got)
        assert.equals("/configs/ext.json", got[1].path)
        assert.is_false(got[1].auth)
        assert.is_true(calls(dash, "^/api/heartbeat$")[1].auth)
        assert_healthy(agent, dash)
      end)
  end)

  describe("config download", function()
    local function survives_download_faults(faults, id)
      local dash = dashboard()
      local work = work_dir()
      for _, f in ipairs(faults) do f.path = "^/configs/" end
      fail(dash, faults)
      local config = { duration_s = 0.1, steps = 1, marker = id }
      cluster.queue(dash, config, { id = id, split_index = 2 })
      local agent = agent_for(dash, work)
      local r = reports(dash, 1, 40)
      assert.equals(#faults, faulted(dash, "^/configs/"))
      assert.equals("finished", r[1].type)
      assert.equals(id, r[1].assignment_id)
      -- the study got the whole config, and no partial file is left
      local text = assert(host.fs.read(host.fs.join(work, "configs", "assigned_config_2.json")))
      assert.same(config, cjson.decode(text))
      for _, path in ipairs(files_under(work)) do
        assert.is_nil(path:match("%.tmp"), path)
      end
      assert.is_true(warns(agent, "config download") >= 1)
      assert.is_true(warns(agent, "config download") <= #faults)
      assert_healthy(agent, dash)
    end

    it("is retried after a 500 and a reset, and the study gets the whole config",
      function()
        survives_download_faults({ { mode = "status", status = 500 },
          { mode = "reset" } }, "dl-1")
      end)

    it("is retried after a body cut short and an HTML page with status 200", function()
      survives_download_faults({ { mode = "truncate", body = '{"duration_s": 0.1,' ..
        ' "steps": 1, "marker": "partial"}' }, { mode = "html200" } }, "dl-2")
    end)
  end)

  describe("report", function()
    it("is retried after a 500 and a reset, and arrives exactly once", function()
      local dash = dashboard()
      local work = work_dir()
      -- only the agent's report (the study's own updates carry no assignment_id)
      fail(dash, {
        { status = 500, path = "^/api/gui%-update$", match = "assignment_id" },
        { mode = "reset", path = "^/api/gui%-update$", match = "assignment_id" },
      })
      cluster.queue(dash, { duration_s = 0.1, steps = 1, exit_code = 3 }, { id = "rep-1" })
      local agent = agent_for(dash, work)
      local r = reports(dash, 1)
      assert.equals(2, faulted(dash, "^/api/gui%-update$"))
      assert.equals("fatal_error", r[1].type)
      assert.equals("rep-1", r[1].assignment_id)
      assert.equals(3, r[1].exit_code)
      host.time.sleep(1)
      assert.equals(1, #cluster.reports(dash), "the report arrived twice")
      assert.is_true(warns(agent, "report") <= 2)
      assert_healthy(agent, dash)
    end)
  end)

  describe("outages", function()
    it("keep the agent running through a dashboard that is down, logging each " ..
      "step's failure a few times rather than on every retry", function()
        local dash = dashboard()
        local work = work_dir()
        local agent = agent_for(dash, work, { GOLIAT_LOG_LEVEL = "debug" })
        assert(cluster.wait_until(function()
          return #events(dash).heartbeats >= 2
        end, 10), "no heartbeats")
        cluster.stop(dash.proc) -- connection refused from now on
        host.time.sleep(4)
        assert.is_true(agent.proc:running(), "the agent stopped")
        local back_at = host.time.now()
        dash = dashboard { "--port", tostring(dash.port) }
        assert_healthy(agent, dash)
        -- the poll's backoff may have grown to its cap (60 s) meanwhile
        assert(cluster.wait_until(function()
          return #calls(dash, "^/api/assignment$") > 0
        end, 90), "polls did not resume")
        assert.is_true(#events(dash).heartbeats > 0)
        assert.is_true(events(dash).heartbeats[1].at > back_at)
        local log = log_of(agent)
        local tries = select(2, log:gsub("heartbeat failed", ""))
        assert.is_true(tries >= 3, "only " .. tries .. " heartbeat tries logged")
        assert.is_true(warns(agent, "heartbeat") <= 3)
        assert.is_true(warns(agent, "assignment poll") <= 3)
        assert.matches("heartbeat works again", log)
      end)

    it("log resets of every call a few times, not on each of many retries", function()
      local dash = dashboard()
      local work = work_dir()
      local agent = agent_for(dash, work)
      assert(cluster.wait_until(function()
        return #events(dash).heartbeats >= 2
      end, 10), "no heartbeats")
      fail(dash, { mode = "reset", count = -1 })
      assert(cluster.wait_until(function()
        return #calls(dash, "^/api/heartbeat$", "reset") >= 4 and
          #calls(dash, "^/api/assignment$", "reset") >= 4
      end, 20), "fewer retries than expected")
      local cleared_at = host.time.now()
      clear(dash)
      assert.is_true(beat_after(dash, cleared_at, 25), "heartbeats did not resume")
      assert(cluster.wait_until(function()
        for _, c in ipairs(calls(dash, "^/api/assignment$", false)) do
          if c.at > cleared_at then return true end
        end
      end, 70), "polls did not resume")
      assert.is_true(agent.proc:running())
      -- at least 4 failures each; a line again only if the error text changed
      assert.is_true(warns(agent, "heartbeat") <= 3)
      assert.is_true(warns(agent, "assignment poll") <= 3)
    end)

    it("during a study and its report: the report arrives, once, when the " ..
      "dashboard is back", function()
        local dash = dashboard()
        local work = work_dir()
        local pid_file = host.fs.join(work, "study.pid")
        cluster.queue(dash, { duration_s = 2, steps = 2, exit_code = 3,
          pid_file = pid_file }, { id = "outage-1" })
        local agent = agent_for(dash, work)
        assert(cluster.wait_until(function()
          return host.fs.exists(pid_file)
        end, 20), "the study did not start")
        cluster.stop(dash.proc)
        host.time.sleep(3) -- the study ends; its report cannot be delivered
        assert.is_true(agent.proc:running(), "the agent stopped")
        dash = dashboard { "--port", tostring(dash.port) }
        local r = reports(dash, 1, 40)
        assert.equals("fatal_error", r[1].type)
        assert.equals("outage-1", r[1].assignment_id)
        assert.equals(3, r[1].exit_code)
        host.time.sleep(1.5)
        assert.equals(1, #cluster.reports(dash), "more than one report arrived")
        assert_healthy(agent, dash)
      end)
  end)

  describe("the API token", function()
    it("never appears in the log, the work dir or what the dashboard received, " ..
      "at debug level through many failures", function()
        local dash = dashboard()
        local other = dashboard()
        local work = work_dir()
        local api = "^/api/[ah]" -- heartbeats and polls
        fail(dash, {
          { status = 401, path = api }, { status = 403, body = "forbidden\n", path = api },
          { mode = "reset", path = api }, { mode = "truncate", path = api },
          { mode = "redirect", location = other.url .. "/api/heartbeat?t=1", path = api },
          { mode = "bad_json", path = api }, { mode = "html200", path = api },
          { mode = "huge", bytes = 5 * MiB, path = api },
          { status = 500, path = "^/configs/" },
          { status = 500, path = "^/api/gui%-update$", match = "assignment_id" },
        })
        cluster.queue(dash, { duration_s = 0.1, steps = 1, exit_code = 3 },
          { id = "tok-1", split_index = 0 })
        cluster.queue(dash, STUDY, { id = "tok-2", split_index = "../x" })
        local agent = agent_for(dash, work,
          { GOLIAT_API_TOKEN = TOKEN, GOLIAT_LOG_LEVEL = "debug" })
        local r = reports(dash, 2, 60)
        assert(wait_faulted(dash, ".", 10, 30), "not every fault was served")
        assert.same({ "fatal_error", "fatal_error" }, { r[1].type, r[2].type })
        assert_healthy(agent, dash)
        cluster.stop(agent.proc)
        local log = log_of(agent)
        assert.matches("debug", log) -- debug lines were written
        assert.is_nil(log:find(TOKEN, 1, true), "the token is in the agent's log")
        for _, path in ipairs(files_under(work)) do
          assert.is_nil((host.fs.read(path) or ""):find(TOKEN, 1, true),
            "the token is in " .. path)
        end
        local ev = events(dash)
        local received = cjson.encode({ ev.heartbeats, ev.gui_updates, ev.handed })
        assert.is_nil(received:find(TOKEN, 1, true), "the dashboard got the token")
        assert.same({}, events(other).requests)
      end)

    -- a study that prints its environment must not print the token
    it("is not handed on to the study, whose output lands in the work dir", function()
      if H.windows then
        pending("needs sh")
        return
      end
      local dash = dashboard()
      local work = work_dir()
      cluster.queue(dash, STUDY, { id = "env-1", split_index = 0 })
      -- a study that prints its environment (as a crash report might)
      local agent = agent_for(dash, work, { GOLIAT_API_TOKEN = TOKEN,
        GOLIAT_STUDY_COMMAND = cjson.encode({ "sh", "-c", "env", "study" }) })
      local r = reports(dash, 1)
      assert.equals("finished", r[1].type)
      local out = assert(host.fs.read(host.fs.join(work, "study_0.log")))
      assert.matches("GOLIAT_ASSIGNMENT_ID=env%-1", out) -- the study did print
      assert.is_nil(out:find(TOKEN, 1, true), "the study got the API token")
      assert_healthy(agent, dash)
    end)
  end)
end)
