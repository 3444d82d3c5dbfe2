-- Client cases that need a raw server (tests/http_client_raw.py):
--   goliat-host tests/http_client_raw.lua PORT [TLSPORT CERT]
-- Prints one line per check and exits 1 when any failed.
local host = require "host"

local port, tls_port, cert = ...
assert(port, "usage: http_client_raw.lua PORT [TLSPORT CERT]")
local base = "http://127.0.0.1:" .. port
local MB = 1024 * 1024
local failed = 0

local function check(name, fn)
  local ok, err = pcall(fn)
  print((ok and "ok   " or "FAIL ") .. name .. (ok and "" or ": " ..
    tostring(err)))
  if not ok then
    failed = failed + 1
  end
end

local function expect_failure(opts, want)
  local res, msg, code = host.http.request(opts)
  assert(res == nil, "expected a failure, got a response")
  assert(code == want, "code " .. tostring(code) .. " (" .. tostring(msg) ..
    "), wanted " .. want)
end

check("a chunked body within max_size is read whole", function()
  local res = assert(host.http.request({ url = base .. "/chunked?n=300000" }))
  assert(res.status == 200 and #res.body == 300000)
end)

check("a chunked body over max_size gives too_large", function()
  expect_failure({ url = base .. "/chunked?n=" .. 2 * MB, max_size = MB },
    "too_large")
end)

check("an endless chunked body stops at max_size", function()
  expect_failure({ url = base .. "/endless", max_size = MB, timeout = 20 },
    "too_large")
end)

check("an endless body into a file stops at max_size, file removed",
  function()
    local path = os.tmpname()
    expect_failure({
      url = base .. "/endless", max_size = MB, output = path, timeout = 20,
    }, "too_large")
    assert(io.open(path) == nil, "output file left behind")
  end)

check("a close-delimited body over max_size gives too_large", function()
  expect_failure({
    url = base .. "/close-delimited?n=" .. 2 * MB, max_size = MB,
  }, "too_large")
end)

check("a close-delimited body within max_size is read whole", function()
  local res = assert(host.http.request({
    url = base .. "/close-delimited?n=70000",
  }))
  assert(#res.body == 70000, #res.body)
end)

check("repeated headers are joined with a comma, in order", function()
  local res = assert(host.http.request({ url = base .. "/repeated" }))
  assert(res.headers["set-cookie"] == "a=1, b=2, c=3",
    res.headers["set-cookie"])
  assert(res.headers["x-spaced"] == "padded value", res.headers["x-spaced"])
end)

check("a connection dropped mid-body gives transfer", function()
  expect_failure({ url = base .. "/drop" }, "transfer")
end)

if tls_port then
  local tls_base = "https://127.0.0.1:" .. tls_port

  check("https with the server's CA in cainfo works", function()
    local res = assert(host.http.request({
      url = tls_base .. "/repeated", cainfo = cert,
    }))
    assert(res.status == 200 and res.body == "ok")
  end)

  check("https to a self-signed server fails with tls", function()
    expect_failure({ url = tls_base .. "/repeated" }, "tls")
  end)

  check("https to a name the certificate lacks fails with tls", function()
    expect_failure({
      url = "https://localhost:" .. tls_port .. "/repeated", cainfo = cert,
    }, "tls")
  end)
end

check("the host still works after all that", function()
  local res = assert(host.http.request({ url = base .. "/quit" }))
  assert(res.body == "bye")
end)

if failed > 0 then
  os.exit(1)
end
