-- The study wrapper (scripts/study_wrapper.lua) with real processes and
-- files: goliat-host itself is the study, so that it runs on Windows (wine)
-- too; what needs POSIX tools is pending elsewhere, with the reason.
local host = require "host"
local cjson = require "cjson"
local H = require "support.helpers"

local fs = host.fs
local exe = H.host_binary()
local source = host.sys.getenv("GOLIAT_SOURCE_DIR") or assert(host.sys.cwd())
local wrapper = fs.join(source, "scripts", "study_wrapper.lua")
local function fixture(name) return fs.join(source, "spec", "fixtures", name) end

describe("the study wrapper", function()
  local dir, recorded
  before_each(function()
    dir = H.tmpdir()
    recorded = {}
  end)
  after_each(function()
    -- only pids this spec recorded, and only while they still run
    for _, pid in ipairs(recorded) do
      if pid > 1 and H.alive(pid) then
        H.run({ argv = { "kill", "-KILL", tostring(pid) }, stderr = "null" })
      end
    end
    H.rm_rf(dir)
  end)

  -- Runs the wrapper to its end; returns its exit code and its output.
  local function wrap(args)
    local argv = { exe, wrapper }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local out = fs.join(dir, "wrapper.log")
    local code, sig = H.run({ argv = argv, stdout = out, stderr = "stdout" }, 120)
    return code, fs.read(out) or "", sig
  end

  it("records the study's exit code in the exit file and exits with it",
    function()
      local exit_file = fs.join(dir, "exit.json")
      local code = wrap { exit_file, exe, fixture("exit_code.lua"), "7" }
      assert.equals(7, code)
      assert.equals(7, cjson.decode((assert(fs.read(exit_file)))).exit_code)
    end)

  it("exits with the study's exit code when the exit file cannot be " ..
    "written (a full disk), and says so in the log", function()
      -- a folder with a file in it where the exit file should go
      local exit_file = fs.join(dir, "exit.json")
      assert(fs.mkdir_p(exit_file))
      assert(fs.write_atomic(fs.join(exit_file, "keep"), "x"))
      local code, out = wrap { exit_file, exe, fixture("exit_code.lua"), "7" }
      assert.equals(7, code) -- it used to exit 1, leaving the agent nothing
      assert.matches("cannot record the exit code", out)
    end)

  it("keeps the study's log under --log-max: the rest goes to .1", function()
    local exit_file, log = fs.join(dir, "exit.json"), fs.join(dir, "study.log")
    -- 40 chunks of 5000 bytes, 0.2 s apart: 200000 bytes over 8 s; the
    -- wrapper looks every 2 s
    local argv = { exe, wrapper, "--log", log, "--log-max", "10000",
      exit_file, exe, fixture("chatty.lua"), "5000", "40", "0.2" }
    local code = H.run({ argv = argv, stdout = log, stderr = "stdout" }, 120)
    assert.equals(0, code)
    local rotated = assert(fs.stat(log .. ".1"), "no rotated copy")
    assert.is_true(rotated.size > 10000)
    assert.is_true(assert(fs.stat(log)).size < 200000,
      "the log was never emptied")
  end)

  it("ends what the study leaves running, even a process that left its " ..
    "group and session (setsid), before it writes the exit file", function()
      if H.windows then
        pending("POSIX: on Windows the Job Object holds every descendant")
        return
      end
      if host.sys.platform() ~= "linux" then
        pending("needs Linux's child subreaper")
        return
      end
      local exit_file = fs.join(dir, "exit.json")
      local bg, detached = fs.join(dir, "bg.pid"), fs.join(dir, "detached.pid")
      local script = string.format("sleep 300 & echo $! > '%s'; " ..
        "setsid sh -c 'trap \"\" TERM; sleep 300' </dev/null >/dev/null 2>&1 & " ..
        "echo $! > '%s'; exit 3", bg, detached)
      local code = wrap { "--grace", "1", exit_file, "sh", "-c", script }
      local pids = { tonumber(fs.read(bg)), tonumber(fs.read(detached)) }
      for _, pid in ipairs(pids) do recorded[#recorded + 1] = pid end
      assert.equals(3, code)
      assert.equals(3, cjson.decode((assert(fs.read(exit_file)))).exit_code)
      -- gone once the wrapper has ended (they used to sleep on for 300 s)
      assert.is_false(H.alive(pids[1]), "the background child still runs")
      assert.is_false(H.alive(pids[2]), "the setsid child still runs")
    end)
end)
