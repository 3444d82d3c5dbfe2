-- The agent against an HTTPS dashboard whose certificate comes from a
-- private CA (issue 10): refused without GOLIAT_CA_BUNDLE, accepted with
-- it. Real processes: openssl makes the CA, python serves HTTPS on
-- 127.0.0.1, and the real agent talks to it.
local host = require "host"
local cluster = require "support.cluster"
local H = require "support.helpers"

local fs = host.fs

local function have(tool)
  return H.run({ argv = { "sh", "-c", "command -v " .. tool }, stdout = "null" }) == 0
end

describe("a dashboard behind a private CA", function()
  local dir, server, agent

  before_each(function()
    dir = H.tmpdir()
  end)

  after_each(function()
    if agent then cluster.stop(agent.proc) end
    if server and server:running() then server:kill() end
    agent, server = nil, nil
    H.rm_rf(dir)
  end)

  local function path(name) return fs.join(dir, name) end

  -- A CA, and a certificate for 127.0.0.1 signed by it; then the server.
  local function start_server()
    local script = string.format([[
      set -e; cd '%s'
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=spec-ca \
        -keyout ca.key -out ca.pem 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout srv.key -out srv.csr 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1\n' > ext.cnf
      openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key \
        -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null
    ]], dir)
    assert.equals(0, (H.run({ argv = { "sh", "-c", script } }, 60)))
    server = assert(host.proc.spawn { argv = { "python3",
      fs.join(cluster.source_dir, "spec", "fixtures", "https_dashboard.py"),
      path("srv.pem"), path("srv.key"), path("port"), path("requests") },
      stderr = path("server.err") })
    local port = cluster.wait_until(function()
      return tonumber(fs.read(path("port")) or "")
    end, 30)
    return "https://127.0.0.1:" .. assert(port, "the HTTPS server did not start")
  end

  -- The HTTPS server's URL and a work dir for the agent; nothing (the spec
  -- is pending) without openssl and python3.
  local function serve_and_work_dir()
    if not (have("openssl") and have("python3")) then
      pending("needs openssl and python3")
      return nil
    end
    local url = start_server()
    local work = path("work")
    assert(fs.mkdir_p(work))
    return url, work
  end

  local function heartbeats()
    local n = 0
    for line in (fs.read(path("requests")) or ""):gmatch("[^\n]+") do
      if line == "POST /api/heartbeat" then n = n + 1 end
    end
    return n
  end

  it("is refused without GOLIAT_CA_BUNDLE, and the log says it is TLS",
    function()
      local url, work = serve_and_work_dir()
      if not url then return end
      agent = cluster.start_agent(cluster.agent_env(url, work), work)
      assert(cluster.wait_until(function()
        return (fs.read(agent.log) or ""):find("heartbeat failed", 1, true)
      end, 30), "no failed heartbeat logged")
      assert.equals(0, heartbeats())
      assert.matches("certificate", fs.read(agent.log))
    end)

  it("makes --check say FAIL TLS without the CA, and OK with it", function()
    local url, work = serve_and_work_dir()
    if not url then return end
    local env = cluster.agent_env(url, work)
    env.CURL_CA_BUNDLE, env.SSL_CERT_FILE = "", "" -- this machine's own
    local agent_lua = fs.join(cluster.source_dir, "scripts", "agent.lua")
    local r = H.run_host({ agent_lua, "--check" }, { env = env, timeout = 60 })
    assert.equals(1, r.code, r.stdout)
    assert.matches("FAIL TLS: the dashboard's certificate is not trusted", r.stdout)
    assert.equals(0, heartbeats())
    env.GOLIAT_CA_BUNDLE = path("ca.pem")
    r = H.run_host({ agent_lua, "--check" }, { env = env, timeout = 60 })
    assert.matches("OK   TLS: certificate verified %(CA: [^\n]*ca%.pem%)", r.stdout)
    assert.matches("OK   heartbeat", r.stdout)
    assert.equals(1, heartbeats())
  end)

  it("is accepted with GOLIAT_CA_BUNDLE naming the CA", function()
    local url, work = serve_and_work_dir()
    if not url then return end
    agent = cluster.start_agent(cluster.agent_env(url, work,
      { GOLIAT_CA_BUNDLE = path("ca.pem") }), work)
    assert(cluster.wait_until(function() return heartbeats() >= 2 end, 30),
      "no heartbeat reached the HTTPS dashboard")
  end)
end)
