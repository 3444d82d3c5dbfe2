-- Policy specs of the study's local gateway (GOLIAT_GATEWAY=on,
-- scripts/lib/gateway.lua): the real agent on the fake host. A "study"
-- here posts through the gateway's handler (Fake:send_to) while the fake
-- dashboard is up or down; what the dashboard received is then checked.
local agent = require "agent"
local cjson = require "cjson"

local P = require "support.policy"
-- scripts/ as the fake machine sees it (run from a checkout, or by
-- `agent.lua --test` from where the agent is installed)
local SCRIPTS = require("lib.settings").scripts_dir(
  require("support.fake_host").new {}.host)
local BLOB, TOKEN = P.BLOB, P.TOKEN

-- A fake with the gateway on, a dashboard whose gui-update (and results)
-- calls fail while `down()` says so, and one assignment whose study runs
-- for `runs` seconds and exits with `code`.
local function setup(opts)
  opts = opts or {}
  local env = { GOLIAT_GATEWAY = "on", GOLIAT_API_TOKEN = TOKEN }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local f = P.offline_fake(env)
  local state = { down = false, status = nil }
  P.dashboard(f, { queue = { P.assignment() },
    configs = { [BLOB .. "/c3.json"] = "{}" },
    override = function(req, path)
      if path:match("^/api/gui%-update") or path:match("/results$") or
          path:match("^/api/gui%-screenshots") then
        if state.down then return nil, "connection refused", "connect" end
        if state.status then
          return P.json(state.status, { error = "no" }, state.headers)
        end
        if path:match("/results$") or path:match("screenshots") then
          return P.json(200, { success = true })
        end
      end
      if opts.override then return opts.override(req, path) end
    end })
  f.spawn_handler = function(o)
    if o.argv[1]:match("nvidia") then return nil, "not found", "ENOENT" end
    return { exit_code = opts.code or 0, after = opts.runs or 600 }
  end
  return f, state
end

-- The study's spawn (the wrapper), once it has started.
local function study_of(f)
  assert(f:run_until(function()
    for _, o in ipairs(f.spawned) do
      if o.argv[2] and o.argv[2]:match("study_wrapper") then return true end
    end
  end, 120), "the study never started")
  for _, o in ipairs(f.spawned) do
    if o.argv[2] and o.argv[2]:match("study_wrapper") then return o end
  end
end

local function gui(msg)
  return cjson.encode { machineId = "203.0.113.9", message = msg,
    timestamp = 1 }
end

local JSON = { ["content-type"] = "application/json" }

-- The study posts one GUI message through the gateway; returns the reply.
local function post(f, url, message)
  return f:send_to(url, "POST", "/api/gui-update", gui(message), JSON)
end

