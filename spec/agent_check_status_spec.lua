-- `goliat-host scripts/agent.lua --check` and `--status` (issue 10), run as
-- real processes against the example dashboard on 127.0.0.1, with the
-- GOLIAT stand-in as the study (python).
local host = require "host"
local cjson = require "cjson"
local cluster = require "support.cluster"
local H = require "support.helpers"

local fs = host.fs
local queue = cluster.queue

-- Run the agent script with an option to its end; returns code, output.
local function run_option(env, ...)
  local args = { fs.join(cluster.source_dir, "scripts", "agent.lua"), ... }
  local r = H.run_host(args, { env = env, timeout = 120 })
  return r.code, r.stdout .. r.stderr
end

local function lines_with(out, level)
  local n = 0
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, #level + 1) == level .. " " then n = n + 1 end
  end
  return n
end

describe("--check", function()
  local dash, work, env

  before_each(function()
    dash = cluster.start_dashboard()
    work = cluster.temp_dir("check")
    assert(fs.mkdir_p(fs.join(work, "configs")))
    assert(fs.mkdir_p(fs.join(work, "data")))
    env = cluster.agent_env(dash.url, work,
      { GOLIAT_API_TOKEN = "check-secret-token" })
  end)

  after_each(function()
    cluster.stop(dash.proc)
  end)

  it("says all OK on a ready machine, hides the token, and leaves one " ..
    "heartbeat and no taken work on the dashboard", function()
      queue(dash, { duration_s = 1 }, { id = "not-for-check" })
      local code, out = run_option(env, "--check")
      assert.equals(0, code, out)
      assert.equals(0, lines_with(out, "FAIL"), out)
      assert.equals(0, lines_with(out, "WARN"), out)
      assert.matches("OK   heartbeat: POST /api/heartbeat answered 200", out)
      assert.matches("OK   study command: python imports goliat", out)
      assert.matches("OK   gateway hook: [^\n]*pyhook[/\\]sitecustomize%.py: " ..
        "GOLIAT's requests to https://monitor%.goliat%.waves%-ugent%.be, " ..
        "http://127%.0%.0%.1:%d+ go through the gateway", out)
      assert.matches("GOLIAT_API_TOKEN = %*%*%* %(environment%)", out)
      assert.not_matches("check%-secret%-token", out)
      local ev = cluster.events(dash)
      assert.equals(1, #ev.heartbeats)
      assert.equals(0, ev.polls)
      assert.equals(0, #ev.handed)
      assert.equals(1, ev.queued)
    end)

  it("says FAIL and exits 1 when the dashboard is down", function()
    cluster.stop(dash.proc)
    dash.proc:wait()
    local code, out = run_option(env, "--check")
    assert.equals(1, code, out)
    assert.matches("FAIL dashboard http://127%.0%.0%.1:%d+: unreachable", out)
  end)

  it("says FAIL when the gateway's hook is missing from the scripts, and " ..
    "nothing of it with GOLIAT_GATEWAY_HOOK=off", function()
      local copy = cluster.temp_dir("check-scripts")
      assert.equals(0, (H.run { argv = { "cp", "-R",
        fs.join(cluster.source_dir, "scripts"), copy } }))
      assert(fs.remove(fs.join(copy, "scripts", "pyhook", "sitecustomize.py")))
      local script = fs.join(copy, "scripts", "agent.lua")
      local r = H.run_host({ script, "--check" }, { env = env, timeout = 120 })
      local out = r.stdout .. r.stderr
      assert.equals(1, r.code, out)
      assert.matches("FAIL gateway hook: [^\n]*sitecustomize%.py is missing",
        out)
      env.GOLIAT_GATEWAY_HOOK = "off"
      r = H.run_host({ script, "--check" }, { env = env, timeout = 120 })
      assert.equals(0, r.code, r.stdout .. r.stderr)
      assert.not_matches("gateway hook", r.stdout)
    end)

  it("says FAIL when the study's interpreter is missing", function()
    env.GOLIAT_STUDY_COMMAND = '["no-such-python-x","-m","goliat","study"]'
    local code, out = run_option(env, "--check")
    assert.equals(1, code, out)
    assert.matches("FAIL study command: no%-such%-python%-x is not found", out)
  end)

  it("says FAIL when python cannot import the study's module", function()
    env.GOLIAT_STUDY_COMMAND = '["python3","-m","no_such_goliat_x","study"]'
    local code, out = run_option(env, "--check")
    assert.equals(1, code, out)
    assert.matches("FAIL study command: python cannot import no_such_goliat_x",
      out)
  end)

  it("says FAIL when the work dir has less free space than " ..
    "GOLIAT_MIN_FREE_GB (the agent would take no work)", function()
      env.GOLIAT_MIN_FREE_GB = "1000000000" -- an exabyte: never free
      local code, out = run_option(env, "--check")
      assert.equals(1, code, out)
      assert.matches("FAIL GOLIAT_WORK_DIR [^\n]*: writable, only [%d.]+ GB " ..
        "free: below GOLIAT_MIN_FREE_GB %(1e%+09%), the agent takes no new " ..
        "work until there is room", out)
    end)

  it("says FAIL when the work dir cannot be written, and WARN when the " ..
    "project has no configs/ nor data/", function()
      local blocked = fs.join(work, "a-file")
      assert(fs.write_atomic(blocked, "x"))
      env.GOLIAT_WORK_DIR = fs.join(blocked, "work") -- a file in the way
      env.GOLIAT_PROJECT_DIR = cluster.temp_dir("bare-project")
      local code, out = run_option(env, "--check")
      assert.equals(1, code, out)
      assert.matches("FAIL GOLIAT_WORK_DIR [^\n]*: cannot write there", out)
      assert.matches("WARN GOLIAT_PROJECT_DIR [^\n]*: has no configs/", out)
      assert.matches("WARN GOLIAT_PROJECT_DIR [^\n]*: has no data/", out)
    end)
end)

describe("--version", function()
  it("names the agent's version and its policy's hash, which an edit of " ..
    "agent.lua changes", function()
      local code, out = run_option({}, "--version")
      assert.equals(0, code, out)
      local version, hash = out:match("^goliat%-agent (%S+) %(policy (%x+), ")
      assert.truthy(version, out)
      -- the same as the host's own --version
      local r = H.run_host({ "--version" }, { timeout = 30 })
      assert.matches("^goliat%-host " .. version:gsub("%p", "%%%0") .. " ",
        r.stdout)
      -- an edited copy of the scripts
      local copy = cluster.temp_dir("edited")
      local scripts = fs.join(copy, "scripts")
      assert(fs.mkdir_p(scripts))
      local src = fs.join(cluster.source_dir, "scripts")
      for _, sub in ipairs { "", "lib", "protocol" } do
        assert(fs.mkdir_p(fs.join(scripts, sub)))
        for _, name in ipairs(fs.list(fs.join(src, sub)) or {}) do
          if name:match("%.lua$") then
            assert(fs.write_atomic(fs.join(scripts, sub, name),
              assert(fs.read(fs.join(src, sub, name)))))
          end
        end
      end
      local agent = fs.join(scripts, "agent.lua")
      assert(fs.append(agent, "\n-- an operator's edit\n"))
      r = H.run_host({ agent, "--version" }, { timeout = 30 })
      assert.equals(0, r.code, r.stdout .. r.stderr)
      local edited = r.stdout:match("%(policy (%x+), ")
      assert.truthy(edited, r.stdout)
      assert.are_not.equal(hash, edited)
    end)
end)

describe("--test", function()
  -- A copy of scripts/ and the shipped specs (spec/policy.list), as a VM
  -- has them; returns the copy's agent.lua.
  local function installed_copy()
    local root = cluster.temp_dir("installed")
    local src = cluster.source_dir
    local function copy(rel)
      local to = fs.join(root, rel)
      assert(fs.mkdir_p((to:gsub("[/\\][^/\\]+$", ""))))
      assert(fs.write_atomic(to, assert(fs.read(fs.join(src, rel)))))
    end
    for _, sub in ipairs { "scripts", "scripts/lib", "scripts/protocol",
      "spec/support" } do
      for _, name in ipairs(fs.list(fs.join(src, sub)) or {}) do
        if name:match("%.lua$") then copy(sub .. "/" .. name) end
      end
    end
    copy("spec/policy.list")
    copy("spec/policy.busted")
    for line in fs.read(fs.join(src, "spec", "policy.list")):gmatch("[^\n]+") do
      if not line:match("^#") then copy("spec/" .. line) end
    end
    return fs.join(root, "scripts", "agent.lua")
  end

  it("runs the shipped policy specs against an installed agent.lua and " ..
    "passes; an edit that breaks the policy fails it with a nonzero exit " ..
    "code", function()
      local agent = installed_copy()
      local r = H.run_host({ agent, "--test" }, { timeout = 120 })
      assert.equals(0, r.code, r.stdout .. r.stderr)
      assert.matches("policy specs: %d+ files in ", r.stdout)
      assert.matches("0 failures / 0 errors", r.stdout)
      assert.matches("policy specs: PASS\n$", r.stdout)
      -- an operator's edit: heartbeats every 7 s instead of 5
      local text = fs.read(agent)
      local edited, n = text:gsub("heartbeat_interval = 5,", "heartbeat_interval = 7,")
      assert.equals(1, n)
      assert(fs.write_atomic(agent, edited))
      r = H.run_host({ agent, "--test" }, { timeout = 120 })
      assert.is_true(r.code ~= 0, r.stdout)
      assert.matches("beats from start%-up every interval", r.stdout)
      assert.is_nil(r.stdout:find("policy specs: PASS", 1, true))
    end)

  it("says so, with exit code 2, when the specs are not installed",
    function()
      local agent = installed_copy()
      local root = agent:gsub("[/\\]scripts[/\\]agent%.lua$", "")
      assert(fs.remove(fs.join(root, "spec", "policy.list")))
      local r = H.run_host({ agent, "--test" }, { timeout = 60 })
      assert.equals(2, r.code, r.stdout .. r.stderr)
      assert.matches("the policy specs are not installed", r.stderr)
    end)
end)

describe("--status", function()
  local dash, work, env, agent

  before_each(function()
    dash = cluster.start_dashboard()
    work = cluster.temp_dir("status")
    env = cluster.agent_env(dash.url, work)
  end)

  after_each(function()
    if agent then cluster.stop(agent.proc) end
    cluster.stop(dash.proc)
    agent = nil
  end)

  it("says the agent is not running (exit 3), with the reports waiting",
    function()
      assert(fs.mkdir_p(fs.join(work, "outbox")))
      assert(fs.write_atomic(fs.join(work, "outbox", "000000000001.json"),
        '{"path":"/api/gui-update","body":{}}'))
      local code, out = run_option(env, "--status")
      assert.equals(3, code, out)
      assert.matches("agent: not running", out)
      assert.matches("outbox: 1 report waiting", out)
    end)

  it("shows a running agent idle, then with its study, in text and JSON",
    function()
      agent = cluster.start_agent(env, work)
      local out
      assert(cluster.wait_until(function()
        local code
        code, out = run_option(env, "--status")
        return code == 0 and out:find("heartbeat: ok (every ", 1, true)
      end, 30), "no running status: " .. tostring(out))
      assert.matches("agent: running %(pid " .. agent.proc.pid .. ",", out)
      assert.matches("agent: running [^\n]*; version [%w.]+, policy %x+%)",
        out)
      assert.matches("study: none", out)
      queue(dash, { duration_s = 60, steps = 1 }, { id = "st-1",
        split_index = 6 })
      assert(cluster.wait_until(function()
        local _
        _, out = run_option(env, "--status")
        return out:find("study: assignment st-1", 1, true)
      end, 30), "the study never showed: " .. tostring(out))
      assert.matches("study: assignment st%-1 %(split 6%), pid %d+, " ..
        "attempt 1, started %d+ s ago", out)
      local code, json = run_option(env, "--status", "--json")
      assert.equals(0, code)
      local info = cjson.decode(json)
      assert.is_true(info.running)
      assert.equals("st-1", info.status.study.assignment_id)
      assert.equals(0, info.outbox)
    end)
end)

describe("a settings file naming GOLIAT_LOG_FILE", function()
  it("sends the agent's log to that file (broken if only the environment " ..
    "can name it)", function()
      local work = cluster.temp_dir("logfile")
      local conf = fs.join(work, "agent.conf")
      local log = fs.join(work, "agent-file.log")
      assert(fs.write_atomic(conf, "GOLIAT_MONITORING_URL=http://127.0.0.1:9\n" ..
        "GOLIAT_LOG_FILE=" .. log .. "\nGOLIAT_LOG_KEEP=2\n"))
      local env = { GOLIAT_CONFIG = conf, GOLIAT_WORK_DIR = work,
        GOLIAT_PUBLIC_IP_URL = "", GOLIAT_MACHINE_ID = "spec-worker" }
      local agent = assert(host.proc.spawn { argv = { cluster.goliat_host,
        fs.join(cluster.source_dir, "scripts", "agent.lua") }, env = env,
        stdout = fs.join(work, "stderr.txt"), stderr = "stdout" })
      local ok = cluster.wait_until(function()
        return (fs.read(log) or ""):find("goliat agent", 1, true)
      end, 30)
      cluster.stop(agent)
      assert(ok, "no log in the file; stderr: " ..
        tostring(fs.read(fs.join(work, "stderr.txt"))))
      assert.not_matches("goliat agent", fs.read(fs.join(work, "stderr.txt")) or "")
    end)
end)
