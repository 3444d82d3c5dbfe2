-- A host.http.serve server for tests/http_server_raw.py, started by
-- tests/http_server_raw.sh: goliat-host tests/http_server_fixture.lua PORTFILE
-- Listens on 127.0.0.1 (any free port, written to PORTFILE), with a small
-- max_body; GET /quit closes the server so that the host exits with 0,
-- GET /exit calls os.exit(0) at once.
local host = require "host"
local cjson = require "cjson"

local port_file = assert(..., "usage: http_server_fixture.lua PORTFILE")
local server

local routes = {}

routes["/echo"] = function(req)
  return 200, cjson.encode(req), { ["Content-Type"] = "application/json" }
end

routes["/slow"] = function(req)
  host.time.sleep(tonumber(req.query:match("s=([%d.]+)")) or 0.5)
  return 200, "slow " .. req.query
end

routes["/quit"] = function()
  host.task.spawn(function()
    host.time.sleep(0.1) -- let this reply go out first
    server:close()
  end)
  return 200, "bye"
end

-- Waits for ever without a timer: two tasks joining each other.
routes["/hang"] = function()
  local me = host.task.current()
  host.task.spawn(function()
    me:join()
  end):join()
end

routes["/exit"] = function()
  os.exit(0) -- with other requests in flight: nothing may leak or crash
end

local function handle(req)
  local route = routes[req.path]
  if not route then
    return 404, "no route " .. req.path
  end
  return route(req)
end

server = assert(host.http.serve({ max_body = 1024 }, handle))
assert(host.fs.write_atomic(port_file, tostring(server:port())))
