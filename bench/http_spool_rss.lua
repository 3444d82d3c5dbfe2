-- Memory of host.http.serve for one large upload, with and without
-- spool_dir (a measurement, not a test: it prints figures and asserts
-- nothing about them). Linux only (/proc/self/status).
--   goliat-host bench/http_spool_rss.lua spool|memory [MB]
-- The upload comes from a second goliat-host (host.http.request with
-- body_file), so that only the server's memory is counted here. Prints the
-- resident memory (VmRSS, RssAnon) before the upload, in the handler, after
-- the reply (and a full garbage collection), and the peak (VmHWM).
local host = require "host"

local mode, mb = arg[1], tonumber(arg[2] or "48")
assert(mode == "spool" or mode == "memory", "usage: http_spool_rss.lua spool|memory [MB]")

local function status()
  local text = assert(host.fs.read("/proc/self/status"), "no /proc/self/status")
  local function kib(name)
    return tonumber(text:match(name .. ":%s*(%d+)")) or 0
  end
  return { rss = kib("VmRSS"), anon = kib("RssAnon"), hwm = kib("VmHWM") }
end

local function show(what, s)
  print(string.format("%-16s VmRSS %7d KiB  RssAnon %7d KiB  VmHWM %7d KiB",
    what, s.rss, s.anon, s.hwm))
end

local dir = os.tmpname()
os.remove(dir)
assert(host.fs.mkdir_p(dir))
local spool = host.fs.join(dir, "spool")
assert(host.fs.mkdir_p(spool))
local input = host.fs.join(dir, "upload.bin")
do -- the upload, written 1 MiB at a time
  local f = assert(io.open(input, "wb"))
  local chunk = string.rep("0123456789abcdef", 65536)
  for _ = 1, mb do
    f:write(chunk)
  end
  f:close()
end
local client = host.fs.join(dir, "client.lua")
assert(host.fs.write_atomic(client, [[
local host = require "host"
local res, msg = host.http.request({ url = arg[1], body_file = arg[2], timeout = 300 })
print(res and res.status or msg)
]]))

local during
local opts = { max_body = (mb + 1) * 1024 * 1024 }
if mode == "spool" then
  opts.spool_dir = spool
end
local server = assert(host.http.serve(opts, function(req)
  during = status()
  return 200, tostring(req.body_size or #req.body)
end))
local url = "http://127.0.0.1:" .. server:port() .. "/"
assert(host.http.request({ url = url, body = "warm-up" }))

collectgarbage()
collectgarbage()
local before = status()
local out = host.fs.join(dir, "client.out")
local p = assert(host.proc.spawn({ argv = { assert(host.sys.exepath()), client, url, input },
  stdout = out }))
p:wait()
collectgarbage()
collectgarbage()
local after = status()
server:close()

print(string.format("%s, one upload of %d MiB: client said %s", mode, mb,
  (host.fs.read(out) or "?"):gsub("%s+$", "")))
show("before", before)
show("in the handler", during or before)
show("after", after)
-- the peak of the upload is at most VmHWM after minus VmRSS before (VmHWM
-- may have been reached earlier: then it did not rise at all)
print(string.format("growth: in the handler %+d KiB (RssAnon %+d), after %+d KiB; "
  .. "peak at most %+d KiB (VmHWM rose %+d KiB)",
  (during or before).rss - before.rss, (during or before).anon - before.anon,
  after.rss - before.rss, after.hwm - before.rss, after.hwm - before.hwm))
os.remove(out)
os.remove(client)
os.remove(input)
host.fs.remove(spool)
host.fs.remove(dir)
