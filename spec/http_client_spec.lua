-- host.http.request against a real HTTP server on 127.0.0.1 (host.http.serve).
-- Runs inside goliat-host: goliat-host spec/run.lua spec/http_client_spec.lua
local host = require "host"
local cjson = require "cjson"

local MB = 1024 * 1024

-- The routes of the test server; each returns what a handler returns.
local routes = {}

routes["/hello"] = function()
  return {
    status = 200,
    headers = { ["Content-Type"] = "text/plain", ["X-Greeting"] = "Hi" },
    body = "hello",
  }
end

routes["/echo"] = function(req)
  local echo = { method = req.method, body = req.body, headers = req.headers }
  return 200, cjson.encode(echo), { ["Content-Type"] = "application/json" }
end

routes["/status"] = function(req)
  local code = tonumber(req.query:match("code=(%d+)"))
  return code, "status " .. code
end

routes["/big"] = function()
  return 200, string.rep("x", 2 * MB)
end

routes["/sleep"] = function(req)
  host.time.sleep(tonumber(req.query:match("s=([%d.]+)")))
  return 200, "slept"
end

routes["/redirect"] = function()
  return 302, "moved", { Location = "/hello", ["X-First-Hop"] = "yes" }
end

routes["/to-file"] = function()
  return 302, "", { Location = "file:///etc/passwd" }
end

-- 5000 "0" bytes, gzip-compressed (41 bytes), sent as such
local GZIP_5000 = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xed\xc1" ..
  "\x31\x01\x00\x00\x00\xc2\xa0\x4a\xeb\x9f\xce\x14\x7e\x40\x01\x00" ..
  "\x00\x00\x00\x6f\x03\x04\x3d\xfc\xa8\x88\x13\x00\x00"

routes["/gzip"] = function()
  return 200, GZIP_5000, { ["Content-Encoding"] = "gzip",
    ["Content-Type"] = "application/json" }
end

routes["/peer"] = function(req)
  return 200, tostring(req.peer)
end

local function handle(req)
  local route = routes[req.path]
  if not route then
    return 404, "no route " .. req.path
  end
  return route(req)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local data = f:read("a")
  f:close()
  return data
end

-- A fresh path in the temporary folder (nothing is left there).
local function temp_path()
  local path = os.tmpname()
  os.remove(path)
  return path
end

