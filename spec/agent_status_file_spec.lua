-- Policy specs (fake clock, fake host) for agent_status.json, the file the
-- running agent keeps for `--status` (looked at with each heartbeat, written
-- when it changes), and for what `--status` makes of it.
local cjson = require "cjson"
local P = require "support.policy"
local status = require "lib.status"

local FILE = "/work/agent/agent_status.json"

local function read_status(f)
  local text = f.files[FILE]
  assert(text, "no status file")
  return cjson.decode(text)
end

-- The fake's wall clock (the status file's times are wall-clock times).
local function wall(f, t)
  return f.host.time.now() - f.now + (t or f.now)
end

local function text_of(f, st)
  return status.text { now = wall(f), status = st, running = true, outbox = 0,
    rejected = 0 }
end

-- A dashboard that refuses connections while down() is true.
local function dashboard_down_when(f, down)
  P.dashboard(f)
  local inner = f.http_handler
  f.http_handler = function(req, ff)
    if down() then return nil, "connection refused", "connect" end
    return inner(req, ff)
  end
end

describe("agent_status.json", function()
  it("says the heartbeat fails as soon as it does, since when and why, and " ..
    "--status shows it (broken if the file waits for its 30 s rewrite or " ..
    "the failure's start moves with each failed beat)", function()
      local f = P.offline_fake()
      dashboard_down_when(f, function() return f.now >= 50 and f.now < 200 end)
      P.start(f)
      f:run_for(40)
      local st = read_status(f)
      assert.is_true(st.heartbeat.ok)
      assert.matches("heartbeat: ok %(every 5 s; the last one recorded %d+ s ago%)",
        text_of(f, st))
      f:run_for(18) -- t = 58: one beat failed at 50..56
      st = read_status(f)
      assert.is_false(st.heartbeat.ok)
      assert.matches("connection refused", st.heartbeat.error)
      local since = st.heartbeat.since
      assert.is_true(since >= wall(f, 50) and since <= wall(f, 57))
      f:run_for(100) -- t = 158: many failed beats later
      st = read_status(f)
      assert.equals(since, st.heartbeat.since)
      assert.matches("heartbeat: FAILING for %d+ s: [^\n]*connection refused",
        text_of(f, st))
      f:run_for(60) -- t = 218: the dashboard is back
      st = read_status(f)
      assert.is_true(st.heartbeat.ok)
      assert.is_true(st.heartbeat.since >= wall(f, 200))
    end)

  it("counts a heartbeat answered 200 with something other than a JSON " ..
    "object as failed, and one answered with any object as ok (broken if " ..
    "the glance that replaced decoding the reply lets a proxy's page or " ..
    "JSON null through, or refuses an object it does not read)", function()
      local f = P.offline_fake()
      P.dashboard(f)
      local inner, reply = f.http_handler, nil
      f.http_handler = function(req, ff)
        if reply and req.url:match("/api/heartbeat$") then
          return { status = 200, headers = {}, body = reply }
        end
        return inner(req, ff)
      end
      P.start(f)
      for _, case in ipairs {
        { "<html><body>Sign in to the network</body></html>", false },
        { ' \n {"anything": [1, 2], "ok": false}', true },
        { "null", false },
        { "", false },
        { '{"success":true}', true },
      } do
        reply = case[1]
        f:run_for(12)
        local st = read_status(f)
        assert.equals(case[2], st.heartbeat.ok, case[1])
        if not case[2] then
          assert.matches("not a JSON object", st.heartbeat.error)
        end
      end
    end)

  it("is rewritten at least every 30 s while nothing changes (broken if " ..
    "the last heartbeat it holds grows old on a healthy agent)", function()
      local f = P.offline_fake()
      P.dashboard(f)
      P.start(f)
      for _ = 1, 10 do
        f:run_for(31)
        local st = read_status(f)
        assert.is_true(wall(f) - st.updated_at <= 30,
          "written " .. (wall(f) - st.updated_at) .. " s ago")
        assert.is_true(wall(f) - st.heartbeat_at <= 30)
      end
    end)

  it("holds the study from its start to its end (broken if --status shows " ..
    "no study while one runs, or one that has ended)", function()
      local f = P.offline_fake()
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      f.spawn_handler = function() return { exit_code = 0, after = 100 } end
      P.start(f)
      assert.is_true(f:run_until(function() return #f.procs >= 1 end, 60))
      f:run_for(6) -- the status is looked at with each heartbeat
      local st = read_status(f)
      assert.equals("a-1", st.study.assignment_id)
      assert.equals(3, st.study.split_index)
      assert.matches("study: assignment a%-1 %(split 3%), pid %d+, attempt 1",
        text_of(f, st))
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 200))
      f:run_for(6)
      st = read_status(f)
      assert.is_nil(st.study)
      assert.matches("study: none", text_of(f, st))
    end)
end)