-- The study's gui-update messages the dashboard took (not the agent's own
-- report, which carries an assignment_id), in order.
local function delivered(f)
  local out = {}
  for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
    local doc = cjson.decode(r.body)
    if r.delivered and doc.message.assignment_id == nil then
      out[#out + 1] = doc.message
    end
  end
  return out
end

-- The bodies kept in gateway/rejected/, in name order.
local function rejected(f)
  local out = {}
  local dir = "/work/agent/gateway/rejected/"
  for _, name in ipairs(f.host.fs.list(dir)) do
    if name:match("%.body$") then out[#out + 1] = f.files[dir .. name] end
  end
  return out
end

-- A dashboard override answering `status` to any request whose body holds
-- `marker` (a message the dashboard refuses, or fails on).
local function refusing(status, marker)
  return function(req)
    if req.body and req.body:find(marker, 1, true) then
      return P.json(status, { error = "no: " .. marker })
    end
  end
end

local function report(f)
  for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
    local doc = cjson.decode(r.body)
    if r.delivered and doc.message.assignment_id ~= nil then
      return doc.message, r
    end
  end
end

describe("the gateway (GOLIAT_GATEWAY=on)", function()
  it("is on by default; on and off are read, anything else is refused " ..
    "naming the variable", function()
      local s = assert(agent.load_settings(P.new_fake().host))
      assert.is_true(s.gateway)
      s = assert(agent.load_settings(P.new_fake { GOLIAT_GATEWAY = "off" }.host))
      assert.is_false(s.gateway)
      s = assert(agent.load_settings(P.new_fake().host))
      assert.equals(256 * 1024 * 1024, s.gateway_max_bytes)
      assert.equals(10, s.gateway_rate)
      s = assert(agent.load_settings(P.new_fake { GOLIAT_GATEWAY = "on",
        GOLIAT_GATEWAY_MAX_BYTES = "64M", GOLIAT_GATEWAY_RATE = "2" }.host))
      assert.is_true(s.gateway)
      assert.equals(64 * 1024 * 1024, s.gateway_max_bytes)
      assert.equals(2, s.gateway_rate)
      local _, err = agent.load_settings(P.new_fake {
        GOLIAT_GATEWAY = "maybe" }.host)
      assert.equals("GOLIAT_GATEWAY must be on or off, got 'maybe'", err)
      _, err = agent.load_settings(P.new_fake {
        GOLIAT_GATEWAY_MAX_BYTES = "10k" }.host)
      assert.matches("GOLIAT_GATEWAY_MAX_BYTES must be a number of bytes", err)
    end)

  it("gives the study a loopback URL with a secret of its own, never the " ..
    "token, and refuses a request without the secret (broken if another " ..
    "local user could post as the study)", function()
      local f = setup()
      P.start(f)
      local env = study_of(f).env
      local url = env.GOLIAT_MONITORING_URL
      assert.matches("^http://127%.0%.0%.1:%d+/gw/" .. string.rep("%x", 32) ..
        "$", url)
      assert.equals("", env.GOLIAT_API_TOKEN)
      assert.equals("127.0.0.1", f.servers[1].opts.host)
      local base = url:match("^(http://[^/]+)")
      local before = #f:requests_to("/api/gui%-update$")
      for _, wrong in ipairs { base, base .. "/gw/" .. string.rep("0", 32),
          url:sub(1, -2) } do
        local res = post(f, wrong, { type = "status", message = "forged" })
        assert.equals(403, res.status)
      end
      local res = post(f, url, { type = "status", message = "mine" })
      assert.equals(200, res.status)
      f:run_for(5)
      local got = f:requests_to("/api/gui%-update$")
      assert.equals(before + 1, #got)
      assert.equals("mine", cjson.decode(got[#got].body).message.message)
      -- the dashboard's token is added by the agent
      assert.equals("Bearer " .. TOKEN, got[#got].headers.Authorization)
    end)

  it("answers the study at once while the dashboard is down, then delivers " ..
    "every message once, in order, when it is back", function()
      local f, dash = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      for i = 1, 30 do
        local res = post(f, url, { type = "status", message = "line " .. i, log_type = "info" })
        assert.equals(200, res.status)
        f:run_for(1)
      end
      assert.same({}, delivered(f))
      dash.down = false
      f:run_for(120)
      local got = delivered(f)
      assert.equals(30, #got)
      for i, m in ipairs(got) do assert.equals("line " .. i, m.message) end
    end)

  it("sends only the newest progress of each type that waited through an " ..
    "outage, after the logs sent before it (broken if 50 Hz progress " ..
    "piles up)", function()
      local f, dash = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      post(f, url, { type = "status",
        message = "before" })
      for i = 1, 200 do
        post(f, url, {
          type = "overall_progress", current = i, total = 200 })
        post(f, url, {
          type = "stage_progress", name = "run", current = i, total = 200 })
      end
      post(f, url, { type = "status",
        message = "after" })
      dash.down = false
      f:run_for(60)
      local got = delivered(f)
      assert.equals(4, #got)
      assert.equals("before", got[1].message)
      assert.same({ "overall_progress", 200 }, { got[2].type, got[2].current })
      assert.same({ "stage_progress", 200 }, { got[3].type, got[3].current })
      assert.equals("after", got[4].message)
    end)

  it("keeps progress moving while log lines come faster than the rate " ..
    "(broken if the newest progress goes to the back of the queue each " ..
    "time: behind a steady flow of logs it never comes first)", function()
      local f = setup { env = { GOLIAT_GATEWAY_RATE = "2" } }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      local t0 = f.now
      for i = 1, 400 do -- 20 s: a log batch every 0.05 s, progress with it
        post(f, url, { type = "log_batch",
          logs = { { message = "l" .. i, log_type = "info" } }, sequence = i })
        post(f, url, {
          type = "overall_progress", current = i, total = 400 })
        f:run_for(0.05)
      end
      local progress = 0
      for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
        if r.delivered and r.at < t0 + 20 and
            cjson.decode(r.body).message.type == "overall_progress" then
          progress = progress + 1
        end
      end
      assert.is_true(progress >= 10, "progress sent during the flow: " ..
        progress)
    end)

  it("passes a GET through at once: the dashboard's answer, the agent's " ..
    "token, the query kept, nothing queued", function()
      local f = setup { override = function(_, path)
        if path == "/api/workers?active=1" then
          return P.json(200, { workers = { "w1" } })
        end
      end }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      local res = f:send_to(url, "GET", "/api/workers?active=1")
      assert.equals(200, res.status)
      assert.same({ workers = { "w1" } }, cjson.decode(res.body))
      local got = f:requests_to("/api/workers")
      assert.equals(1, #got)
      assert.equals("Bearer " .. TOKEN, got[1].headers.Authorization)
      assert.is_nil(f.files["/work/agent/gateway/000000000001.json"])
    end)

  it("refuses at once what must not be forwarded: a gui-update that is " ..
    "not a JSON message with a type (400), a path that could leave /api/ " ..
    "(400), a method other than GET, HEAD, POST (405); none is queued",
    function()
      local f = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      assert.equals(400, f:send_to(url, "POST", "/api/gui-update",
        '{"machineId": "x", "message": {"type": "status"', JSON).status)
      assert.equals(400, f:send_to(url, "POST", "/api/gui-update",
        cjson.encode { machineId = "x", message = "text" }, JSON).status)
      for _, path in ipairs { "/api/../admin/wipe", "/api/x/../../admin",
          "/api/%2e%2e/admin", "/api//x", "/api/a%2Fb", "/api/.\\x",
          "/api/./x" } do
        assert.equals(400, f:send_to(url, "POST", path, "{}", JSON).status,
          path)
      end
      assert.equals(405, f:send_to(url, "DELETE", "/api/workers/w-1", "",
        JSON).status)
      assert.equals(405, f:send_to(url, "PUT", "/api/workers/w-1", "{}",
        JSON).status)
      f:run_for(30)
      for _, name in ipairs(f.host.fs.list("/work/agent/gateway")) do
        assert.is_nil(name:match("^%d+%.json$"), "queued: " .. name)
      end
      for _, r in ipairs(f.requests) do
        assert.is_nil(r.url:find("admin", 1, true))
        assert.is_nil(r.url:find("workers", 1, true))
        assert.not_equals("DELETE", r.method)
      end
      assert.same({}, delivered(f))
    end)

  it("sends the log batches merged with a refused one again, one by one: " ..
    "only the refused one is kept aside", function()
      local f = setup { override = refusing(400, "poison") }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      for i, text in ipairs { "a", "poison", "c" } do
        post(f, url, { type = "log_batch", logs = { { message = text } },
          sequence = i })
      end
      f:run_for(60)
      local lines = {}
      for _, m in ipairs(delivered(f)) do
        for _, l in ipairs(m.logs) do lines[#lines + 1] = l.message end
      end
      assert.same({ "a", "c" }, lines)
      local kept = rejected(f)
      assert.equals(1, #kept)
      assert.matches("poison", kept[1])
    end)

  it("keeps a study's message refused with 401 (a token rotation) and " ..
    "sends it once the token works again (broken if 401 sets it aside)",
    function()
      local f = setup()
      local inner = f.http_handler
      f.http_handler = function(req, ff)
        if f.now < 120 and req.url:match("/api/gui%-update$") then
          return P.json(401, { error = "token rotated" })
        end
        return inner(req, ff)
      end
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      post(f, url, { type = "status", message = "during the rotation" })
      f:run_for(300)
      assert.equals(0, #rejected(f))
      local got = delivered(f)
      assert.equals(1, #got)
      assert.equals("during the rotation", got[1].message)
    end)

  it("sets aside a study's message refused with 403 while the heartbeats " ..
    "go through, after gateway_auth_patience (a WAF refusing one message " ..
    "must not hold the report and all work behind it for ever)", function()
      local f = setup { override = refusing(403, "<script>") }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      post(f, url, { type = "log_batch", logs = { { message = "<script>" } },
        sequence = 1 })
      post(f, url, { type = "status", message = "after" })
      f:run_for(300)
      assert.equals(0, #rejected(f), "set aside before the patience ran out")
      f:run_for(900)
      assert.equals(1, #rejected(f))
      assert.matches("<script>", rejected(f)[1])
      local got = delivered(f)
      assert.equals("after", got[#got].message)
    end)

  it("keeps aside a message the dashboard fails on with 500 ten times in " ..
    "a row, and goes on (broken if one message blocks all behind it)",
    function()
      local f = setup { override = refusing(500, "crasher") }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      post(f, url, { type = "status", message = "crasher" })
      post(f, url, { type = "status", message = "after" })
      f:run_for(3600)
      local got = delivered(f)
      assert.equals(1, #got)
      assert.equals("after", got[1].message)
      local tries = 0
      for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
        if r.body:find("crasher", 1, true) then tries = tries + 1 end
      end
      assert.equals(10, tries)
      assert.matches("crasher", rejected(f)[1])
    end)

  it("answers 507 without giving up the progress when even that would not " ..
    "make room", function()
      local f, dash = setup { env = { GOLIAT_GATEWAY_MAX_BYTES = "1M" } }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      post(f, url, { type = "overall_progress", current = 7, total = 9 })
      local res = post(f, url, { type = "status",
        message = string.rep("x", 1100 * 1024) })
      assert.equals(507, res.status)
      dash.down = false
      f:run_for(30)
      local got = delivered(f)
      assert.equals(1, #got)
      assert.same({ "overall_progress", 7 }, { got[1].type, got[1].current })
    end)

  it("sets aside, never deletes, a queued message whose meta file is " ..
    "damaged or not a message", function()
      local f = P.offline_fake { GOLIAT_GATEWAY = "on" }
      P.dashboard(f)
      local dir = "/work/agent/gateway/"
      f.dirs["/work/agent/gateway"] = true
      f.files[dir .. "000000000001.json"] = "{}"
      f.files[dir .. "000000000001.body"] = "precious 1"
      f.files[dir .. "000000000002.json"] = "{not json"
      f.files[dir .. "000000000002.body"] = "precious 2"
      P.start(f)
      f:run_for(30)
      assert.equals("precious 1", f.files[dir .. "000000000001.body.bad"])
      assert.equals("precious 2", f.files[dir .. "000000000002.body.bad"])
      assert.equals("{}", f.files[dir .. "000000000001.json.bad"])
      assert.equals(0, #f.task_errors)
    end)

  it("absorbs the study's own heartbeats (the agent beats already)", function()
    local f = setup()
    P.start(f)
    local url = study_of(f).env.GOLIAT_MONITORING_URL
    local res = f:send_to(url, "POST", "/api/heartbeat",
      cjson.encode { machineId = "203.0.113.9" }, JSON)
    assert.equals(200, res.status)
    assert.same({ success = true }, cjson.decode(res.body))
    f:run_for(30)
    local beats = f:requests_to("/api/heartbeat$")
    assert.is_true(#beats >= 5) -- the agent's own go on
    for _, r in ipairs(beats) do
      assert.is_nil(r.body:find("203.0.113.9", 1, true))
    end
  end)

  it("holds the study's finished until its process exits, reports exit 3 " ..
    "as fatal_error with the study's words, after everything it sent " ..
    "(broken if a failed split shows as completed)", function()
      local f = setup { code = 3, runs = 30 }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      for i = 1, 5 do
        post(f, url, { type = "status",
          message = "step " .. i })
      end
      post(f, url, { type = "finished",
        message = "all 12 simulations done" })
      f:run_for(120)
      for _, m in ipairs(delivered(f)) do
        assert.not_equals("finished", m.type)
      end
      local rep, rep_req = report(f)
      assert.equals("fatal_error", rep.type)
      assert.equals(3, rep.exit_code)
      assert.equals("study exited with code 3, although the study reported " ..
        "it finished (all 12 simulations done)", rep.message)
      -- every message of the study arrived before the report
      local got = delivered(f)
      assert.equals(5, #got)
      for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
        local doc = cjson.decode(r.body)
        if doc.message.type == "status" then
          assert.is_true(r.at <= rep_req.at)
        end
      end
    end)

  it("keeps the study's fatal_error words in the report of a failed exit",
    function()
      local f = setup { code = 1, runs = 10 }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      post(f, url, { type = "fatal_error",
        message = "no license" })
      f:run_for(60)
      local rep = report(f)
      assert.equals("fatal_error", rep.type)
      assert.equals("study exited with code 1: no license", rep.message)
    end)

  it("merges log batches waiting side by side into one request, lines in " ..
    "order, and never sends more than the rate allows", function()
      local f, dash = setup { env = { GOLIAT_GATEWAY_RATE = "2" } }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      for b = 1, 10 do
        local logs = {}
        for l = 1, 10 do
          logs[l] = { message = string.format("b%d l%d", b, l),
            log_type = "info", timestamp = b }
        end
        post(f, url, { type = "log_batch",
          logs = logs, sequence = b })
      end
      for i = 1, 20 do
        post(f, url, { type = "status",
          message = "s" .. i })
      end
      local t0 = f.now
      dash.down = false
      f:run_for(60)
      local got = delivered(f)
      assert.equals("log_batch", got[1].type)
      assert.equals(100, #got[1].logs)
      for i, line in ipairs(got[1].logs) do
        assert.equals(string.format("b%d l%d", (i - 1) // 10 + 1,
          (i - 1) % 10 + 1), line.message)
      end
      assert.equals(1, got[1].sequence)
      assert.equals(21, #got)
      -- at most 2 per second: the 21 sends spread over 10 s at least
      local sends = {}
      for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
        if r.at >= t0 and r.delivered then sends[#sends + 1] = r.at end
      end
      for i = 3, #sends do
        assert.is_true(sends[i] - sends[i - 2] >= 1 - 1e-9,
          "three sends within a second at " .. sends[i])
      end
    end)

  it("slows down on 429 and honours Retry-After, dropping nothing", function()
    local f, dash = setup()
    P.start(f)
    local url = study_of(f).env.GOLIAT_MONITORING_URL
    dash.status, dash.headers = 429, { ["retry-after"] = "7" }
    for i = 1, 10 do
      post(f, url, { type = "status",
        message = "m" .. i })
    end
    f:run_for(6)
    local refused = #f:requests_to("/api/gui%-update$")
    assert.equals(1, refused) -- one try, then the 7 s it was asked to wait
    dash.status, dash.headers = nil, nil
    f:run_for(60)
    local got = delivered(f)
    assert.equals(10, #got)
    assert.equals("m1", got[1].message)
    assert.equals("m10", got[10].message)
  end)

  it("keeps a message the dashboard refuses for good aside, and goes on " ..
    "with the next", function()
      local f = setup { override = refusing(400, "poison") }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      post(f, url, { type = "status", message = "poison" })
      post(f, url, { type = "status", message = "fine" })
      f:run_for(30)
      local got = delivered(f)
      assert.equals(1, #got)
      assert.equals("fine", got[1].message)
      local kept = rejected(f)
      assert.equals(1, #kept)
      assert.matches("poison", kept[1])
      assert.matches("refused the study's POST /api/gui%-update for good",
        f:log_text())
    end)

  it("under the disk budget drops the oldest progress first, never a " ..
    "result upload or a log line: those get 507 when there is no room",
    function()
      local f, dash = setup { env = { GOLIAT_GATEWAY_MAX_BYTES = "1M" } }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      local big = string.rep("x", 300 * 1024)
      local mp = { ["content-type"] = "multipart/form-data; boundary=zz" }
      local res = f:send_to(url, "POST", "/api/gui-screenshots", big, mp)
      assert.equals(200, res.status)
      res = f:send_to(url, "POST", "/api/assignments/a-1/results", big, mp)
      assert.equals(200, res.status)
      res = post(f, url, {
        type = "status", message = big })
      assert.equals(200, res.status)
      -- no room left but the screenshot's: it goes, the upload stays
      res = f:send_to(url, "POST", "/api/assignments/a-1/results", big .. "2",
        mp)
      assert.equals(200, res.status)
      -- now only what must not be dropped is waiting: refused, not lost
      res = post(f, url, {
        type = "status", message = big })
      assert.equals(507, res.status)
      assert.matches("queue is full", cjson.decode(res.body).error)
      dash.down = false
      f:run_for(60)
      local uploads = {}
      for _, r in ipairs(f:requests_to("/results$")) do
        if r.delivered then uploads[#uploads + 1] = r end
      end
      assert.equals(2, #uploads)
      assert.equals(big, uploads[1].body)
      assert.equals(big .. "2", uploads[2].body)
      assert.equals("multipart/form-data; boundary=zz",
        uploads[1].headers["Content-Type"])
      for _, r in ipairs(f:requests_to("/api/gui%-screenshots")) do
        assert.is_falsy(r.delivered) -- tried while down, then dropped
      end
    end)

  it("survives a kill -9: the restarted agent serves the running study on " ..
    "the same URL and sends what was queued before, then the report",
    function()
      local f, dash = setup { runs = 200 }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      for i = 1, 5 do
        post(f, url, { type = "status",
          message = "before " .. i })
      end
      f:kill_agent()
      assert.is_nil((post(f, url, {
        type = "status", message = "while down" })))
      P.start(f)
      f:run_for(1)
      for i = 1, 5 do
        local res = post(f, url, {
          type = "status", message = "after " .. i })
        assert.equals(200, res.status)
      end
      dash.down = false
      f:run_for(400)
      local got = delivered(f)
      local texts = {}
      for i, m in ipairs(got) do texts[i] = m.message end
      assert.same({ "before 1", "before 2", "before 3", "before 4", "before 5",
        "after 1", "after 2", "after 3", "after 4", "after 5" }, texts)
      local rep = report(f)
      assert.equals("finished", rep.type)
    end)

  it("shows in --status how many messages wait and how old the oldest is",
    function()
      local f, dash = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      for i = 1, 3 do
        post(f, url, { type = "status",
          message = "m" .. i })
        f:run_for(10)
      end
      local status = require "lib.status"
      local s = assert(agent.load_settings(f.host, { look_only = true }))
      local text = status.text(status.collect(f.host, agent, s))
      assert.matches("gateway: on, 3 messages of studies waiting to be " ..
        "sent, the oldest from 30 s ago", text)
    end)

  it("still sends what waits from when it was on after it is turned off, " ..
    "without serving studies", function()
      local f, dash = setup { runs = 30 }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      post(f, url, { type = "status",
        message = "left over" })
      f:kill_agent()
      f.env.GOLIAT_GATEWAY = "off"
      dash.down = false
      P.start(f)
      f:run_for(120)
      local got = delivered(f)
      assert.equals(1, #got)
      assert.equals("left over", got[1].message)
      for _, srv in ipairs(f.servers) do
        if srv ~= f.servers[1] then error("a second server was started") end
      end
    end)

  it("leaves the study's URL as the dashboard's when it is off", function()
    local f = P.offline_fake { GOLIAT_GATEWAY = "off" }
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [BLOB .. "/c3.json"] = "{}" } })
    P.start(f)
    assert.equals(P.DASH, study_of(f).env.GOLIAT_MONITORING_URL)
    assert.equals(0, #f.servers)
  end)
end)

describe("GOLIAT's own traffic (PROTOCOL.md section 6)", function()
  it("is forwarded under the agent's machine id, the rest of each message " ..
    "as the study sent it", function()
      local f, dash = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true -- queued on disk, then sent
      local body = '{"machineId":"203.0.113.9","message":{"type":"status",' ..
        '"message":"hello","log_type":"info"},"timestamp":1764979200.25}'
      assert.equals(200, f:send_to(url, "POST", "/api/gui-update", body,
        JSON).status)
      dash.down = false
      f:run_for(30)
      local sent
      for _, r in ipairs(f:requests_to("/api/gui%-update$")) do
        if r.delivered and r.body:find("hello", 1, true) then sent = r.body end
      end
      assert.is_string(sent, "the message was not delivered")
      local doc, orig = cjson.decode(sent), cjson.decode(body)
      assert.equals("198.51.100.7", doc.machineId)
      orig.machineId = doc.machineId
      assert.same(orig, doc)
      assert.equals(1, select(2, f:log_text():gsub("the study sends as " ..
        "machine 203%.0%.113%.9; its messages go to the dashboard as " ..
        "198%.51%.100%.7", "")))
    end)

  it("is sent to the gateway by the hook, for GOLIAT's built-in URL and " ..
    "GOLIAT_MONITORING_URL, or for GOLIAT_GATEWAY_URLS", function()
      local f = setup()
      P.start(f)
      local env = study_of(f).env
      assert.equals(env.GOLIAT_MONITORING_URL, env.GOLIAT_GATEWAY_HOOK_TARGET)
      assert.same({ "https://monitor.goliat.waves-ugent.be", P.DASH },
        cjson.decode(env.GOLIAT_GATEWAY_HOOK_URLS))
      assert.equals(SCRIPTS .. "/pyhook", env.PYTHONPATH)
      f = setup { env = { GOLIAT_GATEWAY_URLS = " https://a.example/ , " ..
        "http://10.1.2.3:3000", PYTHONPATH = "/opt/site" } }
      P.start(f)
      env = study_of(f).env
      assert.same({ "https://a.example", "http://10.1.2.3:3000" },
        cjson.decode(env.GOLIAT_GATEWAY_HOOK_URLS))
      -- ours first, then what the study would have had
      assert.equals(SCRIPTS .. "/pyhook:/opt/site", env.PYTHONPATH)
    end)

  it("is left alone with GOLIAT_GATEWAY_HOOK=off: no hook on the path, " ..
    "the gateway still given as GOLIAT_MONITORING_URL", function()
      local f = setup { env = { GOLIAT_GATEWAY_HOOK = "off" } }
      P.start(f)
      local env = study_of(f).env
      assert.matches("^http://127%.0%.0%.1:%d+/gw/", env.GOLIAT_MONITORING_URL)
      assert.is_nil(env.PYTHONPATH)
      assert.is_nil(env.GOLIAT_GATEWAY_HOOK_TARGET)
    end)

  it("GOLIAT_GATEWAY_URLS and GOLIAT_GATEWAY_HOOK refuse what does not " ..
    "parse, naming the variable", function()
      local _, err = agent.load_settings(P.new_fake {
        GOLIAT_GATEWAY_URLS = "https://ok.example, ftp://no" }.host)
      assert.equals("GOLIAT_GATEWAY_URLS must list http:// or https:// URLs, " ..
        "comma-separated; 'ftp://no' is not one", err)
      _, err = agent.load_settings(P.new_fake {
        GOLIAT_GATEWAY_URLS = " , " }.host)
      assert.matches("GOLIAT_GATEWAY_URLS must list at least one URL", err)
      _, err = agent.load_settings(P.new_fake {
        GOLIAT_GATEWAY_HOOK = "sometimes" }.host)
      assert.equals("GOLIAT_GATEWAY_HOOK must be on or off, got 'sometimes'",
        err)
    end)

  it("a gateway that cannot listen: the study runs without it and without " ..
    "the hook", function()
      local f = setup()
      f.serve_error = "address in use"
      P.start(f)
      local env = study_of(f).env
      assert.equals(P.DASH, env.GOLIAT_MONITORING_URL)
      assert.is_nil(env.PYTHONPATH)
    end)
end)

describe("the gateway's disk budget", function()
  it("counts the blocks a message takes on disk (two files of 4 KiB at " ..
    "least), not its bytes", function()
      local f, dash = setup { env = { GOLIAT_GATEWAY_MAX_BYTES = "1M" } }
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      local taken, refused = 0, 0
      for i = 1, 200 do
        local res = post(f, url, { type = "status", message = "line " .. i,
          log_type = "info" })
        if res.status == 200 then taken = taken + 1 end
        if res.status == 507 then refused = refused + 1 end
      end
      -- 1 MiB / (4 KiB body + 4 KiB meta): counted as bytes (~300 each),
      -- all 200 would have been taken, with 1.6 MB on disk
      assert.equals(128, taken)
      assert.equals(72, refused)
    end)
end)

describe("a large upload through the gateway", function()
  it("arrives as a file, is moved into the queue (flushed) and sent from " ..
    "that file, never read into memory", function()
      local f, dash = setup()
      P.start(f)
      local url = study_of(f).env.GOLIAT_MONITORING_URL
      dash.down = true
      local big = string.rep("0123456789abcdef", 2 * 65536) -- 2 MiB
      local mp = { ["content-type"] = "multipart/form-data; boundary=zz" }
      local read = f.host.fs.read
      local reads = {}
      f.host.fs.read = function(path)
        reads[#reads + 1] = path
        return read(path)
      end
      local res = f:send_to(url, "POST", "/api/assignments/a-1/results", big,
        mp)
      assert.equals(200, res.status)
      assert.is_nil(f.spool_left, "the spooled file was not moved")
      local queued
      for path in pairs(f.files) do
        if path:match("^/work/agent/gateway/%d+%.body$") then queued = path end
      end
      assert.is_string(queued, "the upload is not in the queue")
      assert.same({ queued }, f.synced)
      dash.down = false
      f:run_for(30)
      local sent
      for _, r in ipairs(f:requests_to("/results$")) do
        if r.delivered then sent = r end
      end
      assert.is_table(sent, "the upload was not sent")
      assert.equals(queued, sent.body_file)
      assert.equals(big, sent.body)
      for _, p in ipairs(reads) do
        assert.not_equals(queued, p, "the upload was read into memory")
      end
      assert.is_nil(f.files[queued])
    end)

  it("a large JSON message is still read, sorted and forwarded", function()
    local f = setup()
    P.start(f)
    local url = study_of(f).env.GOLIAT_MONITORING_URL
    local text = string.rep("y", 1100 * 1024)
    assert.equals(200, post(f, url, { type = "status", message = text,
      log_type = "info" }).status)
    f:run_for(30)
    local got = delivered(f)
    assert.equals(text, got[#got].message)
  end)
end)

describe("the gateway's folder after a killed agent", function()
  it("loses an upload that was still arriving (the study had no answer), " ..
    "and nothing else", function()
      local f = setup()
      f.files["/work/agent/gateway/.spool-77-3-0a1b.part"] = "half an upload"
      f.files["/work/agent/gateway/notes.txt"] = "an operator's"
      P.start(f)
      study_of(f)
      assert.is_nil(f.files["/work/agent/gateway/.spool-77-3-0a1b.part"])
      assert.equals("an operator's", f.files["/work/agent/gateway/notes.txt"])
    end)
end)
