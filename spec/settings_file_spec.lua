-- The settings file (issue 10): KEY=VALUE lines found through
-- GOLIAT_CONFIG, beside agent.lua, or at the packaged path; the
-- environment wins over it, and it wins over agent.lua's defaults. The real
-- scripts/agent.lua and lib/settings.lua on the fake host.
local agent = require "agent"
local settings_lib = require "lib.settings"
local fake_host = require "support.fake_host"
local P = require "support.policy"

local BESIDE = settings_lib.scripts_dir(fake_host.new {}.host) ..
  "/goliat-agent.conf"
local PACKAGED = "/etc/goliat-host/goliat-agent.conf"

local function with_file(path, text, env)
  local e = { GOLIAT_WORK_DIR = "/work/agent" }
  for k, v in pairs(env or {}) do e[k] = v end
  local f = fake_host.new { env = e }
  if path then f.files[path] = text end
  return f
end

local function load(f)
  return agent.load_settings(f.host)
end

describe("the settings file", function()
  it("is read beside agent.lua, and its values and their lines are " ..
    "recorded (broken if the file is ignored)", function()
      local f = with_file(BESIDE, "# a comment\n\nGOLIAT_MONITORING_URL=" ..
        "http://dash.test\n  GOLIAT_POLL_INTERVAL = 42  \n")
      local s = assert(load(f))
      assert.equals("http://dash.test", s.monitoring_url)
      assert.equals(42, s.poll_interval)
      assert.equals(BESIDE, s.config_file)
      assert.equals(BESIDE .. ":4", s.sources.poll_interval)
      assert.is_nil(s.sources.heartbeat_interval) -- the default
      assert.equals(5, s.heartbeat_interval)
    end)

  it("loses to the environment, and wins over the defaults", function()
    local f = with_file(BESIDE, "GOLIAT_MONITORING_URL=http://file.test\n" ..
      "GOLIAT_HEARTBEAT_INTERVAL=7\n",
      { GOLIAT_MONITORING_URL = "http://env.test" })
    local s = assert(load(f))
    assert.equals("http://env.test", s.monitoring_url)
    assert.equals("environment", s.sources.monitoring_url)
    assert.equals(7, s.heartbeat_interval)
  end)

  it("named by GOLIAT_CONFIG is used instead of the one beside agent.lua",
    function()
      local f = with_file(BESIDE, "GOLIAT_MONITORING_URL=http://beside.test\n",
        { GOLIAT_CONFIG = "/srv/agent.conf" })
      f.files["/srv/agent.conf"] = "GOLIAT_MONITORING_URL=http://named.test\n"
      assert.equals("http://named.test", assert(load(f)).monitoring_url)
    end)

  it("named by GOLIAT_CONFIG but missing is an error naming both",
    function()
      local f = with_file(nil, nil, { GOLIAT_CONFIG = "/srv/nope.conf" })
      local s, err = load(f)
      assert.is_nil(s)
      assert.matches("GOLIAT_CONFIG", err)
      assert.matches("/srv/nope.conf", err)
    end)

  it("is found at the packaged path when there is none beside agent.lua",
    function()
      local f = with_file(PACKAGED, "GOLIAT_MONITORING_URL=http://pkg.test\n")
      assert.equals("http://pkg.test", assert(load(f)).monitoring_url)
    end)

  it("may be written by Notepad: a BOM, CRLF line ends and quotes",
    function()
      local f = with_file(BESIDE, "\239\187\191GOLIAT_MONITORING_URL=" ..
        "\"http://dash.test\"\r\nGOLIAT_STUDY_COMMAND=[\"py\",\"-m\"," ..
        "\"goliat\",\"study\"]\r\n")
      local s = assert(load(f))
      assert.equals("http://dash.test", s.monitoring_url)
      assert.same({ "py", "-m", "goliat", "study" }, s.study_command)
    end)

  -- PowerShell's `>` writes UTF-16 LE with a BOM; Notepad's "Unicode"
  -- the same; some tools write it without the BOM, or big-endian
  local function utf16(text, big, bom)
    local out = {}
    for c in text:gmatch(".") do
      out[#out + 1] = big and "\0" .. c or c .. "\0"
    end
    return (bom and (big and "\254\255" or "\255\254") or "") ..
      table.concat(out)
  end
  for name, bytes in pairs {
    ["little-endian with a BOM"] = utf16("GOLIAT_MONITORING_URL=http://d.test\r\n",
      false, true),
    ["big-endian with a BOM"] = utf16("GOLIAT_MONITORING_URL=http://d.test\n",
      true, true),
    ["little-endian without a BOM"] = utf16("GOLIAT_MONITORING_URL=x\n", false),
  } do
    it("saved as UTF-16 (" .. name .. ") is refused with a message that " ..
      "says so and how to save it as UTF-8", function()
        local f = with_file(BESIDE, bytes)
        local s, err = load(f)
        assert.is_nil(s)
        assert.matches("saved as UTF%-16", err)
        assert.matches("save it as UTF%-8", err)
        assert.matches(BESIDE:gsub("%p", "%%%0") .. ":1:", err)
      end)
  end

  local at = BESIDE:gsub("%p", "%%%0")
  for name, case in pairs {
    ["a line without ="] = { "GOLIAT_MONITORING_URL=http://d.test\n" ..
      "GOLIAT_API_TOKEN s3cret-token\n", at .. ":2: expected KEY=VALUE" },
    ["an unknown name (a typo)"] = { "GOLIAT_MONITORING_URL=http://d.test\n" ..
      "\nGOLIAT_POL_INTERVAL=5\n", at .. ":3: unknown setting GOLIAT_POL_INTERVAL" },
    ["a name set twice"] = { "GOLIAT_MONITORING_URL=http://d.test\n" ..
      "GOLIAT_MONITORING_URL=http://e.test\n",
      at .. ":2: .* set twice %(also on line 1%)" },
    ["a value that does not parse"] = { "GOLIAT_MONITORING_URL=http://d.test\n" ..
      "GOLIAT_HEARTBEAT_INTERVAL=often\n",
      "GOLIAT_HEARTBEAT_INTERVAL must be .*%(" .. at .. ":2%)" },
  } do
    it("with " .. name .. " is an error naming the file and the line, " ..
      "and the agent exits 2 without a request", function()
        local f = with_file(BESIDE, case[1])
        local s, err = load(f)
        assert.is_nil(s)
        assert.matches(case[2], err)
        assert.not_matches("s3cret", err) -- a bad line is never echoed
        local said = P.start_refused(f)
        assert.matches(case[2], said)
        assert.not_matches("s3cret", said)
        assert.equals(2, f.exit_code)
        assert.equals(0, #f.requests)
      end)
  end
end)

describe("the CA bundle", function()
  it("GOLIAT_CA_BUNDLE is given to every request (heartbeat, poll, " ..
    "config download)", function()
      local f = P.offline_fake { GOLIAT_CA_BUNDLE = "/etc/company-ca.pem" }
      f.files["/etc/company-ca.pem"] = "-----BEGIN CERTIFICATE-----\n"
      P.dashboard(f, { queue = { P.assignment() },
        configs = { [P.BLOB .. "/c3.json"] = "{}" } })
      P.start(f)
      assert.is_true(f:run_until(function() return #f:reports() >= 1 end, 60))
      local seen = {}
      for _, r in ipairs(f.requests) do
        assert.equals("/etc/company-ca.pem", r.cainfo, r.url)
        seen[r.url:match("^https?://[^/]+(/[%w/%-%.]*)")] = true
      end
      assert.is_true(seen["/api/heartbeat"] and seen["/api/assignment"] and
        seen["/c3.json"] and seen["/api/gui-update"])
    end)

  it("falls back on CURL_CA_BUNDLE, then SSL_CERT_FILE", function()
    local f = P.offline_fake { SSL_CERT_FILE = "/b.pem", CURL_CA_BUNDLE = "/a.pem" }
    f.files["/a.pem"], f.files["/b.pem"] = "x", "x"
    local s = assert(load(f))
    assert.equals("/a.pem", s.ca_bundle)
    assert.equals("environment, CURL_CA_BUNDLE", s.sources.ca_bundle)
  end)

  it("that is not a file stops the agent naming the variable", function()
    local f = P.offline_fake { GOLIAT_CA_BUNDLE = "/nope.pem" }
    local s, err = load(f)
    assert.is_nil(s)
    assert.matches("GOLIAT_CA_BUNDLE: the CA bundle /nope.pem is not a file", err)
  end)
end)