describe("host.http.request", function()
  local server, base

  setup(function()
    server = assert(host.http.serve({ port = 0 }, handle))
    base = "http://127.0.0.1:" .. server:port()
  end)

  teardown(function()
    server:close()
  end)

  it("GET returns the status, lower-case headers and the body", function()
    local res, msg = host.http.request({ url = base .. "/hello" })
    assert.is_table(res, msg)
    assert.are.equal(200, res.status)
    assert.are.equal("hello", res.body)
    assert.are.equal("text/plain", res.headers["content-type"])
    assert.are.equal("Hi", res.headers["x-greeting"])
    assert.is_nil(res.headers["X-Greeting"])
    for name in pairs(res.headers) do
      assert.are.equal(name:lower(), name)
    end
  end)

  it("with compressed = true asks for a compressed reply and decodes it; "
    .. "max_size is the decoded size (broken if the option is ignored or the "
    .. "limit counts the compressed bytes)", function()
    local res = assert(host.http.request({ url = base .. "/echo",
      compressed = true }))
    assert.matches("gzip", cjson.decode(res.body).headers["accept-encoding"])
    res = assert(host.http.request({ url = base .. "/gzip", compressed = true }))
    assert.are.equal(string.rep("0", 5000), res.body)
    local none, msg, code = host.http.request({ url = base .. "/gzip",
      compressed = true, max_size = 4000 })
    assert.is_nil(none)
    assert.is_string(msg)
    assert.are.equal("too_large", code)
    -- without it nothing is asked for, and the body comes as it was sent
    res = assert(host.http.request({ url = base .. "/echo" }))
    assert.is_nil(cjson.decode(res.body).headers["accept-encoding"])
  end)

  it("POST sends the body and the headers", function()
    local res = assert(host.http.request({
      url = base .. "/echo",
      body = "a=1&b=2",
      headers = { ["X-Token"] = "secret", ["X-Number"] = 42 },
    }))
    assert.are.equal(200, res.status)
    local echo = cjson.decode(res.body)
    assert.are.equal("POST", echo.method)
    assert.are.equal("a=1&b=2", echo.body)
    assert.are.equal("secret", echo.headers["x-token"])
    assert.are.equal("42", echo.headers["x-number"])
    assert.matches("^goliat%-host/", echo.headers["user-agent"])
  end)

  it("sends each request's own headers: a set kept from before only when "
    .. "it is the same, a set too long to be kept whole, and a changed one as "
    .. "changed (broken if the kept header lists are matched loosely or the "
    .. "text they are matched by is cut)", function()
    local long = string.rep("v", 3000) -- over the 2 KiB of text kept per set
    local sets = {
      { ["X-A"] = "1" },
      { ["X-A"] = "1", ["X-B"] = long },
      { ["X-A"] = "1" }, -- kept from the first request
      { ["X-A"] = "12" },
      { ["X-A"] = "1", ["X-B"] = long .. "w" },
      { ["X-A"] = 7 },
    }
    for round = 1, 2 do
      for i, headers in ipairs(sets) do
        local res = assert(host.http.request({ url = base .. "/echo",
          headers = headers }))
        local seen = cjson.decode(res.body).headers
        local what = "round " .. round .. ", set " .. i
        assert.are.equal(tostring(headers["X-A"]), seen["x-a"], what)
        assert.are.equal(headers["X-B"], seen["x-b"], what)
      end
    end
  end)

  it("sends another method with a body when asked", function()
    local res = assert(host.http.request({
      url = base .. "/echo", method = "PUT", body = "new contents",
    }))
    local echo = cjson.decode(res.body)
    assert.are.equal("PUT", echo.method)
    assert.are.equal("new contents", echo.body)
  end)

  it("sends a body of binary bytes unchanged", function()
    local bytes = "\0\1\2\255 end"
    local res = assert(host.http.request({
      url = base .. "/echo", method = "POST", body = bytes,
    }))
    assert.are.equal(#bytes, tonumber(cjson.decode(res.body)
      .headers["content-length"]))
  end)

  it("gives an HTTP error status as a response, not a failure", function()
    for _, code in ipairs({ 404, 500 }) do
      local res, msg = host.http.request({
        url = base .. "/status?code=" .. code,
      })
      assert.is_table(res, msg)
      assert.are.equal(code, res.status)
      assert.are.equal("status " .. code, res.body)
    end
  end)

  it("refuses a body over max_size with too_large and keeps working",
    function()
      local res, msg, code = host.http.request({
        url = base .. "/big", max_size = MB,
      })
      assert.is_nil(res)
      assert.are.equal("too_large", code)
      assert.matches("larger than", msg)
      local again = assert(host.http.request({ url = base .. "/big" }))
      assert.are.equal(2 * MB, #again.body)
    end)

  it("accepts a body of exactly max_size bytes", function()
    local res = assert(host.http.request({
      url = base .. "/hello", max_size = 5,
    }))
    assert.are.equal("hello", res.body)
    local _, _, code = host.http.request({
      url = base .. "/hello", max_size = 4,
    })
    assert.are.equal("too_large", code)
  end)

  it("raises for a file:// URL", function()
    local ok, err = pcall(host.http.request, { url = "file:///etc/passwd" })
    assert.is_false(ok)
    assert.matches("only http and https URLs are allowed", err)
  end)

  it("raises for other schemes and for a missing url", function()
    for _, url in ipairs({ "ftp://127.0.0.1/", "gopher://127.0.0.1/",
      "127.0.0.1/hello", "" }) do
      local ok, err = pcall(host.http.request, { url = url })
      assert.is_false(ok, url)
      assert.matches("only http and https", err)
    end
    local ok, err = pcall(host.http.request, {})
    assert.is_false(ok)
    assert.matches("url", err)
  end)

  it("accepts an upper-case HTTP scheme", function()
    local url = "HTTP://127.0.0.1:" .. server:port() .. "/hello"
    local res = assert(host.http.request({ url = url }))
    assert.are.equal("hello", res.body)
  end)

  it("raises for options of the wrong type or value", function()
    local bad = {
      { url = base, timeout = "soon" },
      { url = base, timeout = -1 },
      { url = base, connect_timeout = 0 },
      { url = base, max_size = -5 },
      { url = base, headers = "X-A: b" },
      { url = base, headers = { ["X-A"] = { 1 } } },
      { url = base, headers = { ["X-A"] = "b\r\nX-Injected: yes" } },
      { url = base, headers = { ["Bad Name"] = "b" } },
      { url = base, body = {} },
      { url = base, method = "GE T" },
      { url = base, follow_redirects = "yes" },
    }
    for i, opts in ipairs(bad) do
      local ok = pcall(host.http.request, opts)
      assert.is_false(ok, "case " .. i)
    end
  end)

  it("raises when called outside a task", function()
    local co = coroutine.wrap(function()
      return pcall(host.http.request, { url = base .. "/hello" })
    end)
    local ok, err = co()
    assert.is_false(ok)
    assert.matches("must be called from a task", err)
  end)

  it("does not follow redirects unless asked", function()
    local res = assert(host.http.request({ url = base .. "/redirect" }))
    assert.are.equal(302, res.status)
    assert.are.equal("/hello", res.headers["location"])
  end)

  it("follows redirects and keeps only the last response's headers",
    function()
      local res = assert(host.http.request({
        url = base .. "/redirect", follow_redirects = true,
      }))
      assert.are.equal(200, res.status)
      assert.are.equal("hello", res.body)
      assert.are.equal("Hi", res.headers["x-greeting"])
      assert.is_nil(res.headers["x-first-hop"])
      assert.is_nil(res.headers["location"])
    end)

  it("refuses a redirect to file:// with code protocol", function()
    local res, msg, code = host.http.request({
      url = base .. "/to-file", follow_redirects = true,
    })
    assert.is_nil(res)
    assert.are.equal("protocol", code)
    assert.is_string(msg)
  end)

  it("reports a refused connection with code connect", function()
    local other = assert(host.http.serve({ port = 0 }, handle))
    local port = other:port()
    other:close()
    local res, msg, code = host.http.request({
      url = "http://127.0.0.1:" .. port .. "/hello",
    })
    assert.is_nil(res)
    assert.are.equal("connect", code)
    assert.is_string(msg)
  end)

  it("fails with code tls when https meets a plain HTTP server", function()
    local url = "https://127.0.0.1:" .. server:port() .. "/hello"
    local res, msg, code = host.http.request({ url = url, timeout = 5 })
    assert.is_nil(res)
    assert.are.equal("tls", code)
    assert.is_string(msg)
  end)

  it("gives up after timeout seconds with code timeout", function()
    local started = host.time.monotonic()
    local res, msg, code = host.http.request({
      url = base .. "/sleep?s=2", timeout = 0.3,
    })
    assert.is_nil(res)
    assert.are.equal("timeout", code)
    assert.is_string(msg)
    assert.is_true(host.time.monotonic() - started < 1.8)
  end)

  it("does not put the URL in failure messages", function()
    local _, msg = host.http.request({
      url = base .. "/sleep?s=2&token=hunter2", timeout = 0.2,
    })
    assert.is_string(msg)
    assert.is_nil(msg:find("hunter2", 1, true))
  end)

  it("streams the body into the output file", function()
    local path = temp_path()
    local res = assert(host.http.request({
      url = base .. "/big", output = path,
    }))
    assert.are.equal(200, res.status)
    assert.is_nil(res.body)
    local data = read_file(path)
    os.remove(path)
    assert.are.equal(2 * MB, #data)
    assert.are.equal(string.rep("x", 2 * MB), data)
  end)

  it("removes the output file when the transfer fails", function()
    local path = temp_path()
    local f = assert(io.open(path, "wb"))
    f:write("old contents")
    f:close()
    local res, _, code = host.http.request({
      url = base .. "/big", output = path, max_size = MB,
    })
    assert.is_nil(res)
    assert.are.equal("too_large", code)
    assert.is_nil(read_file(path))

    res, _, code = host.http.request({
      url = base .. "/sleep?s=2", output = path, timeout = 0.2,
    })
    assert.is_nil(res)
    assert.are.equal("timeout", code)
    assert.is_nil(read_file(path))
  end)

  it("fails with code io when the output file cannot be opened", function()
    local res, msg, code = host.http.request({
      url = base .. "/hello", output = temp_path() .. "/missing/out",
    })
    assert.is_nil(res)
    assert.are.equal("io", code)
    assert.is_string(msg)
  end)

  it("refuses an output file that is a FIFO at once, with code io and "
    .. "EFTYPE's message, and leaves the FIFO (broken if the open waits for "
    .. "a reader: the loop stands still)", function()
      local H = require "support.helpers"
      if H.windows then pending("no FIFOs on Windows") end
      local dir = H.tmpdir()
      finally(function() H.rm_rf(dir) end)
      local fifo = host.fs.join(dir, "fifo")
      assert.equal(0, (H.run({ argv = { "mkfifo", fifo } })))
      local script = host.fs.join(dir, "fifo.lua")
      assert(host.fs.write_atomic(script, [=[
        local host = require "host"
        host.task.spawn(function()
          local res, msg, code = host.http.request({ url = arg[2],
            output = arg[1] })
          io.stdout:write(tostring(res), "|", tostring(msg), "|",
            tostring(code), "\n")
        end)
      ]=]))
      -- in a child with a time limit: a host that blocks fails the test
      local r = H.run_host({ script, fifo, base .. "/hello" }, { timeout = 20 })
      assert.is_false(r.timed_out, "the host blocked on the FIFO")
      assert.equal(0, r.code, r.stderr)
      assert.equal("nil|cannot open the output file: "
        .. "inappropriate file type or format|io\n", r.stdout)
      assert.equal("other", host.fs.stat(fifo).type) -- left where it was
    end)

  describe("body_file", function()
    -- A server of its own, that checks the bytes it gets against `expected`
    -- and counts requests.
    local upload, upload_base, expected, hits

    local bytes = require("support.helpers").bytes

    local function write_file(path, data)
      local f = assert(io.open(path, "wb"))
      f:write(data)
      f:close()
    end

    setup(function()
      upload = assert(host.http.serve({ max_body = 16 * MB }, function(req)
        hits = hits + 1
        if req.path == "/307" then
          return 307, "", { Location = "/check" }
        end
        return 200, cjson.encode({
          method = req.method,
          same = req.body == expected,
          size = #req.body,
          ["content-length"] = req.headers["content-length"] or false,
          ["transfer-encoding"] = req.headers["transfer-encoding"] or false,
          expect = req.headers["expect"] or false,
        })
      end))
      upload_base = "http://127.0.0.1:" .. upload:port()
    end)

    teardown(function()
      upload:close()
    end)

    before_each(function()
      hits = 0
    end)

    local function send(opts)
      opts.url = upload_base .. (opts.url or "/check")
      local res, msg = host.http.request(opts)
      assert.is_table(res, msg)
      assert.are.equal(200, res.status)
      return cjson.decode(res.body)
    end

    it("sends the file's exact bytes as a POST with its Content-Length, not "
      .. "chunked, without waiting for 100 Continue", function()
        local path = temp_path()
        expected = bytes(5 * MB + 3)
        write_file(path, expected)
        local got = send({ body_file = path })
        os.remove(path)
        assert.are.equal("POST", got.method)
        assert.is_true(got.same, "the bytes differ")
        assert.are.equal(#expected, got.size)
        assert.are.equal(tostring(#expected), got["content-length"])
        assert.is_false(got["transfer-encoding"])
        assert.is_false(got.expect)
        assert.are.equal(1, hits)
      end)

    it("sends it with another method when asked, and an empty file as an "
      .. "empty body", function()
        local path = temp_path()
        expected = bytes(1000)
        write_file(path, expected)
        local got = send({ body_file = path, method = "PUT" })
        assert.are.equal("PUT", got.method)
        assert.is_true(got.same)
        write_file(path, "")
        expected = ""
        got = send({ body_file = path })
        os.remove(path)
        assert.are.equal("POST", got.method)
        assert.is_true(got.same)
        assert.are.equal("0", got["content-length"])
      end)

    it("sends the whole file again after a 307 redirect (curl rewinds it)", function()
      local path = temp_path()
      expected = bytes(2 * MB)
      write_file(path, expected)
      local got = send({ url = "/307", body_file = path, follow_redirects = true })
      os.remove(path)
      assert.are.equal(2, hits)
      assert.are.equal("POST", got.method)
      assert.is_true(got.same, "the bytes sent again differ")
    end)

    it("fails with code io and sends nothing when the file cannot be opened",
      function()
        for _, path in ipairs({ temp_path(), temp_path() .. "/missing/file" }) do
          local res, msg, code = host.http.request({ url = upload_base .. "/check",
            body_file = path })
          assert.is_nil(res)
          assert.are.equal("io", code)
          assert.matches("body file", msg)
        end
        local dir = os.tmpname() -- a folder is not a file to send
        os.remove(dir)
        assert(host.fs.mkdir_p(dir))
        local res, _, code = host.http.request({ url = upload_base .. "/check",
          body_file = dir })
        host.fs.remove(dir)
        assert.is_nil(res)
        assert.are.equal("io", code)
        assert.are.equal(0, hits)
      end)

    it("raises when given together with body", function()
      local path = temp_path()
      write_file(path, "x")
      local ok, err = pcall(host.http.request, { url = upload_base .. "/check",
        body = "x", body_file = path })
      os.remove(path)
      assert.is_false(ok)
      assert.matches("body_file", err)
      assert.has_error(function()
        host.http.request({ url = upload_base .. "/check", body_file = 5 })
      end)
      assert.are.equal(0, hits)
    end)

    it("closes the file when the request ends, whatever the outcome", function()
      if host.sys.platform() == "windows" then
        pending("reads /proc: Linux")
      end
      local path = temp_path()
      expected = bytes(MB)
      write_file(path, expected)
      assert.is_true(send({ body_file = path }).same)
      local closed = assert(host.http.serve({}, function() end))
      local port = closed:port()
      closed:close()
      local res, _, code = host.http.request({ url = "http://127.0.0.1:" .. port .. "/",
        body_file = path })
      assert.is_nil(res)
      assert.are.equal("connect", code)
      -- this host's open files, as a child lists them
      local out = temp_path()
      local p = assert(host.proc.spawn({ argv = { "ls", "-l", "/proc/" .. host.sys.pid() .. "/fd" },
        stdout = out }))
      assert.are.equal(0, (p:wait()))
      local fds = read_file(out)
      os.remove(out)
      os.remove(path)
      assert.matches("socket:", fds) -- the listing is of open files
      assert.is_nil(fds:find(path, 1, true), "still open: " .. path)
    end)
  end)

  it("serves 20 sequential requests over reused connections", function()
    local peers = {}
    for i = 1, 20 do
      local res, msg = host.http.request({ url = base .. "/peer" })
      assert.is_table(res, "request " .. i .. ": " .. tostring(msg))
      assert.are.equal(200, res.status)
      peers[res.body] = true
    end
    local distinct = 0
    for _ in pairs(peers) do
      distinct = distinct + 1
    end
    -- the server sees the client's port: one connection for all
    assert.are.equal(1, distinct)
  end)

  it("keeps a connection the server closed while it was idle out of the " ..
    "way, and the next request opens a new one (broken if the closed " ..
    "connection is reused or its socket keeps waking the loop)", function()
      local other = assert(host.http.serve({ port = 0 }, handle))
      local port = other:port()
      local url = "http://127.0.0.1:" .. port .. "/peer"
      local first = assert(host.http.request({ url = url }))
      assert.are.equal(200, first.status)
      other:close() -- closes the kept connection
      host.time.sleep(0.2) -- the client sees it close while idle
      other = assert(host.http.serve({ port = port }, handle))
      local second, msg = host.http.request({ url = url })
      other:close()
      assert.is_table(second, msg)
      assert.are.equal(200, second.status)
      assert.are_not.equal(first.body, second.body)
    end)

  it("does not hand its connections down to a child process (broken if a " ..
    "study could hold the agent's dashboard connection open)", function()
      if host.sys.platform() == "windows" then
        pending("reads /proc: Linux")
      end
      local res = assert(host.http.request({ url = base .. "/peer" }))
      assert.are.equal(200, res.status) -- a kept connection now
      -- the child lists its sockets, then the machine's TCP sockets
      local out = temp_path()
      local p = assert(host.proc.spawn({ argv = { "sh", "-c",
        "ls -l /proc/$$/fd; echo TCP; cat /proc/net/tcp /proc/net/tcp6" },
        stdout = out }))
      assert.are.equal(0, (p:wait()))
      local text = read_file(out)
      os.remove(out)
      local fds, tcp = text:match("^(.*)\nTCP\n(.*)$")
      assert.is_truthy(fds, text)
      local is_tcp = {}
      for line in tcp:gmatch("[^\n]+") do
        local inode = line:match("^%s*%d+:%s+%S+%s+%S+%s+%x+%s+%S+%s+%S+%s+%S+"
          .. "%s+%d+%s+%d+%s+(%d+)")
        if inode then is_tcp[inode] = true end
      end
      assert.is_truthy(next(is_tcp), "no TCP socket found: " .. tcp)
      for inode in fds:gmatch("socket:%[(%d+)%]") do
        assert.is_nil(is_tcp[inode], "inherited TCP socket " .. inode)
      end
    end)

  it("takes a CA file (cainfo) on every platform's TLS backend, also for " ..
    "plain HTTP (broken if an option the backend lacks fails the request: " ..
    "Schannel has no CA directory)", function()
      local ca = temp_path()
      local f = assert(io.open(ca, "wb"))
      f:write("not a certificate, and not read for plain HTTP\n")
      f:close()
      local res, msg = host.http.request({ url = base .. "/hello", cainfo = ca })
      os.remove(ca)
      assert.is_table(res, msg)
      assert.are.equal("hello", res.body)
    end)

  it("sends each request its own headers while header lists are kept for " ..
    "reuse (broken if a kept list is sent with another set of headers)",
    function()
      local sets = {}
      for i = 1, 6 do -- more sets than are kept
        sets[i] = { ["X-Set"] = tostring(i), ["X-Extra-" .. i] = "e" .. i }
      end
      for round = 1, 3 do
        for i = 1, 6 do
          local res = assert(host.http.request({ url = base .. "/echo",
            headers = sets[i], body = "r" .. round }))
          local got = cjson.decode(res.body).headers
          assert.are.equal(tostring(i), got["x-set"])
          assert.are.equal("e" .. i, got["x-extra-" .. i])
          for j = 1, 6 do
            if j ~= i then assert.is_nil(got["x-extra-" .. j]) end
          end
        end
      end
    end)

  it("runs concurrent requests from several tasks", function()
    local tasks = {}
    for i = 1, 5 do
      tasks[i] = host.task.spawn(function()
        local res = assert(host.http.request({ url = base .. "/sleep?s=0.2" }))
        return res.body
      end)
    end
    for i = 1, 5 do
      local ok, body = tasks[i]:join()
      assert.is_true(ok, body)
      assert.are.equal("slept", body)
    end
  end)

  it("lets other tasks' timers keep their rhythm while a request waits",
    function()
      local ticks, stop = 0, false
      local ticker = host.task.spawn("ticker", function()
        for _ = 1, 100 do
          if stop then
            break
          end
          host.time.sleep(0.1)
          ticks = ticks + 1
        end
      end)
      local res = assert(host.http.request({ url = base .. "/sleep?s=1.5" }))
      local during = ticks
      stop = true
      assert.is_true(ticker:join())
      assert.are.equal("slept", res.body)
      assert.is_true(during >= 8, "only " .. during .. " ticks in 1.5 s")
    end)
end)
