-- Runs one study and records how it ended, so that an agent restarted while
-- the study ran (or after it ended) still learns its real exit code.
--
--   goliat-host scripts/study_wrapper.lua EXIT_FILE PROGRAM [ARG...]
--
-- The agent starts this wrapper as the root of the study's process tree;
-- the study runs in the same tree (so stopping the tree stops both), with
-- the wrapper's environment, working directory and output. When the study
-- ends, EXIT_FILE is written atomically:
--   {"exit_code": <n or absent>, "signal": "<name>" or absent,
--    "error": "<why it did not start>" or absent, "ended_at": <unix s>}
local host = require "host"
local cjson = require "cjson"

local args = { ... }
local exit_file = table.remove(args, 1)
if not exit_file or #args == 0 then
  io.stderr:write("usage: goliat-host study_wrapper.lua EXIT_FILE PROGRAM [ARG...]\n")
  os.exit(2)
end

-- The tree's SIGTERM (Ctrl-Break on Windows) is for the study: the wrapper
-- stays to record how the study took it.
local signals = host.sys.platform() == "windows" and { "SIGINT", "SIGBREAK" }
  or { "SIGINT", "SIGTERM", "SIGHUP" }
for _, name in ipairs(signals) do
  host.sys.on_signal(name, function() end)
end

local result = {}
local study, err = host.proc.spawn { argv = args, new_group = false }
if study then
  result.exit_code, result.signal = study:wait()
else
  result.error = "study failed to start: " .. tostring(err)
end
result.ended_at = host.time.now()
local ok, werr = host.fs.write_atomic(exit_file, cjson.encode(result))
if not ok then
  io.stderr:write("study_wrapper: cannot record the exit code: ", werr, "\n")
  os.exit(1)
end
os.exit(0)
