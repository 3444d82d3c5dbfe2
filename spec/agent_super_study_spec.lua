-- Policy specs for the deployed dashboard's super studies (PROTOCOL.md
-- section 4), out-of-memory reruns and the machine id: the real
-- scripts/agent.lua against the fake host and a scripted dashboard.
local cjson = require "cjson"
local agent = require "agent"
local fake_host = require "support.fake_host"
local P = require "support.policy"
local super = require "support.super_dashboard"

local fake = P.offline_fake

local function count(list, pred)
  local n = 0
  for _, x in ipairs(list) do if pred(x) then n = n + 1 end end
  return n
end

local function log_lines(f, pattern)
  return count(f.logs, function(l) return l.text:match(pattern) end)
end

local function claims_by(d, ip)
  return count(d.claims, function(c) return c.ip == ip end)
end

local ME = "198.51.100.7"

-- The last request that changed something (a POST) before trace[i].
local function previous_post(trace, i)
  for j = i - 1, 1, -1 do
    if trace[j]:match("^POST ") then return trace[j] end
  end
end

describe("protocol detection", function()
  it("chooses super studies when /api/assignment is a 404 page and " ..
    "/api/super-studies a JSON array, and says why", function()
      local f = fake()
      local d = super.new(f)
      d:add_study("sweep", { { a = 1 } })
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      local text = f:log_text()
      assert.matches("dashboard protocol: super%-study %(GET /api/assignment " ..
        "answered HTTP 404 and GET /api/super%-studies answered a JSON array%)",
        text)
    end)

  it("chooses the planned API when the poll answers JSON", function()
    local f = fake()
    P.dashboard(f)
    P.start(f)
    f:run_for(30)
    assert.matches("dashboard protocol: assignment", f:log_text())
    assert.equals(0, #f:requests_to("/api/super%-studies"))
  end)

  it("detects again when the dashboard starts answering differently", function()
    local f = fake()
    local planned = true
    local d = super.new(f, { override = function(req, path)
      if planned and path == "/api/assignment" then
        return P.json(200, { assigned = false })
      end
      if planned and path:match("^/api/super") then
        return P.json(404, { error = "not found" })
      end
      if req.url:match("/api/heartbeat$") and planned then
        return P.json(200, { success = true })
      end
    end })
    d:add_study("later", { { a = 1 } })
    P.start(f)
    f:run_for(60)
    assert.matches("dashboard protocol: assignment", f:log_text())
    assert.equals(0, #f.spawned)
    planned = false -- the dashboard is replaced by the deployed one
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 300))
    assert.matches("no longer answers the assignment API", f:log_text())
    assert.matches("dashboard protocol: super%-study", f:log_text())
  end)

  it("detects again when a super-study dashboard is replaced by the " ..
    "planned API", function()
      local f = fake()
      local deployed = true
      super.new(f, { override = function(_, path)
        if deployed then return nil end
        if path == "/api/assignment" then
          return P.json(200, { assigned = true, assignment = P.assignment() })
        end
        if path:match("^/api/super") then
          return P.json(404, { error = "not found" })
        end
      end })
      f.http_handler = (function(inner)
        return function(req)
          if req.url == P.BLOB .. "/c3.json" then
            return { status = 200, body = "{}" }
          end
          return inner(req)
        end
      end)(f.http_handler)
      P.start(f)
      f:run_for(60)
      assert.matches("dashboard protocol: super%-study", f:log_text())
      deployed = false
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 300))
      assert.matches("no longer answers the super%-study API", f:log_text())
      assert.equals("a-1", f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
    end)

  it("with GOLIAT_PROTOCOL=super-study never asks /api/assignment", function()
    local f = fake { GOLIAT_PROTOCOL = "super-study" }
    local d = super.new(f)
    d:add_study("s", { { a = 1 } })
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    assert.equals(0, #f:requests_to("/api/assignment%?"))
  end)

  it("keeps trying, with backoff, while the dashboard answers neither", function()
    local f = fake()
    f.http_handler = function() return P.json(404, { error = "nope" }) end
    P.start(f)
    f:run_for(600)
    assert.is_nil(f.exit_code)
    assert.equals(1, log_lines(f, "^dashboard protocol detection failed: " ..
      "the dashboard answers none of the known APIs"))
    assert.is_true(#f:requests_to("/api/assignment%?") < 60)
  end)
end)

describe("choosing work", function()
  it("takes the lowest-index PENDING assignment of the oldest super study",
    function()
      local f = fake()
      local d = super.new(f)
      local old = d:add_study("old", { { n = 0 }, { n = 1 }, { n = 2 } })
      d:add_study("new", { { n = 9 } })
      old.assignments[1].status = "COMPLETED"
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      assert.equals(old.assignments[2].id, d.claims[1].id)
      assert.equals(old.assignments[2].id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
    end)

  it("works only on the super studies of GOLIAT_SUPER_STUDY, in their order " ..
    "of age", function()
      local f = fake { GOLIAT_SUPER_STUDY = "b, c" }
      local d = super.new(f)
      d:add_study("a", { { n = 1 } })
      local b = d:add_study("b", { { n = 2 } })
      local c = d:add_study("c", { { n = 3 } })
      f.spawn_handler = function() return { exit_code = 0, after = 10 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 2 end, 600))
      f:run_for(60)
      assert.same({ b.assignments[1].id, c.assignments[1].id },
        { d.claims[1].id, d.claims[2].id })
      assert.equals(2, #d.claims)
      assert.equals("PENDING", d.studies[1].assignments[1].status)
    end)

  it("says once that a named super study is not on the dashboard", function()
    local f = fake { GOLIAT_SUPER_STUDY = "missing" }
    local d = super.new(f)
    d:add_study("other", { { n = 1 } })
    P.start(f)
    f:run_for(120)
    assert.equals(1, log_lines(f, "super study 'missing'.-is not on the dashboard"))
    assert.equals(0, #d.claims)
  end)

  it("goes by the stored status, not the derived view: work RUNNING under " ..
    "an idle worker is not taken", function()
      local f = fake()
      local d = super.new(f)
      local st = d:add_study("s", { { n = 0 }, { n = 1 } })
      d:claim(st.assignments[1].id, "203.0.113.9")
      d:worker_by_ip("203.0.113.9").status = "IDLE" -- derived view: PENDING
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      assert.equals(st.assignments[2].id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
      assert.equals(0, claims_by(d, ME) - 1)
      for _, r in ipairs(d.reads) do
        assert.is_nil(r.path:match("^/api/super%-studies/[^/]+$"),
          "read the derived view")
      end
    end)
end)

describe("claiming", function()
  it("sends a heartbeat right before every claim and every report", function()
    local f = fake()
    local d = super.new(f)
    d:add_study("s", { { n = 0 }, { n = 1 } })
    f.spawn_handler = function() return { exit_code = 0, after = 5 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 2 end, 600))
    local trace = d:trace()
    local checked = 0
    for i, line in ipairs(trace) do
      if line:match("/claim$") or line == "POST /api/gui-update" then
        assert.equals("POST /api/heartbeat", previous_post(trace, i),
          "before " .. line)
        checked = checked + 1
      end
    end
    assert.equals(4, checked)
  end)

  it("runs nothing that another worker claimed in the meantime, and goes " ..
    "on with other work", function()
      local f = fake()
      local d = super.new(f)
      local st = d:add_study("s", { { n = 0 }, { n = 1 } })
      local first = st.assignments[1].id
      local stolen = false
      d.opts.override = function(req, path)
        -- a rival's claim lands just after ours, on the same reading
        if path:match("/claim$") and req.url:match(first) and not stolen then
          stolen = true
          f:spawn("rival", function()
            f.host.time.sleep(0.5)
            d:claim(first, "203.0.113.9")
          end)
        end
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 120))
      f:run_for(30)
      assert.is_true(stolen)
      assert.equals(1, #f.spawned)
      assert.equals(st.assignments[2].id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
      assert.matches("went to another worker", f:log_text())
      -- nothing is reported for the lost one
      for _, r in ipairs(f:reports()) do
        assert.equals(st.assignments[2].id, r.message.assignment_id)
      end
    end)

  it("checks the claim only after claim_settle seconds", function()
    local f = fake { GOLIAT_CLAIM_SETTLE = "7" }
    local d = super.new(f)
    d:add_study("s", { { n = 0 } })
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 120))
    local claimed_at = d.claims[1].at
    local checked_at
    for _, r in ipairs(d.reads) do
      if r.at > claimed_at and r.path:match("/assignments$") then
        checked_at = checked_at or r.at
      end
    end
    assert.equals(7, checked_at - claimed_at)
  end)

  it("warns when the dashboard shows this worker under another IP (a " ..
    "shared hostname)", function()
      local f = fake()
      local d = super.new(f)
      d:add_study("s", { { n = 0 }, { n = 1 } })
      f.spawn_handler = function() return { exit_code = 0, after = 30 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      -- another VM with the same hostname beats after each of ours: the
      -- shared row flips to its IP
      local inner = f.http_handler
      f.http_handler = function(req)
        local res = inner(req)
        if req.url:match("/api/heartbeat$") then
          d:worker_by_ip(ME).ipAddress = "192.0.2.44"
        end
        return res
      end
      f:run_for(120)
      assert.equals(1, log_lines(f, "under IP 192%.0%.2%.44, not " ..
        ME:gsub("%.", "%%.") .. ": another machine sends the same hostname"))
    end)
end)

describe("the split config", function()
  for form, value in pairs {
    object = { extends = "base_config.json", n = 5 },
    ["JSON string"] = '{"extends": "base_config.json", "n": 5}',
  } do
    it("given as " .. form .. " is written atomically to <project>/configs/" ..
      "<super study>_assignment_<index>.json", function()
        local f = fake { GOLIAT_PROJECT_DIR = "/proj" }
        local d = super.new(f)
        local st = d:add_study("sweep 1", { { n = 0 }, value })
        st.assignments[1].status = "COMPLETED"
        f.files["/proj/configs/base_config.json"] = "{}"
        P.start(f)
        assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
        local path = "/proj/configs/sweep_1_assignment_1.json"
        local p = f.spawned[1]
        assert.equals(path, p.argv[#p.argv])
        assert.equals("/proj", p.cwd)
        local cfg = cjson.decode(f.files[path])
        assert.equals(5, cfg.n)
        assert.equals("base_config.json", cfg.extends)
        assert.equals(0, log_lines(f, "extends"))
      end)
  end

  it("warns when the base config it extends is missing", function()
    local f = fake { GOLIAT_PROJECT_DIR = "/proj" }
    local d = super.new(f)
    d:add_study("s", { { extends = "base_config.json" } })
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    assert.equals(1, log_lines(f, "extends base_config%.json, which is not in"))
  end)

  it("that is not an object is reported as fatal_error and nothing runs",
    function()
      local f = fake()
      local d = super.new(f)
      d:add_study("s", { "[1, 2]" })
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      local m = f:reports()[1].message
      assert.equals("fatal_error", m.type)
      assert.matches("splitConfig is not a JSON object", m.message)
      assert.equals(0, #f.spawned)
    end)

  it("keeps a hostile super study name inside configs/", function()
    local f = fake()
    local d = super.new(f)
    d:add_study("../../etc/x", { { n = 0 } })
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    local p = f.spawned[1]
    assert.equals("/work/agent/configs/__.._etc_x_assignment_0.json",
      p.argv[#p.argv])
  end)

  it("fits a 300-character super study name into a short file name, kept " ..
    "apart from another that starts alike", function()
      local f = fake()
      local d = super.new(f)
      local long = string.rep("sweep-of-phantoms-", 17) -- 306 characters
      d:add_study(long .. "A", { { n = 0 } })
      d:add_study(long .. "B", { { n = 1 } })
      f.spawn_handler = function() return { exit_code = 0, after = 5 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 2 end, 600))
      local names = {}
      for i, p in ipairs(f.spawned) do
        local path = p.argv[#p.argv]
        names[i] = path:match("[^/]+$")
        assert.equals("/work/agent/configs/", path:sub(1, 20))
        assert.is_true(#names[i] <= 90, names[i])
        assert.equals(long:sub(1, 55), names[i]:sub(1, 55))
        assert.is_string(f.files[path], "the config was not written")
      end
      assert.not_equals(names[1], names[2])
      assert.is_true(f:run_until(function() return #f:reports() == 2 end, 60))
      for _, r in ipairs(f:reports()) do
        assert.equals("finished", r.message.type)
      end
    end)
end)

describe("after a failure", function()
  local f, d, st
  before_each(function()
    f = fake()
    d = super.new(f)
    st = d:add_study("s", { { n = 0 }, { n = 1 } })
    f.spawn_handler = function(opts)
      local config = opts.argv[#opts.argv]
      if config:match("_0%.json$") and #f.spawned == 1 then
        return { exit_code = 3, after = 10 }
      end
      return { exit_code = 0, after = 10 }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    f:run_for(600)
  end)

  it("takes no new work while the failed assignment is RUNNING under this " ..
    "worker, and says so once", function()
      assert.equals("fatal_error", f:reports()[1].message.type)
      assert.equals(1, #d.claims)
      assert.equals(1, #f.spawned)
      assert.equals("RUNNING", st.assignments[1].status)
      assert.equals(1, log_lines(f, "still RUNNING under this worker"))
      assert.is_true(#f:requests_to("/api/heartbeat$") > 100, "keeps beating")
    end)

  it("resumes by itself after the operator's reset, with a heartbeat first",
    function()
      d:reset(d:worker_by_ip(ME))
      assert.is_true(f:run_until(function() return #f:reports() >= 3 end, 600))
      assert.matches("worker was reset on the dashboard", f:log_text())
      -- both assignments ran again and the dashboard completed each once
      assert.equals(3, #f.spawned)
      assert.equals("COMPLETED", st.assignments[1].status)
      assert.equals("COMPLETED", st.assignments[2].status)
      local trace = d:trace()
      for i, line in ipairs(trace) do
        if line:match("/claim$") then
          assert.equals("POST /api/heartbeat", previous_post(trace, i))
        end
      end
    end)
end)

describe("out-of-memory reruns", function()
  local function run_with_codes(codes, env)
    local f = fake(env)
    local d = super.new(f)
    d:add_study("s", { { n = 0 } })
    f.spawn_handler = function()
      return { exit_code = codes[#f.spawned] or 0, after = 20 }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    f:run_for(100)
    return f, d
  end

  it("run the study again on exit 42, without a new claim, and report once " ..
    "with the number of attempts", function()
      local f, d = run_with_codes { 42, 42, 0 }
      assert.equals(3, #f.spawned)
      assert.equals(1, #d.claims)
      assert.equals(1, #f:reports())
      local m = f:reports()[1].message
      assert.equals("finished", m.type)
      assert.equals(0, m.exit_code)
      assert.matches("attempt 3 of 4", m.message)
      assert.same(f.spawned[1].argv, f.spawned[3].argv) -- the same config
      assert.is_true(m.duration_s >= 60)
    end)

  it("stop after GOLIAT_OOM_RETRIES reruns and report the failure", function()
    local f = run_with_codes({ 42, 42, 42, 42 }, { GOLIAT_OOM_RETRIES = "2" })
    assert.equals(3, #f.spawned)
    local m = f:reports()[1].message
    assert.equals("fatal_error", m.type)
    assert.equals(42, m.exit_code)
    assert.matches("ran out of memory %(exit code 42%) on attempt 3 of 3", m.message)
  end)

  it("never rerun another failure", function()
    local f = run_with_codes { 3 }
    assert.equals(1, #f.spawned)
  end)

  it("keep their count across an agent killed between two attempts", function()
    local f = fake { GOLIAT_PROTOCOL = "super-study" }
    local d = super.new(f)
    d:add_study("s", { { n = 0 } })
    local codes = { 42, 42, 42, 42, 42 }
    f.spawn_handler = function()
      return { exit_code = codes[#f.spawned], after = 20 }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 2 end, 600))
    f:kill_agent() -- while attempt 2 runs
    f:run_for(30)  -- it ends (42) with no agent
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    assert.equals(4, #f.spawned) -- attempts 3 and 4 after the restart
    assert.equals(1, #d.claims)
    local m = f:reports()[1].message
    assert.matches("attempt 4 of 4", m.message)
    assert.equals(1, f.attached == nil and 1 or 0) -- attempt 2 had ended
  end)

  it("work in the planned API too", function()
    local f = fake()
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [P.BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function()
      return { exit_code = #f.spawned == 1 and 42 or 0, after = 5 }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.equals(2, #f.spawned)
    assert.equals("finished", f:reports()[1].message.type)
    assert.matches("attempt 2 of 4", f:reports()[1].message.message)
  end)
end)

describe("an agent restarted during a claim", function()
  it("starts the study when the dashboard still shows the work as its own",
    function()
      local f = fake { GOLIAT_CLAIM_SETTLE = "10" }
      local d = super.new(f)
      d:add_study("s", { { n = 0 } })
      P.start(f)
      assert.is_true(f:run_until(function() return #d.claims == 1 end, 60))
      f:run_for(2)
      f:kill_agent() -- between the claim and its check
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(1, #f.spawned)
      assert.equals(1, #d.claims)
      assert.equals("finished", f:reports()[1].message.type)
    end)
end)

describe("the machine id", function()
  local function start_with(env, ip_reply)
    local f = P.new_fake(env)
    P.dashboard(f)
    local inner = f.http_handler
    f.http_handler = function(req, ff)
      if req.url:match("^https://api%.ipify%.org") then return ip_reply(req) end
      return inner(req, ff)
    end
    P.start(f)
    f:run_for(12)
    local beat = cjson.decode(f:requests_to("/api/heartbeat$")[1].body)
    return f, beat.machineId
  end

  it("is the public IP address by default, asked with a short timeout",
    function()
      local f, id = start_with({}, function(req)
        assert.is_nil(req.headers.Authorization)
        return { status = 200, body = "203.0.113.77\n" }
      end)
      assert.equals("203.0.113.77", id)
      assert.matches("machine id 203%.0%.113%.77 %(public IP address from " ..
        "https://api%.ipify%.org%)", f:log_text())
      assert.equals(1, #f:requests_to("ipify"))
    end)

  for name, reply in pairs {
    ["unreachable"] = function() return nil, "could not resolve", "resolve" end,
    ["answering HTML"] = function() return { status = 200, body = "<html>" } end,
    ["answering 500"] = function() return { status = 500, body = "x" } end,
  } do
    it("falls back to the local address when the lookup is " .. name, function()
      local f, id = start_with({}, reply)
      assert.equals(ME, id)
      assert.matches("machine id " .. ME:gsub("%.", "%%.") ..
        " %(local address; the public IP lookup failed", f:log_text())
    end)
  end

  it("skips the lookup when GOLIAT_PUBLIC_IP_URL is empty", function()
    local f, id = start_with({ GOLIAT_PUBLIC_IP_URL = "" }, function()
      error("asked")
    end)
    assert.equals(ME, id)
    assert.equals(0, #f:requests_to("ipify"))
  end)

  it("is GOLIAT_MACHINE_ID when set, without a lookup", function()
    local f, id = start_with({ GOLIAT_MACHINE_ID = "vm-12" }, function()
      error("asked")
    end)
    assert.equals("vm-12", id)
    assert.matches("machine id vm%-12 %(GOLIAT_MACHINE_ID%)", f:log_text())
    assert.equals(0, #f:requests_to("ipify"))
  end)

  it("does not change while the agent runs", function()
    local n = 0
    local f = start_with({}, function()
      n = n + 1
      return { status = 200, body = "203.0.113." .. n }
    end)
    f:run_for(120)
    for _, r in ipairs(f:requests_to("/api/heartbeat$")) do
      assert.equals("203.0.113.1", cjson.decode(r.body).machineId)
    end
    assert.equals(1, n)
  end)
end)

describe("settings of this issue", function()
  for var, bad in pairs {
    GOLIAT_PROTOCOL = "graphql",
    GOLIAT_OOM_RETRIES = "-1",
    GOLIAT_PUBLIC_IP_URL = "ftp://x",
    GOLIAT_SUPER_STUDY = " , ",
    GOLIAT_CLAIM_SETTLE = "soon",
  } do
    it("rejects " .. var .. "='" .. bad .. "', naming it", function()
      local f = fake_host.new { env = { GOLIAT_MONITORING_URL = P.DASH,
        [var] = bad } }
      local s, err = agent.load_settings(f.host)
      assert.is_nil(s)
      assert.matches(var, err)
    end)
  end

  it("reads the super study list and the project dir", function()
    local f = fake_host.new { env = { GOLIAT_MONITORING_URL = P.DASH,
      GOLIAT_SUPER_STUDY = " near field ,far", GOLIAT_PROJECT_DIR = "proj",
      GOLIAT_HOSTNAME = "vm-a" } }
    local s = assert(agent.load_settings(f.host))
    assert.same({ "near field", "far" }, s.super_study)
    assert.equals("/work/proj", s.project_dir)
    assert.equals("vm-a", s.hostname)
    assert.is_true(f.dirs["/work/proj/configs"])
  end)
end)

describe("hard cases of claiming", function()
  it("a claim the dashboard refuses (500) is retried with backoff, and " ..
    "logged once", function()
      local f = fake()
      local d = super.new(f, { override = function(_, path)
        if path:match("/claim$") then return P.json(500, { error = "db" }) end
      end })
      d:add_study("s", { { n = 0 } })
      P.start(f)
      f:run_for(600)
      local claims = #f:requests_to("/claim$")
      assert.is_true(claims >= 3 and claims <= 25, claims .. " claims")
      assert.equals(1, count(f.logs, function(l)
        return l.level == "warn" and l.text:match("^claim failed")
      end))
      assert.equals(0, #f.spawned)
    end)

  it("a rival's claim during a slow heartbeat before ours is seen: the " ..
    "assignment is read again right before the claim", function()
      local f = fake()
      local d = super.new(f)
      local st = d:add_study("s", { { n = 0 }, { n = 1 } })
      local first = st.assignments[1].id
      local slowed = false
      d.opts.override = function(_, path)
        local chosen = false -- the worker has read the assignments
        for _, r in ipairs(d.reads) do
          if r.path:match("/assignments$") then chosen = true end
        end
        if path == "/api/heartbeat" and #d.claims == 0 and not slowed and
            chosen then
          slowed = true
          d:claim(first, "203.0.113.9") -- lands while ours is slow
          f.host.time.sleep(6)
        end
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 120))
      assert.is_true(slowed)
      for _, c in ipairs(d.claims) do
        assert.is_false(c.ip == ME and c.id == first, "claimed it over the rival")
      end
      assert.equals(st.assignments[2].id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
    end)

  it("GOLIAT_SUPER_STUDY does not hide a failed assignment of another super " ..
    "study: still no new work", function()
      local f = fake { GOLIAT_SUPER_STUDY = "b" }
      local d = super.new(f)
      local a = d:add_study("a", { { n = 0 } })
      d:add_study("b", { { n = 1 } })
      d:claim(a.assignments[1].id, ME) -- failed earlier, still RUNNING
      P.start(f)
      f:run_for(120)
      assert.equals(1, #d.claims)
      assert.equals(1, log_lines(f, "still RUNNING under this worker"))
    end)
end)

describe("an agent restarted", function()
  local function claim_window(f, d)
    P.start(f)
    assert.is_true(f:run_until(function() return #d.claims == 1 end, 60))
    f:run_for(2)
    f:kill_agent() -- between the claim and its check
  end

  it("during a claim that went to another worker: no report, no study, " ..
    "other work goes on", function()
      local f = fake { GOLIAT_CLAIM_SETTLE = "10" }
      local d = super.new(f)
      local st = d:add_study("s", { { n = 0 }, { n = 1 } })
      claim_window(f, d)
      d:claim(st.assignments[1].id, "203.0.113.9")
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(1, #f.spawned)
      assert.equals(st.assignments[2].id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
      for _, r in ipairs(f:reports()) do
        assert.equals(st.assignments[2].id, r.message.assignment_id)
      end
      assert.matches("no longer this worker's", f:log_text())
    end)

  it("during a claim asks again when the dashboard fails to answer, then " ..
    "starts the study", function()
      local f = fake { GOLIAT_CLAIM_SETTLE = "10" }
      local d = super.new(f)
      d:add_study("s", { { n = 0 } })
      claim_window(f, d)
      local failures = 2
      d.opts.override = function(_, path)
        if path:match("/assignments$") and failures > 0 then
          failures = failures - 1
          return P.json(503, { error = "busy" })
        end
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(0, failures)
      assert.equals(1, #f.spawned)
      assert.equals("finished", f:reports()[1].message.type)
    end)

  it("between out-of-memory reruns does not run the next one when the " ..
    "worker was reset meanwhile", function()
      local f = fake()
      local d = super.new(f)
      d:add_study("s", { { n = 0 } })
      f.spawn_handler = function() return { exit_code = 42, after = 20 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      f:kill_agent()
      f:run_for(30) -- attempt 1 runs out of memory with no agent
      d:reset(d:worker_by_ip(ME))
      d:claim(d.studies[1].assignments[1].id, "203.0.113.9")
      P.start(f)
      f:run_for(120)
      assert.equals(1, #f.spawned)
      assert.equals(0, #f:reports())
      assert.is_nil(f.files["/work/agent/agent_state.json"])
    end)

  it("while it was starting a study reports it lost and never starts a " ..
    "second copy", function()
      local f = fake { GOLIAT_PROTOCOL = "super-study" }
      super.new(f)
      f.files["/work/agent/agent_state.json"] = cjson.encode {
        assignment = { id = "as9", protocol = "super-study", split_index = 0,
          super_study_id = "ss1", super_study_name = "s" },
        config_path = "/work/agent/configs/s_assignment_0.json", attempt = 1,
        started_at = 1800000000, exit_file = "/work/agent/study_0.exit.json",
        starting = true }
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      assert.equals(0, #f.spawned)
      assert.matches("died while starting it", f:reports()[1].message.message)
    end)
end)

-- GOLIAT's own window sends `finished` after every run, failed or out of
-- memory too (PROTOCOL.md section 6), and the dashboard completes the
-- assignment on it: the agent sets the stored status right.
describe("GOLIAT's own finished", function()
  -- One super study of one assignment; each run exits with the next code
  -- of `codes` after 20 s, and the study's window then says `finished`.
  -- seen[n]: the stored status when run n started.
  local function run_goliat(codes, env)
    local f = fake(env)
    local d = super.new(f)
    local st = d:add_study("s", { { n = 0 } })
    local a = st.assignments[1]
    local seen = {}
    f.spawn_handler = function()
      seen[#f.spawned] = a.status
      return { exit_code = codes[#f.spawned] or 0, after = 20,
        on_end = function() d:goliat_finished(ME) end }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    f:run_for(60)
    return f, d, a, seen
  end

  -- The position in the agent's requests of the first `line` after `from`.
  local function position(d, line, from)
    for i, l in ipairs(d:trace()) do
      if i > (from or 0) and l == line then return i end
    end
  end

  it("after a failure: claimed back from COMPLETED before the failure " ..
    "report, so the failure is what the dashboard ends with", function()
      local f, d, a = run_goliat { 3 }
      assert.equals(1, #f.spawned)
      local reports = f:reports()
      assert.equals(1, #reports)
      assert.equals("fatal_error", reports[1].message.type)
      assert.equals("RUNNING", a.status)
      assert.equals("FAILED", d:derived(a))
      assert.equals(2, #d.claims) -- the claim, then the claim back
      local back = position(d, "POST /api/assignments/" .. a.id .. "/claim",
        position(d, "POST /api/assignments/" .. a.id .. "/claim"))
      assert.truthy(back)
      assert.is_true(position(d, "POST /api/gui-update") > back,
        "the report went before the claim back")
      assert.equals(1, log_lines(f, "showed it COMPLETED after the study " ..
        "failed: claimed back %(now RUNNING%) before reporting the failure"))
      assert.equals(1, log_lines(f, "the dashboard shows it RUNNING under " ..
        "this worker after the failure report"))
    end)

  it("out of memory, then a success: RUNNING again before the rerun, " ..
    "COMPLETED by the agent's report", function()
      local f, d, a, seen = run_goliat { 42, 0 }
      assert.equals(2, #f.spawned)
      assert.equals("RUNNING", seen[2], "COMPLETED lasted into the rerun")
      assert.equals(2, #d.claims)
      assert.equals("COMPLETED", a.status)
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals(1, log_lines(f, "showed it COMPLETED before its rerun " ..
        "%(GOLIAT's own `finished`%): claimed back, now RUNNING under this " ..
        "worker"))
      assert.equals(1, log_lines(f, "the dashboard shows it COMPLETED under " ..
        "this worker after the success report"))
    end)

  it("out of memory on every run: each rerun RUNNING, and the failure is " ..
    "what stays", function()
      local f, d, a, seen = run_goliat { 42, 42, 42, 42 }
      assert.equals(4, #f.spawned)
      for n = 2, 4 do assert.equals("RUNNING", seen[n], "rerun " .. n) end
      assert.equals(1, #f:reports())
      assert.equals("fatal_error", f:reports()[1].message.type)
      assert.equals(42, f:reports()[1].message.exit_code)
      assert.equals("RUNNING", a.status)
      assert.equals("FAILED", d:derived(a))
      assert.equals(5, #d.claims) -- the claim, 3 before reruns, 1 at the end
    end)

  it("a success changes nothing that is right already", function()
    local f, d, a = run_goliat { 0 }
    assert.equals(1, #d.claims)
    assert.equals("COMPLETED", a.status)
    assert.equals("finished", f:reports()[1].message.type)
    assert.equals(0, log_lines(f, "claimed back"))
  end)

  it("a success after the worker was reset meanwhile: claimed back so " ..
    "that the report completes it, not run again elsewhere", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      f.spawn_handler = function()
        return { exit_code = 0, after = 20, on_end = function()
          d:reset(d:worker_by_ip(ME))
        end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      f:run_for(30)
      assert.equals("COMPLETED", a.status)
      assert.equals(1, #f.spawned)
      assert.equals(1, log_lines(f, "showed it PENDING after the study " ..
        "succeeded: claimed back"))
    end)

  it("a failure reported while the dashboard could not say the status " ..
    "(after settle_tries) is set right and reported again once it can",
    function()
      local f = fake()
      local failing = 0
      local d = super.new(f, { override = function(_, path)
        if failing > 0 and path:match("/assignments$") then
          failing = failing - 1
          return P.json(500, { error = "db" })
        end
      end })
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      f.spawn_handler = function()
        return { exit_code = 3, after = 20, on_end = function()
          d:goliat_finished(ME)
          failing = 11 -- settle's 10 tries and the read after the report
        end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 2 end,
        3600))
      f:run_for(60)
      assert.equals(0, failing)
      assert.equals(1, log_lines(f, "could not be checked before the " ..
        "report .*: reporting anyway"))
      assert.equals(1, log_lines(f, "reporting the failure once more"))
      local reports = f:reports()
      assert.equals(2, #reports)
      for _, r in ipairs(reports) do
        assert.equals("fatal_error", r.message.type)
      end
      assert.equals("RUNNING", a.status)
      assert.equals("FAILED", d:derived(a))
    end)

  it("a failure that shows COMPLETED after its report (the study's window, " ..
    "late) is claimed back and reported again, from the outbox", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      local late = true
      local handler = f.http_handler
      f.http_handler = function(req)
        local res, err, code = handler(req)
        if late and req.url:match("/api/gui%-update$") and
            req.body:find('"fatal_error"', 1, true) then
          late = false
          d:goliat_finished(ME) -- after the agent's report
        end
        return res, err, code
      end
      f.spawn_handler = function() return { exit_code = 3, after = 20 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 2 end,
        600))
      f:run_for(30)
      assert.equals(2, #f:reports())
      assert.equals("RUNNING", a.status)
      assert.equals("FAILED", d:derived(a))
      local outbox_writes = count(f.writes, function(w)
        return w:match("/outbox/") ~= nil
      end)
      assert.equals(2, outbox_writes, "the second report was not stored first")
    end)

  it("a worker reset between out-of-memory runs: the work is not run " ..
    "again, as after a restart", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      f.spawn_handler = function()
        return { exit_code = 42, after = 20, on_end = function()
          d:reset(d:worker_by_ip(ME))
        end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end,
        600))
      -- (it is PENDING: this worker may take it again later, as new work,
      -- with a claim of its own)
      assert.equals(1, #f.spawned)
      assert.equals(1, #d.claims)
      assert.equals("PENDING", a.status)
      assert.matches("not run again: assignment as%d+ %(index 0%) is PENDING " ..
        "on the dashboard", f:reports()[1].message.message)
    end)

  it("a stop while the dashboard is asked before a rerun starts no rerun",
    function()
      local f = fake()
      local broken = false
      local d = super.new(f, { override = function(_, path)
        if broken and path:match("/assignments$") then
          return P.json(500, { error = "db" })
        end
      end })
      d:add_study("s", { { n = 0 } })
      f.spawn_handler = function()
        return { exit_code = 42, after = 20, on_end = function()
          d:goliat_finished(ME)
          broken = true
        end }
      end
      P.start(f)
      assert.is_true(f:run_until(function()
        return log_lines(f, "dashboard check before a rerun failed") > 0
      end, 600))
      f:signal("SIGTERM")
      f:run_for(120)
      assert.equals(1, #f.spawned)
      assert.equals(0, f.exit_code)
      -- kept for the next start, at the attempt it was about to run
      assert.equals(0, #f:reports())
      local state = cjson.decode(f.files["/work/agent/agent_state.json"])
      assert.equals(2, state.attempt)
      assert.equals("SIGTERM", state.interrupted)
    end)

  it("a dashboard that does not answer before a rerun: the rerun starts " ..
    "after rerun_wait, and the work is claimed back once it answers",
    function()
      local f = fake()
      local broken_until = -1
      local d = super.new(f, { override = function(_, path)
        if f.now < broken_until and path:match("/assignments$") then
          return P.json(500, { error = "db" })
        end
      end })
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      local seen = {}
      f.spawn_handler = function()
        seen[#f.spawned] = a.status
        local n = #f.spawned
        return { exit_code = n == 1 and 42 or 0, after = 300,
          on_end = function()
            d:goliat_finished(ME)
            -- the dashboard cannot be read for 120 s after run 1
            if n == 1 then broken_until = f.now + 120 end
          end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end,
        3600))
      assert.equals(2, #f.spawned)
      assert.equals("COMPLETED", seen[2]) -- started without the answer
      assert.equals(1, log_lines(f, "has not answered for 60 s: rerunning"))
      assert.equals(1, log_lines(f, "showed it COMPLETED before its rerun"))
      assert.equals(2, #d.claims)
      assert.equals("COMPLETED", a.status)
    end)

  it("an agent restarted between out-of-memory runs claims the work back " ..
    "and runs it again", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      local seen = {}
      f.spawn_handler = function()
        seen[#f.spawned] = a.status
        return { exit_code = #f.spawned == 1 and 42 or 0, after = 20,
          on_end = function() d:goliat_finished(ME) end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      f:kill_agent()
      f:run_for(30) -- run 1 runs out of memory, its window says finished
      assert.equals("COMPLETED", a.status)
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      f:run_for(30)
      assert.equals(2, #f.spawned)
      assert.equals("RUNNING", seen[2])
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals("COMPLETED", a.status)
    end)
end)

-- Long histories (issue 20): the super-study list grows with every super
-- study ever made.
describe("a long history", function()
  it("with GOLIAT_SUPER_STUDY: the named studies are looked up by name, " ..
    "the whole list read at the start and every full_list_every only",
    function()
      local f = fake { GOLIAT_SUPER_STUDY = "mine", GOLIAT_POLL_INTERVAL = "5",
        GOLIAT_IDLE_POLL_MAX = "5" } -- (counts lookups at the poll interval)
      local d = super.new(f)
      for i = 1, 30 do d:add_study("old-" .. i, { { n = i } }) end
      d:add_study("mine", { { n = 0 } })
      f.spawn_handler = function() return { exit_code = 0, after = 10 } end
      P.start(f)
      f:run_for(600)
      local full, named = 0, 0
      for _, r in ipairs(f:requests_to("/api/super%-studies")) do
        if r.url:match("/api/super%-studies$") then full = full + 1 end
        if r.url:match("/api/super%-studies%?name=mine$") then
          named = named + 1
        end
      end
      assert.equals(1, #f.spawned)
      assert.is_true(named > 50, "named lookups: " .. named)
      -- the probe, the start, then one per 300 s
      assert.is_true(full >= 2 and full <= 4, "whole-list reads: " .. full)
    end)

  it("work lookups have their own reply limit and ask for compression; " ..
    "the heartbeat keeps the small limit", function()
      local f = fake { GOLIAT_LOOKUP_MAX_BYTES = "100M" }
      local d = super.new(f)
      d:add_study("s", { { n = 0 } })
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      local lookups = f:requests_to("/api/super%-studies")
      assert.is_true(#lookups >= 2)
      for _, r in ipairs(lookups) do
        assert.equals(100 * 1024 * 1024, r.max_size)
        assert.is_true(r.compressed)
      end
      for _, r in ipairs(f:requests_to("/api/heartbeat$")) do
        assert.equals(1024 * 1024, r.max_size)
        assert.is_nil(r.compressed)
      end
      local _, err = agent.load_settings(P.new_fake {
        GOLIAT_LOOKUP_MAX_BYTES = "12" }.host)
      assert.matches("GOLIAT_LOOKUP_MAX_BYTES must be a number of bytes", err)
    end)

  it("a super study that cannot be read is skipped with a warning, and " ..
    "the others go on", function()
      local f = fake()
      local bad
      local d = super.new(f, { override = function(_, path)
        if bad and path == "/api/super-studies/" .. bad .. "/assignments" then
          return P.json(500, { error = "too large for the database" })
        end
      end })
      bad = d:add_study("huge", { { n = 0 } }).id
      local good = d:add_study("small", { { n = 1 } })
      f.spawn_handler = function() return { exit_code = 0, after = 10 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 300))
      assert.equals(good.assignments[1].id,
        f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
      f:run_for(120)
      assert.equals(1, log_lines(f, "^super study huge assignments failed: " ..
        "HTTP 500"))
    end)

  it("a super study that cannot be read and holds a failed assignment of " ..
    "this worker: no new work until it can be read", function()
      local f = fake()
      local broken = false
      local first
      local d = super.new(f, { override = function(_, path)
        if broken and first and
            path == "/api/super-studies/" .. first .. "/assignments" then
          return P.json(500, { error = "db" })
        end
      end })
      first = d:add_study("a", { { n = 0 } }).id
      d:add_study("b", { { n = 1 } })
      f.spawn_handler = function()
        return { exit_code = 3, after = 10, on_end = function() end }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 300))
      f:run_for(30) -- held: the failed assignment is RUNNING under us
      broken = true
      f:run_for(300)
      assert.equals(1, #f.spawned)
      assert.matches("super study a cannot be read now", f:log_text())
    end)
end)

-- Failures that pass (issue 20): a run that fails otherwise than out of
-- memory is run again, GOLIAT_FAILURE_RETRIES times, after
-- GOLIAT_FAILURE_RETRY_DELAY.
describe("failure retries", function()
  local function run_codes(codes, env)
    local e = { GOLIAT_FAILURE_RETRIES = "2" }
    for k, v in pairs(env or {}) do e[k] = v end
    local f = fake(e)
    local d = super.new(f)
    local a = d:add_study("s", { { n = 0 } }).assignments[1]
    f.spawn_handler = function()
      return { exit_code = codes[#f.spawned] or 0, after = 20,
        on_end = function() d:goliat_finished(ME) end }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    f:run_for(100)
    return f, d, a
  end

  it("run a failed study again after the delay, with no new claim, and " ..
    "report once, naming the attempts", function()
      local f, d, a = run_codes { 3, 0 }
      assert.equals(2, #f.spawned)
      assert.is_true(f.procs[2].started - f.procs[1].started >= 20 + 60,
        "the rerun did not wait GOLIAT_FAILURE_RETRY_DELAY")
      assert.equals(2, #d.claims) -- the claim, and back from GOLIAT's finished
      local reports = f:reports()
      assert.equals(1, #reports)
      assert.equals("finished", reports[1].message.type)
      assert.matches("on attempt 2 %(before it: exit code 3%)",
        reports[1].message.message)
      assert.equals("COMPLETED", a.status)
    end)

  it("stop after GOLIAT_FAILURE_RETRIES, report the failure, and only then " ..
    "hold the worker", function()
      local f, _, a = run_codes { 3, 3, 3, 3 }
      assert.equals(3, #f.spawned)
      local m = f:reports()[1].message
      assert.equals("fatal_error", m.type)
      assert.matches("on attempt 3 %(before it: exit code 3, exit code 3%)",
        m.message)
      assert.equals("RUNNING", a.status)
      assert.equals(1, log_lines(f, "still RUNNING under this worker"))
    end)

  it("count apart from out-of-memory reruns (broken if one count held " ..
    "both: 4 reruns here, 1 failure and 3 out of memory)", function()
      local f = run_codes({ 3, 42, 42, 42, 0 }, { GOLIAT_FAILURE_RETRIES = "1",
        GOLIAT_FAILURE_RETRY_DELAY = "5" })
      assert.equals(5, #f.spawned)
      assert.equals("finished", f:reports()[1].message.type)
      assert.matches("on attempt 5 %(before it: exit code 3, exit code 42, " ..
        "exit code 42, exit code 42%)", f:reports()[1].message.message)
    end)

  it("GOLIAT_FAILURE_RETRIES=0 reports the first failure", function()
    local f = run_codes({ 3, 0 }, { GOLIAT_FAILURE_RETRIES = "0" })
    assert.equals(1, #f.spawned)
    assert.equals("fatal_error", f:reports()[1].message.type)
  end)

  it("keep their count across an agent killed during the delay", function()
    local f = fake { GOLIAT_FAILURE_RETRIES = "2" }
    local d = super.new(f)
    d:add_study("s", { { n = 0 } })
    f.spawn_handler = function() return { exit_code = 3, after = 20 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 2 end, 600))
    f:run_for(30) -- attempt 2 fails; the agent waits for the next
    f:kill_agent()
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 3600))
    assert.equals(3, #f.spawned)
    assert.matches("on attempt 3 %(before it: exit code 3, exit code 3%)",
      f:reports()[1].message.message)
  end)

  it("never rerun a study that timed out", function()
    local f = fake { GOLIAT_FAILURE_RETRIES = "2", GOLIAT_STUDY_TIMEOUT = "30" }
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [P.BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { exit_code = 0, after = 600 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    assert.equals(1, #f.spawned)
    assert.matches("timed out", f:reports()[1].message.message)
  end)

  it("work in the planned API too, and the settings refuse what does not " ..
    "parse", function()
      local f = fake { GOLIAT_FAILURE_RETRIES = "1",
        GOLIAT_FAILURE_RETRY_DELAY = "0" }
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      f.spawn_handler = function()
        return { exit_code = #f.spawned == 1 and 7 or 0, after = 5 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(2, #f.spawned)
      assert.equals("finished", f:reports()[1].message.type)
      local _, err = agent.load_settings(P.new_fake {
        GOLIAT_FAILURE_RETRIES = "-1" }.host)
      assert.equals("GOLIAT_FAILURE_RETRIES must be a whole number >= 0, " ..
        "got '-1'", err)
      _, err = agent.load_settings(P.new_fake {
        GOLIAT_FAILURE_RETRY_DELAY = "soon" }.host)
      assert.matches("GOLIAT_FAILURE_RETRY_DELAY", err)
    end)
end)

-- Planned stops (issue 20): a service stop or a reboot during a study ends
-- its tree but keeps the work for the next start.
describe("a planned stop", function()
  local function stopped_during_study(env)
    local f = fake(env)
    local d = super.new(f)
    local a = d:add_study("s", { { n = 0 } }).assignments[1]
    f.spawn_handler = function(o)
      if #f.spawned == 1 then return { exit_code = 0, after = 600 } end
      return { exit_code = 0, after = 20, opts = o }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    f:run_for(30)
    f:signal("SIGTERM")
    f:run_for(60)
    return f, d, a
  end

  it("reports nothing, keeps the assignment, and the next start runs it " ..
    "again while the dashboard shows it as this worker's", function()
      local f, d, a = stopped_during_study()
      assert.equals(0, f.exit_code)
      assert.equals("SIGTERM", f.procs[1].sig)
      assert.equals(0, #f:reports())
      assert.equals("RUNNING", a.status)
      local state = cjson.decode(f.files["/work/agent/agent_state.json"])
      assert.equals("SIGTERM", state.interrupted)
      assert.is_nil(state.pid)
      f:kill_agent() -- (it has exited: a new process starts)
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(2, #f.spawned)
      assert.same(f.spawned[1].argv[#f.spawned[1].argv],
        f.spawned[2].argv[#f.spawned[2].argv]) -- the same config
      assert.equals(1, #d.claims) -- no new claim
      assert.equals(1, #f:reports())
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals("COMPLETED", a.status)
      assert.matches("stopped with the agent %(SIGTERM%): running it again",
        f:log_text())
    end)

  it("does not run it again when the worker was reset meanwhile", function()
    local f, d, a = stopped_during_study()
    d:reset(d:worker_by_ip(ME))
    d:claim(a.id, "203.0.113.9")
    f:kill_agent() -- (it has exited: a new process starts)
    P.start(f)
    f:run_for(120)
    assert.equals(1, #f.spawned)
    assert.equals(0, #f:reports())
    assert.is_nil(f.files["/work/agent/agent_state.json"])
  end)

  it("of the planned API still reports the assignment failed", function()
    local f = fake()
    P.dashboard(f, { queue = { P.assignment() },
      configs = { [P.BLOB .. "/c3.json"] = "{}" } })
    f.spawn_handler = function() return { exit_code = 0, after = 600 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    f:signal("SIGTERM")
    f:run_for(60)
    assert.equals("fatal_error", f:reports()[1].message.type)
    assert.matches("agent stopped by SIGTERM", f:reports()[1].message.message)
  end)
end)

-- Ownership while the study runs (issue 20): a reset, another worker's
-- claim or a deleted super study stops the study, and nothing is reported.
describe("while a study runs", function()
  local function long_study(env)
    local f = fake(env)
    local d = super.new(f)
    local st = d:add_study("s", { { n = 0 }, { n = 1 } })
    f.spawn_handler = function()
      return { exit_code = 0, after = #f.spawned == 1 and 3600 or 20 }
    end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    f:run_for(100) -- a check or so confirms it
    return f, d, st
  end

  it("checks about every minute that its work is still this worker's, and " ..
    "--status says when it last was", function()
      local f = long_study()
      local reads = #f:requests_to("/assignments$")
      f:run_for(600)
      local more = #f:requests_to("/assignments$") - reads
      assert.is_true(more >= 8 and more <= 13, "reads in 600 s: " .. more)
      local st = cjson.decode(f.files["/work/agent/agent_status.json"])
      assert.is_number(st.study.owned_at)
      assert.equals(1, #f.spawned)
    end)

  it("stops the study when two checks in a row find it claimed by another " ..
    "worker, reports nothing, and takes other work", function()
      local f, d, st = long_study()
      d:claim(st.assignments[1].id, "203.0.113.9")
      assert.is_true(f:run_until(function() return #f.spawned == 2 end, 600))
      assert.equals("SIGTERM", f.procs[1].sig)
      assert.equals(st.assignments[2].id, f.spawned[2].env.GOLIAT_ASSIGNMENT_ID)
      f:run_for(60)
      for _, r in ipairs(f:reports()) do
        assert.not_equals(st.assignments[1].id, r.message.assignment_id)
      end
      assert.equals("RUNNING", st.assignments[1].status) -- the other's run
      assert.equals(1, log_lines(f, "is no longer this worker's on the " ..
        "dashboard %(assignment as%d+ %(index 0%) is RUNNING under another " ..
        "worker %(203%.0%.113%.9%)%): stopping its study"))
    end)

  it("stops it after the worker was reset", function()
    local f, d = long_study()
    d:reset(d:worker_by_ip(ME))
    assert.is_true(f:run_until(function() return f.procs[1].sig end, 600))
    assert.equals("SIGTERM", f.procs[1].sig)
    -- PENDING again, it is taken anew (a claim of its own) and run; the
    -- run that was stopped is never reported
    assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
    local id = f.spawned[1].env.GOLIAT_ASSIGNMENT_ID
    assert.equals(2, count(d.claims, function(c) return c.id == id end))
    assert.equals(1, #f:reports())
    assert.equals("finished", f:reports()[1].message.type)
    assert.is_true(f:reports()[1].message.duration_s < 100,
      "the stopped run was reported")
  end)

  it("stops it when its super study was deleted", function()
    local f, d, st = long_study()
    d:delete_study(st)
    assert.is_true(f:run_until(function() return f.procs[1].sig end, 600))
    f:run_for(30)
    assert.equals(0, #f:reports())
    assert.matches("no longer on the dashboard", f:log_text())
  end)

  it("never stops it on a read that fails", function()
    local failing = false
    local f = fake()
    local d = super.new(f, { override = function(_, path)
      if failing and path:match("/assignments$") then
        return P.json(500, { error = "db" })
      end
    end })
    d:add_study("s", { { n = 0 } })
    f.spawn_handler = function() return { exit_code = 0, after = 3600 } end
    P.start(f)
    assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
    failing = true
    f:run_for(1200)
    assert.is_nil(f.procs[1].sig)
    assert.equals(1, log_lines(f, "^ownership check failed: HTTP 500"))
  end)
end)

-- Vanished VMs (issue 20): work RUNNING under a worker the dashboard has
-- not seen for GOLIAT_ABANDONED_AFTER is taken over.
describe("work of a vanished VM", function()
  -- A super study whose one assignment runs under another machine's
  -- worker, last seen by the dashboard `ago` seconds before our start.
  local function orphaned(ago, env)
    local f = fake(env)
    local d = super.new(f)
    local a = d:add_study("s", { { n = 0 } }).assignments[1]
    d:claim(a.id, "203.0.113.50")
    local w = d:worker_by_ip("203.0.113.50")
    w.status = "RUNNING"
    w.seen = -ago
    f.spawn_handler = function() return { exit_code = 0, after = 20 } end
    return f, d, a, w
  end

  it("is taken over when the dashboard has not seen its worker for " ..
    "GOLIAT_ABANDONED_AFTER, saying whose it was", function()
      local f, d, a = orphaned(40 * 60)
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(a.id, f.spawned[1].env.GOLIAT_ASSIGNMENT_ID)
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals("COMPLETED", a.status)
      assert.equals(2, #d.claims)
      assert.matches("was RUNNING under worker w%d+ %(203%.0%.113%.50%), " ..
        "which the dashboard last saw 40 min ago: its VM is gone; taking it " ..
        "over", f:log_text())
    end)

  it("is left alone while its worker was seen recently, or with " ..
    "GOLIAT_ABANDONED_AFTER=0", function()
      local f = orphaned(10 * 60)
      P.start(f)
      f:run_for(300)
      assert.equals(0, #f.spawned)
      f = orphaned(40 * 60, { GOLIAT_ABANDONED_AFTER = "0" })
      P.start(f)
      f:run_for(300)
      assert.equals(0, #f.spawned)
      assert.equals(0, #f:requests_to("/api/workers/"))
    end)

  it("is judged by the dashboard's clock, not the VM's", function()
    local f = orphaned(10 * 60)
    local now = f.host.time.now
    f.host.time.now = function() return now() + 7200 end -- 2 h ahead
    P.start(f)
    f:run_for(300)
    assert.equals(0, #f.spawned)
  end)
end)

describe("a whole list that cannot be read", function()
  it("stops neither the detection nor the named studies' work (the probe " ..
    "asks for one name; the whole list is asked again later)", function()
      local f = fake { GOLIAT_SUPER_STUDY = "now" }
      super.new(f, { override = function(req)
        if req.method == "GET" and req.url:match("/api/super%-studies$") then
          return nil, "response body larger than 67108864 bytes", "too_large"
        end
      end }):add_study("now", { { n = 0 } })
      f.spawn_handler = function() return { exit_code = 0, after = 10 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 300))
      assert.equals("finished", f:reports()[1].message.type)
      for _, r in ipairs(f:requests_to("/api/super%-studies%?")) do
        assert.matches("%?name=now$", r.url)
      end
      assert.equals(1, log_lines(f, "^whole super%-study list failed: " ..
        "response body larger"))
    end)
end)

describe("from a review", function()
  it("a stop cut short (the study's tree outlives the agent) still leaves " ..
    "the work to run again, not a failure", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      f.spawn_handler = function()
        return { exit_code = 0, after = #f.spawned == 1 and 3600 or 20 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      local p = f.procs[1]
      p.terminate = function() return nil end -- it does not end in time
      f:signal("SIGTERM")
      f:run_for(60)
      assert.equals(0, f.exit_code)
      local state = cjson.decode(f.files["/work/agent/agent_state.json"])
      assert.equals("SIGTERM", state.interrupted)
      assert.is_number(state.pid) -- (the stop did not get to keep_on_stop)
      f:kill_agent()
      p.spec.signal, p.spec.exit_code = "SIGTERM", nil
      p.finish() -- it ends after all, killed: its exit file says so
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals(2, #f.spawned)
      assert.equals(1, #f:reports())
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals("COMPLETED", a.status)
    end)

  it("a study that exits 0 during a stop is kept and run again, never " ..
    "reported as failed", function()
      local f = fake()
      local d = super.new(f)
      local a = d:add_study("s", { { n = 0 } }).assignments[1]
      f.spawn_handler = function()
        return { exit_code = 0, after = #f.spawned == 1 and 3600 or 20 }
      end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.spawned == 1 end, 60))
      local p = f.procs[1]
      p.terminate = function(self) self.finish() return 0 end -- exits 0
      f:signal("SIGTERM")
      f:run_for(60)
      assert.equals(0, #f:reports())
      f:kill_agent()
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 600))
      assert.equals("finished", f:reports()[1].message.type)
      assert.equals("COMPLETED", a.status)
    end)

  it("after a restart, an unreadable super study that holds a failed " ..
    "assignment of this worker keeps it from taking new work", function()
      local f = fake()
      local broken, first = false, nil
      local d = super.new(f, { override = function(_, path)
        if broken and path == "/api/super-studies/" .. first .. "/assignments"
        then
          return P.json(500, { error = "db" })
        end
      end })
      first = d:add_study("a", { { n = 0 } }).id
      local b = d:add_study("b", { { n = 1 } })
      f.spawn_handler = function() return { exit_code = 3, after = 10 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 300))
      f:kill_agent() -- a restart: the new agent knows no worker row yet
      broken = true
      P.start(f)
      f:run_for(300)
      assert.equals(1, #f.spawned)
      assert.equals("PENDING", b.assignments[1].status)
    end)
end)
