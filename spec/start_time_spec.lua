-- A process's start time, the proof that a pid in the agent's state file
-- is still the study's wrapper, must survive the state file exactly. On
-- Windows it is a FILETIME of 18 digits, more than lua-cjson keeps of a
-- number: a restarted agent then never recognised its running study.
-- Runs on Linux and, against goliat-host.exe, under wine.
local host = require "host"
local cjson = require "cjson"
local H = require "support.helpers"
local agent = require "agent"

describe("host.proc.start_time", function()
  it("is an integer that survives the agent's state file digit for digit " ..
    "(broken when stored as a JSON number on Windows)", function()
      local dir = H.tmpdir()
      local script = host.fs.join(dir, "sleep.lua")
      assert(host.fs.write_atomic(script,
        'require("host").time.sleep(30)\n'))
      local p = assert(host.proc.spawn { argv = { H.host_binary(), script } })
      local t = assert(host.proc.start_time(p.pid))
      assert.equals("integer", math.type(t))
      -- what the agent writes and reads back
      local state = cjson.decode(cjson.encode {
        start_time = agent.start_time_text(t) })
      assert.equals(agent.start_time_text(host.proc.start_time(p.pid)),
        agent.start_time_text(state.start_time))
      -- and what it used to write: a number, rounded on Windows
      local as_number = cjson.decode(cjson.encode { t = t }).t
      if t > 1e14 then
        assert.are_not.equal(agent.start_time_text(t),
          agent.start_time_text(as_number))
      end
      p:kill()
      p:wait()
      H.rm_rf(dir)
    end)
end)
