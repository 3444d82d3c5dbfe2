-- Runs one study and records how it ended, so that an agent restarted while
-- the study ran (or after it ended) still learns its real exit code.
--
--   goliat-host scripts/study_wrapper.lua [OPTION...] EXIT_FILE PROGRAM [ARG...]
--
--   --grace S       seconds between SIGTERM and SIGKILL for what the study
--                   leaves running (default 10)
--   --log PATH      the study's log (the wrapper's own output): when it
--   --log-max N     grows past N bytes it is copied to PATH.1 and emptied
--
-- The agent starts this wrapper as the root of the study's process tree;
-- the study runs in the same tree (so stopping the tree stops both), with
-- the wrapper's environment, working directory and output. The wrapper
-- keeps the tree (host.proc.keep_tree): on Linux a descendant that the
-- study leaves behind, even one that left the process group, is
-- re-parented to the wrapper and ended after the study; on Windows the
-- wrapper holds the tree's Job Object for as long as the study runs.
--
-- When the study and what it left are gone, EXIT_FILE is written
-- atomically:
--   {"exit_code": <n or absent>, "signal": "<name>" or absent,
--    "error": "<why it did not start>" or absent, "ended_at": <unix s>}
-- The wrapper then exits with the study's exit code (128 + the signal's
-- number for a signal on POSIX, 127 when the study did not start), so that
-- the agent learns it even when EXIT_FILE cannot be written (a full disk).
local host = require "host"
local cjson = require "cjson"
local tree = require "lib.tree"

local function usage(why)
  io.stderr:write("study_wrapper: ", why, "\nusage: goliat-host " ..
    "study_wrapper.lua [--grace S] [--log PATH --log-max N] EXIT_FILE " ..
    "PROGRAM [ARG...]\n")
  os.exit(2)
end

local args, opts = { ... }, { grace = 10 }
while args[1] and args[1]:match("^%-%-") do
  local name = table.remove(args, 1):sub(3)
  local value = table.remove(args, 1)
  if name == "grace" or name == "log-max" then
    value = tonumber(value)
    if not value or value < 0 then usage("--" .. name .. " wants a number") end
  elseif name ~= "log" or not value then
    usage("unknown option --" .. name)
  end
  opts[name] = value
end
local exit_file = table.remove(args, 1)
if not exit_file or #args == 0 then usage("missing EXIT_FILE or PROGRAM") end

-- The tree's SIGTERM (Ctrl-Break on Windows) is for the study: the wrapper
-- stays to record how the study took it.
local windows = host.sys.platform() == "windows"
local signals = windows and { "SIGINT", "SIGBREAK" }
  or { "SIGINT", "SIGTERM", "SIGHUP" }
for _, name in ipairs(signals) do
  host.sys.on_signal(name, function() end)
end
host.proc.keep_tree() -- best effort: not every platform can

-- Keeps the log under its cap while the study runs.
local study_running = true
local function cap_log()
  while study_running do
    host.time.sleep(2)
    local st = host.fs.stat(opts.log)
    if st and st.size > opts["log-max"] then
      local ok, err = host.fs.copy_truncate(opts.log, opts.log .. ".1")
      if not ok then
        io.stderr:write("study_wrapper: cannot rotate the log: ", err, "\n")
      end
    end
  end
end

local SIGNAL_NUMBERS = { SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGILL = 4,
  SIGABRT = 6, SIGBUS = 7, SIGFPE = 8, SIGKILL = 9, SIGUSR1 = 10,
  SIGSEGV = 11, SIGUSR2 = 12, SIGPIPE = 13, SIGALRM = 14, SIGTERM = 15 }

local result = {}
local study, err = host.proc.spawn { argv = args, new_group = false }
if study then
  if opts.log and opts["log-max"] and opts["log-max"] > 0 then
    host.task.spawn("log cap", cap_log)
  end
  result.exit_code, result.signal = study:wait()
  study_running = false
else
  result.error = "study failed to start: " .. tostring(err)
end
-- what the study left running ends before it counts as ended
local left, stuck = tree.end_orphans(host, opts.grace)
if left > 0 then
  io.stderr:write(string.format("study_wrapper: the study left %d " ..
    "process(es) running: ended them%s\n", left,
    stuck > 0 and string.format(" (%d would not end)", stuck) or ""))
end
result.ended_at = host.time.now()
local code = result.exit_code or
  (result.signal and 128 + (SIGNAL_NUMBERS[result.signal] or 0)) or 127
local ok, werr = host.fs.write_atomic(exit_file, cjson.encode(result))
if not ok then
  io.stderr:write("study_wrapper: cannot record the exit code (", werr,
    "): exiting with it instead\n")
end
os.exit(code)
