-- host.http.serve, driven through host.http.request on 127.0.0.1.
-- Runs inside goliat-host: goliat-host spec/run.lua spec/http_server_spec.lua
-- (raw-protocol cases are in tests/http_server_raw.py).
local host = require "host"

local function url(server, path)
  return "http://127.0.0.1:" .. server:port() .. (path or "/")
end

-- A server for one test, closed when the test ends however it ends.
local function serve(opts, handler)
  local server, msg, code = host.http.serve(opts, handler)
  assert(server, tostring(msg) .. " " .. tostring(code))
  finally(function()
    server:close()
  end)
  return server
end

local function get(server, path, opts)
  opts = opts or {}
  opts.url = url(server, path)
  local res, msg, code = host.http.request(opts)
  assert(res, tostring(msg) .. " " .. tostring(code))
  return res
end

describe("host.http.serve", function()
  describe("requests", function()
    it("gives the handler method, path, query, target, lower-case headers, body and peer",
      function()
        local seen
        local server = serve({}, function(req)
          seen = req
          return 200, "ok"
        end)
        local res = get(server, "/a/b?x=1&y=two", {
          method = "PUT",
          body = "the body",
          headers = { ["X-Mixed-Case"] = "Value" },
        })
        assert.are.equal(200, res.status)
        assert.are.equal("PUT", seen.method)
        assert.are.equal("/a/b", seen.path)
        assert.are.equal("x=1&y=two", seen.query)
        assert.are.equal("/a/b?x=1&y=two", seen.target)
        assert.are.equal("Value", seen.headers["x-mixed-case"])
        assert.is_nil(seen.headers["X-Mixed-Case"])
        for name in pairs(seen.headers) do
          assert.are.equal(name:lower(), name)
        end
        assert.are.equal("the body", seen.body)
        assert.matches("^127%.0%.0%.1:%d+$", seen.peer)
      end)

    it("gives an empty query and an empty body when there are none", function()
      local seen
      local server = serve({}, function(req)
        seen = req
        return 204
      end)
      assert.are.equal(204, get(server, "/").status)
      assert.are.equal("GET", seen.method)
      assert.are.equal("/", seen.path)
      assert.are.equal("", seen.query)
      assert.are.equal("", seen.body)
    end)

    it("passes bodies of binary bytes unchanged", function()
      local bytes = "\0\1\2\255\r\n end"
      local server = serve({}, function(req)
        return 200, req.body
      end)
      assert.are.equal(bytes, get(server, "/", { body = bytes }).body)
    end)
  end)

  describe("responses", function()
    it("takes status, headers and body from a returned table", function()
      local server = serve({}, function()
        return { status = 201, headers = { ["X-Kind"] = "table" }, body = "made" }
      end)
      local res = get(server, "/")
      assert.are.equal(201, res.status)
      assert.are.equal("table", res.headers["x-kind"])
      assert.are.equal("made", res.body)
      assert.are.equal("4", res.headers["content-length"])
    end)

    it("takes status, body and headers returned as several values", function()
      local server = serve({}, function()
        return 202, "accepted", { ["Content-Type"] = "text/plain" }
      end)
      local res = get(server, "/")
      assert.are.equal(202, res.status)
      assert.are.equal("accepted", res.body)
      assert.are.equal("text/plain", res.headers["content-type"])
    end)

    it("defaults a table's status to 200 and a missing body to empty", function()
      local server = serve({}, function(req)
        if req.path == "/table" then
          return { body = "no status" }
        end
        return 200
      end)
      local res = get(server, "/table")
      assert.are.equal(200, res.status)
      assert.are.equal("no status", res.body)
      res = get(server, "/status-only")
      assert.are.equal(200, res.status)
      assert.are.equal("", res.body)
    end)

    it("sends a header once per value when given an array", function()
      local server = serve({}, function()
        return 200, "", { ["Set-Cookie"] = { "a=1", "b=2" } }
      end)
      assert.are.equal("a=1, b=2", get(server, "/").headers["set-cookie"])
    end)

    it("answers HEAD with the length of the body but no body", function()
      local server = serve({}, function()
        return 200, "twelve bytes"
      end)
      local res = get(server, "/", { method = "HEAD" })
      assert.are.equal(200, res.status)
      assert.are.equal("12", res.headers["content-length"])
      assert.are.equal("", res.body)
    end)
  end)

  describe("handler failures", function()
    before_each(function()
      host.log.set_level("error") -- keep the expected error lines short
    end)
    after_each(function()
      host.log.set_level("info")
    end)

    it("turns an error in the handler into a 500 and keeps serving", function()
      local server = serve({}, function(req)
        if req.path == "/boom" then
          error("handler exploded")
        end
        return 200, "still here"
      end)
      assert.are.equal(500, get(server, "/boom").status)
      local res = get(server, "/fine")
      assert.are.equal(200, res.status)
      assert.are.equal("still here", res.body)
    end)

    it("turns invalid results into a 500", function()
      local bad = {
        ["/nothing"] = function() end,
        ["/string"] = function() return "just a string" end,
        ["/low-status"] = function() return 99, "x" end,
        ["/high-status"] = function() return 600, "x" end,
        ["/float-status"] = function() return 200.5, "x" end,
        ["/body-number"] = function() return 200, 42 end,
        ["/headers-string"] = function() return 200, "x", "h" end,
        ["/header-injection"] = function()
          return 200, "x", { ["X-A"] = "1\r\nX-Injected: yes" }
        end,
        ["/header-name"] = function() return 200, "x", { ["bad name"] = "1" } end,
        ["/header-value"] = function() return 200, "x", { ["X-A"] = true } end,
      }
      local server = serve({}, function(req)
        return bad[req.path]()
      end)
      for path in pairs(bad) do
        local res = get(server, path)
        assert.are.equal(500, res.status, path)
        assert.is_nil(res.headers["x-injected"], path)
      end
    end)

    it("answers 500 when the watchdog stops a handler that never yields", function()
      local old = host.task.set_limit(0.3)
      finally(function()
        host.task.set_limit(old)
      end)
      local server = serve({}, function(req)
        if req.path == "/spin" then
          while true do end
        end
        return 200, "ok"
      end)
      assert.are.equal(500, get(server, "/spin").status)
      assert.are.equal(200, get(server, "/ok").status)
    end)
  end)

  describe("concurrency", function()
    it("runs a slow handler without holding up a fast one (the fast one ends first)",
      function()
        local server = serve({}, function(req)
          if req.path == "/slow" then
            host.time.sleep(1)
          end
          return 200, req.path
        end)
        local finished = {}
        local start = host.time.monotonic()
        local slow = host.task.spawn(function()
          local res = get(server, "/slow")
          finished[#finished + 1] = res.body
        end)
        host.time.sleep(0.1) -- the slow request is in its handler now
        local res = get(server, "/fast")
        finished[#finished + 1] = res.body
        assert.is_true(host.time.monotonic() - start < 0.9)
        assert.is_true((slow:join()))
        assert.are.same({ "/fast", "/slow" }, finished)
      end)

    it("lets a handler wait, here for a request to the same server", function()
      local server
      server = serve({}, function(req)
        if req.path == "/outer" then
          local inner = get(server, "/inner")
          return 200, "outer+" .. inner.body
        end
        return 200, "inner"
      end)
      assert.are.equal("outer+inner", get(server, "/outer").body)
    end)
  end)

  describe("limits", function()
    it("answers 413 to a body larger than max_body", function()
      local called
      local server = serve({ max_body = 100 }, function(req)
        called = true
        return 200, tostring(#req.body)
      end)
      assert.are.equal("100", get(server, "/", { body = ("x"):rep(100) }).body)
      assert.is_true(called)
      called = false
      local res = get(server, "/", { body = ("x"):rep(101) })
      assert.are.equal(413, res.status)
      assert.is_false(called)
    end)
  end)

  describe("listening", function()
    it("binds 127.0.0.1 by default and port() gives the real port", function()
      local server = serve({}, function(req)
        return 200, req.peer
      end)
      local port = server:port()
      assert.is_true(math.type(port) == "integer" and port > 0 and port < 65536)
      assert.matches("127%.0%.0%.1:" .. port, tostring(server))
      assert.matches("^127%.0%.0%.1:", get(server, "/").body)
      -- not reachable on the machine's other addresses
      for _, iface in ipairs(host.sys.interfaces()) do
        if iface.family == "inet" and not iface.internal then
          local res, _, code = host.http.request({
            url = "http://" .. iface.address .. ":" .. port .. "/",
            connect_timeout = 2,
          })
          assert.is_nil(res, iface.address)
          assert.are.equal("connect", code)
        end
      end
    end)

    it("listens on an explicit port", function()
      local probe = serve({}, function() end)
      local port = probe:port()
      probe:close()
      local server = serve({ port = port }, function()
        return 200, "here"
      end)
      assert.are.equal(port, server:port())
      assert.are.equal("here", get(server, "/").body)
    end)

    it("listens on IPv6 loopback when asked", function()
      local server, msg, code = host.http.serve({ host = "::1" }, function(req)
        return 200, req.peer
      end)
      if not server then
        pending("no IPv6 loopback here: " .. tostring(msg) .. " " .. tostring(code))
        return
      end
      finally(function()
        server:close()
      end)
      local res = assert(host.http.request({
        url = "http://[::1]:" .. server:port() .. "/",
      }))
      assert.matches("^%[::1%]:%d+$", res.body)
    end)

    it("fails with EADDRINUSE on a port already taken", function()
      local server = serve({}, function() end)
      local other, msg, code = host.http.serve({ port = server:port() }, function() end)
      assert.is_nil(other)
      assert.are.equal("EADDRINUSE", code)
      assert.is_string(msg)
    end)

    it("fails with EINVAL for a host that is not an IP address", function()
      local server, msg, code = host.http.serve({ host = "not an address" }, function() end)
      assert.is_nil(server)
      assert.are.equal("EINVAL", code)
      assert.matches("not an address", msg)
    end)

    it("raises on misuse", function()
      local function h() end
      assert.has_error(function() host.http.serve({}, nil) end)
      assert.has_error(function() host.http.serve({ port = "80" .. "x" }, h) end)
      assert.has_error(function() host.http.serve({ port = 70000 }, h) end)
      assert.has_error(function() host.http.serve({ port = 1.5 }, h) end)
      assert.has_error(function() host.http.serve({ max_body = -1 }, h) end)
      assert.has_error(function() host.http.serve("opts", h) end)
    end)
  end)

  describe("closing", function()
    it("stops listening on close(): a later request cannot connect", function()
      local server = serve({}, function()
        return 200, "up"
      end)
      local where = url(server, "/")
      assert.are.equal("up", get(server, "/").body)
      server:close()
      server:close() -- idempotent
      local res, msg, code = host.http.request({ url = where, connect_timeout = 2 })
      assert.is_nil(res)
      assert.is_string(msg)
      assert.are.equal("connect", code)
    end)

    it("closes a <close> variable's server at the end of its scope", function()
      local where
      do
        local server <close> = assert(host.http.serve({}, function()
          return 200
        end))
        where = url(server, "/")
        assert.are.equal(200, assert(host.http.request({ url = where })).status)
      end
      local res, _, code = host.http.request({ url = where, connect_timeout = 2 })
      assert.is_nil(res)
      assert.are.equal("connect", code)
    end)

    it("drops the reply of a handler still running when the server closes", function()
      local finished = false
      local server = serve({}, function()
        host.time.sleep(0.3)
        finished = true
        return 200, "too late"
      end)
      local client = host.task.spawn(function()
        return host.http.request({ url = url(server, "/"), timeout = 5 })
      end)
      host.time.sleep(0.1)
      server:close()
      local ok, res, _, code = client:join()
      assert.is_true(ok)
      assert.is_nil(res)
      assert.is_string(code)
      host.time.sleep(0.4)
      assert.is_true(finished)
    end)

    it("keeps serving when the script drops the server object", function()
      local weak = setmetatable({}, { __mode = "v" })
      weak.server = assert(host.http.serve({}, function()
        return 200, "alive"
      end))
      collectgarbage()
      collectgarbage()
      local server = weak.server
      assert.is_not_nil(server)
      finally(function()
        server:close()
      end)
      assert.are.equal("alive", get(server, "/").body)
    end)
  end)
end)
