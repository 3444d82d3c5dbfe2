-- Integration specs of the study's local gateway (GOLIAT_GATEWAY=on): the
-- real agent, the example dashboard and the GOLIAT stand-in sending like
-- GOLIAT's web bridge (examples/goliat, "bridge": true), as processes on
-- 127.0.0.1. The stand-in records every message it sent and the answer it
-- got; whatever the gateway answered 200 must reach the dashboard once, in
-- order, whatever happened in between.
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"
local H = require "support.helpers"

local queue, reports_at_least = cluster.queue, cluster.reports_at_least

-- The stand-in's record: { {kind, status, lines | value | bytes}, ... }.
local function record_of(path)
  local out = {}
  for line in (host.fs.read(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = cjson.decode(line)
  end
  return out
end

-- Log lines the gateway took (answered 200), in the order sent.
local function lines_taken(rec)
  local out = {}
  for _, r in ipairs(rec) do
    if r.kind == "log_batch" and r.status == 200 then
      for _, l in ipairs(r.lines) do out[#out + 1] = l end
    end
  end
  return out
end

-- Log lines the dashboard received, in the order received, and the study's
-- own messages of other types.
local function received(ev)
  local lines, others = {}, {}
  for _, u in ipairs(ev.gui_updates) do
    local m = u.message
    if m.type == "log_batch" then
      for _, l in ipairs(m.logs) do lines[#lines + 1] = l.message end
    elseif m.assignment_id == nil then
      others[#others + 1] = m
    end
  end
  return lines, others
end

-- An outage of the study's calls (its gui updates and uploads) on the
-- example dashboard: connections reset until cleared.
local function outage(dash)
  cluster.post_json(dash.url .. "/dev/fail", {
    { mode = "reset", path = "^/api/gui%-update", count = -1 },
    { mode = "reset", path = "/results$", count = -1 },
  })
end

describe("the gateway with real processes", function()
  local t = cluster.fixture("work") -- t.agent is stopped after each test
  local dash, work, recorded
  before_each(function()
    t.setup()
    dash, work, recorded = t.dash, t.work, t.recorded
  end)
  after_each(t.teardown)

  local function env(extra)
    local e = { GOLIAT_GATEWAY = "on", GOLIAT_GATEWAY_RATE = "50" }
    for k, v in pairs(extra or {}) do e[k] = v end
    return cluster.agent_env(dash.url, work, e)
  end

  -- the agent's state file, or nil (none, or caught mid-write)
  local function state()
    local text = host.fs.read(host.fs.join(work, "agent_state.json"))
    local ok, v = pcall(cjson.decode, text or "")
    return ok and type(v) == "table" and v or nil
  end

  it("delivers through a dashboard outage everything the study was told " ..
    "was taken, once and in order, the upload (3 MB: through a file, not " ..
    "memory) byte for byte, and the true report last", function()
      local rec = host.fs.join(work, "record.jsonl")
      queue(dash, { bridge = true, duration_s = 5, log_lines = 300,
        steps = 100, results_bytes = 3000000, record_file = rec },
        { id = "gw-1" })
      t.agent = cluster.start_agent(env(), work)
      assert(cluster.wait_until(function()
        return state() and state().pid
      end, 30), "the study did not start")
      host.time.sleep(1)
      outage(dash)
      host.time.sleep(3)
      local during = #cluster.events(dash).gui_updates
      host.time.sleep(2.5) -- the study ends (and uploads) during the outage
      assert.equals(during, #cluster.events(dash).gui_updates)
      cluster.post_json(dash.url .. "/dev/clear", {})
      local reports = assert(reports_at_least(dash, 1, 60), "no report")
      assert.equals("finished", reports[1].type)
      assert.equals("gw-1", reports[1].assignment_id)

      local sent = record_of(rec)
      local taken = lines_taken(sent)
      assert.equals(300, #taken) -- the gateway took every line at once
      local ev = cluster.events(dash)
      local lines, others = received(ev)
      assert.same(taken, lines)
      -- the study's own finished was held; its progress went (the newest)
      for _, m in ipairs(others) do assert.not_equals("finished", m.type) end
      local last_progress
      for _, m in ipairs(others) do
        if m.type == "overall_progress" then last_progress = m.current end
      end
      assert.equals(100, last_progress)
      -- the report came after every message of the study
      local last = ev.gui_updates[#ev.gui_updates].message
      assert.equals("gw-1", last.assignment_id)
      -- the upload arrived once, byte for byte
      assert.equals(1, #ev.results)
      local res = host.http.request { url = dash.url .. "/dev/results/1" }
      assert.equals(host.fs.read(rec .. ".results"), res.body)
      assert.matches("^multipart/form%-data; boundary=", ev.results[1]
        .content_type)
      -- and the study was answered at once all along: nothing failed
      for _, r in ipairs(sent) do assert.equals(200, r.status) end
    end)

  it("reports a study that says finished and exits 3 as fatal_error, and " ..
    "the dashboard never sees that finished", function()
      queue(dash, { bridge = true, duration_s = 0.5, log_lines = 10,
        steps = 5, exit_code = 3, drop_queue_end = true }, { id = "gw-3" })
      t.agent = cluster.start_agent(env(), work)
      local m = assert(reports_at_least(dash, 1, 60), "no report")[1]
      assert.equals("fatal_error", m.type)
      assert.equals(3, m.exit_code)
      assert.equals("study exited with code 3, although the study reported " ..
        "it finished (Study finished with errors)", m.message)
      local _, others = received(cluster.events(dash))
      for _, o in ipairs(others) do assert.not_equals("finished", o.type) end
    end)

  it("reports the study's own fatal_error words, not the finished that " ..
    "GOLIAT's window sends after them", function()
      queue(dash, { bridge = true, duration_s = 0.5, log_lines = 10,
        steps = 5, exit_code = 3 }, { id = "gw-3b" })
      t.agent = cluster.start_agent(env(), work)
      local m = assert(reports_at_least(dash, 1, 60), "no report")[1]
      assert.equals("fatal_error", m.type)
      assert.equals("study exited with code 3: Process exited with code 3",
        m.message)
      local _, others = received(cluster.events(dash))
      for _, o in ipairs(others) do
        assert.not_equals("finished", o.type)
        assert.not_equals("fatal_error", o.type)
      end
    end)

  it("refuses a request from outside the study, without its secret",
    function()
      queue(dash, { bridge = true, duration_s = 4, log_lines = 5, steps = 2 },
        { id = "gw-s" })
      t.agent = cluster.start_agent(env(), work)
      local gw = assert(cluster.wait_until(function()
        return state() and state().gateway
      end, 30), "no gateway recorded")
      local base = "http://127.0.0.1:" .. math.tointeger(gw.port)
      for _, url in ipairs { base .. "/api/gui-update",
          base .. "/gw/" .. string.rep("0", 32) .. "/api/gui-update" } do
        local res = assert(host.http.request { url = url, method = "POST",
          headers = { ["Content-Type"] = "application/json" },
          body = cjson.encode { machineId = "intruder", message = {
            type = "status", message = "forged" } } })
        assert.equals(403, res.status)
      end
      assert(reports_at_least(dash, 1, 60), "no report")
      for _, u in ipairs(cluster.events(dash).gui_updates) do
        assert.not_equals("intruder", u.machineId)
      end
    end)

  it("survives a kill -9 of the agent: the restarted agent takes the study " ..
    "back on the same URL and delivers what it took, before and after, in " ..
    "order", function()
      local rec = host.fs.join(work, "record.jsonl")
      queue(dash, { bridge = true, duration_s = 8, log_lines = 400,
        steps = 80, record_file = rec }, { id = "gw-k" })
      t.agent = cluster.start_agent(env(), work)
      recorded[#recorded + 1] = t.agent.proc.pid
      local st = assert(cluster.wait_until(function()
        local s = state()
        return s and s.pid and s
      end, 30), "the study did not start")
      recorded[#recorded + 1] = math.tointeger(st.pid)
      outage(dash) -- so that messages wait in the queue when the agent dies
      host.time.sleep(2)
      H.run({ argv = { "kill", "-KILL", tostring(t.agent.proc.pid) } })
      t.agent.proc:wait()
      host.time.sleep(1)
      cluster.post_json(dash.url .. "/dev/clear", {})
      t.agent = cluster.start_agent(env(), work)
      recorded[#recorded + 1] = t.agent.proc.pid
      local reports = assert(reports_at_least(dash, 1, 60), "no report")
      assert.equals("finished", reports[1].type)
      assert.matches("taking back the running study", host.fs.read(t.agent.log))
      local sent = record_of(rec)
      -- while the agent was dead the study's calls failed (GOLIAT drops
      -- those); after the restart it reached the same URL again
      local first_lost, taken_after = nil, 0
      for i, r in ipairs(sent) do
        if r.status ~= 200 and not first_lost then first_lost = i end
        if first_lost and r.status == 200 then taken_after = taken_after + 1 end
      end
      assert.is_truthy(first_lost, "the agent's death went unnoticed")
      assert.is_true(taken_after > 0, "nothing was taken after the restart")
      local taken = lines_taken(sent)
      assert.is_true(#taken > 100, "lines taken: " .. #taken)
      local lines = received(cluster.events(dash))
      assert.same(taken, lines)
    end)
end)
