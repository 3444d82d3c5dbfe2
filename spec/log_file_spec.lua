-- GOLIAT_LOG_FILE, GOLIAT_LOG_MAX_BYTES and GOLIAT_LOG_KEEP: the host's log
-- in a file rotated by size. Real goliat-host children log lines of a known
-- size into real files; only host.* and goliat-host itself, so that it runs
-- under wine too.
local host = require "host"
local H = require "support.helpers"
local fs = host.fs

-- `lines N LEN TAG` logs N info lines of LEN bytes each (stamp, level and
-- newline included), numbered TAG00001, TAG00002, ...; `utf8` logs a line
-- outside ASCII; `child` logs a line and starts a goliat-host child that
-- logs two (tag C) with its stderr inherited.
local FIXTURE = [[
local host = require "host"
local mode = arg[1]
if mode == "lines" then
  local n, len, tag = tonumber(arg[2]), tonumber(arg[3]), arg[4]
  for i = 1, n do
    local head = string.format("%s%05d ", tag, i)
    host.log.info(head .. string.rep("x", len - 32 - #head))
  end
elseif mode == "utf8" then
  host.log.warn("%s", "h\u{e9}llo \u{fc} \u{20ac} \u{6f22}\u{5b57}")
elseif mode == "child" then
  host.log.info("parent")
  local p = assert(host.proc.spawn { argv = { host.sys.exepath(), arg[0],
    "lines", "2", "100", "C" } })
  assert(p:wait() == 0, "the child failed")
end
]]

-- stamp, level, message: "2026-11-28T03:00:00.123Z info  L00001 xxx"
local LINE = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ info  (%u%d%d%d%d%d) x*$"

describe("the log file (GOLIAT_LOG_FILE)", function()
  local dir, logs, script, log
  before_each(function()
    dir = H.tmpdir()
    logs = fs.join(dir, "logs")
    assert(fs.mkdir_p(logs))
    script = fs.join(dir, "fixture.lua")
    assert(fs.write_atomic(script, FIXTURE))
    log = fs.join(logs, "agent.log")
  end)
  after_each(function()
    H.rm_rf(dir)
  end)

  -- Run the fixture with args and GOLIAT_LOG_* from env (GOLIAT_LOG_FILE is
  -- the test's agent.log unless env says otherwise); returns run_host's
  -- result after checking the exit code.
  local function run(env, ...)
    local e = { GOLIAT_LOG_FILE = log, GOLIAT_LOG_LEVEL = "info",
      GOLIAT_LOG_MAX_BYTES = "", GOLIAT_LOG_KEEP = "" }
    for k, v in pairs(env) do e[k] = v end
    local r = H.run_host({ script, ... }, { env = e, timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    return r
  end

  -- The tags of the fixture's lines in text, in order; each line is checked
  -- to be len bytes long and well formed. Other lines (warnings) are
  -- skipped.
  local function tags(text, len)
    local out = {}
    for line in text:gmatch("([^\n]*)\n") do
      local tag = line:match(LINE)
      if tag then
        assert.equal(len, #line + 1, "line " .. tag .. " has the wrong length")
        out[#out + 1] = tag
      end
    end
    return out
  end

  local function file_tags(name, len)
    return tags(assert(fs.read(fs.join(logs, name))), len)
  end

  local function range(tag, first, last)
    local out = {}
    for i = first, last do
      out[#out + 1] = string.format("%s%05d", tag, i)
    end
    return out
  end

  local function size(name)
    return assert(fs.stat(fs.join(logs, name))).size
  end

  it("writes every line to the file and none to stderr (broken if the file is "
    .. "ignored or lines are doubled)", function()
      local r = run({}, "lines", "3", "100", "L")
      assert.same(range("L", 1, 3), file_tags("agent.log", 100))
      assert.equal(300, size("agent.log"))
      assert.equal("", r.stderr)
      assert.same({ "agent.log" }, fs.list(logs))
    end)

  it("keeps lines outside ASCII byte for byte (broken if the file is written in "
    .. "another encoding)", function()
      run({}, "utf8")
      local text = assert(fs.read(log))
      assert.matches(" warn  h\u{e9}llo \u{fc} \u{20ac} \u{6f22}\u{5b57}\n$", text)
    end)

  it("rotates before a line would take the file past GOLIAT_LOG_MAX_BYTES, the "
    .. "newest lines in the file and the next newest in .1 (broken if rotation comes "
    .. "late, early, or renames in the wrong order)", function()
      -- 10 lines of 100 bytes fit in 1050, an 11th does not
      run({ GOLIAT_LOG_MAX_BYTES = "1050", GOLIAT_LOG_KEEP = "5" },
        "lines", "35", "100", "L")
      assert.same({ "agent.log", "agent.log.1", "agent.log.2", "agent.log.3" },
        fs.list(logs))
      assert.same(range("L", 31, 35), file_tags("agent.log", 100))
      assert.same(range("L", 21, 30), file_tags("agent.log.1", 100))
      assert.same(range("L", 11, 20), file_tags("agent.log.2", 100))
      assert.same(range("L", 1, 10), file_tags("agent.log.3", 100))
      for _, name in ipairs { "agent.log.1", "agent.log.2", "agent.log.3" } do
        assert.equal(1000, size(name)) -- full, and never past 1050
      end
      assert.equal(500, size("agent.log"))
    end)

  it("keeps exactly GOLIAT_LOG_KEEP rotated copies and drops the oldest lines "
    .. "(broken if copies pile up or the newest are lost)", function()
      run({ GOLIAT_LOG_MAX_BYTES = "1050", GOLIAT_LOG_KEEP = "2" },
        "lines", "55", "100", "L")
      assert.same({ "agent.log", "agent.log.1", "agent.log.2" }, fs.list(logs))
      assert.same(range("L", 51, 55), file_tags("agent.log", 100))
      assert.same(range("L", 41, 50), file_tags("agent.log.1", 100))
      assert.same(range("L", 31, 40), file_tags("agent.log.2", 100))
    end)

  it("GOLIAT_LOG_KEEP=0 empties the file instead of keeping a copy (broken if a "
    .. ".1 appears or the file grows past the maximum)", function()
      run({ GOLIAT_LOG_MAX_BYTES = "1050", GOLIAT_LOG_KEEP = "0" },
        "lines", "25", "100", "L")
      assert.same({ "agent.log" }, fs.list(logs))
      assert.same(range("L", 21, 25), file_tags("agent.log", 100))
    end)

  it("a line longer than the maximum gets a file of its own (broken if it is "
    .. "dropped or rotation never ends)", function()
      run({ GOLIAT_LOG_MAX_BYTES = "150", GOLIAT_LOG_KEEP = "5" },
        "lines", "3", "200", "L")
      assert.same({ "agent.log", "agent.log.1", "agent.log.2" }, fs.list(logs))
      assert.same({ "L00003" }, file_tags("agent.log", 200))
      assert.same({ "L00002" }, file_tags("agent.log.1", 200))
      assert.same({ "L00001" }, file_tags("agent.log.2", 200))
    end)

  it("a restart appends to the file and counts what it holds (broken if the "
    .. "file is emptied or its size is taken as 0)", function()
      local env = { GOLIAT_LOG_MAX_BYTES = "1050", GOLIAT_LOG_KEEP = "3" }
      run(env, "lines", "5", "100", "A")
      run(env, "lines", "7", "100", "B")
      assert.same({ "agent.log", "agent.log.1" }, fs.list(logs))
      local first = range("A", 1, 5)
      for _, tag in ipairs(range("B", 1, 5)) do first[#first + 1] = tag end
      assert.same(first, file_tags("agent.log.1", 100))
      assert.equal(1000, size("agent.log.1"))
      assert.same(range("B", 6, 7), file_tags("agent.log", 100))
    end)

  it("a file that cannot be opened: one warning on stderr, then every line there "
    .. "(broken if lines are lost or the host fails)", function()
      local bad = fs.join(dir, "no such folder", "agent.log")
      local r = run({ GOLIAT_LOG_FILE = bad }, "lines", "3", "100", "L")
      local first = r.stderr:match("^([^\n]*)\n")
      assert.matches(" warn  cannot open the log file ", first, 1, true)
      assert.matches(bad, first, 1, true)
      assert.matches("logging to standard error", first, 1, true)
      assert.equal(1, select(2, r.stderr:gsub(" warn  ", "")))
      assert.same(range("L", 1, 3), tags(r.stderr, 100))
      assert.is_false(fs.exists(fs.join(dir, "no such folder")))
    end)

  it("a symbolic link planted at the file's path is refused, not written " ..
    "through: one warning on stderr, then every line there (broken if a host " ..
    "run as root could be made to append to any file)", function()
      if H.windows then
        pending("symbolic links: creating one needs a privilege on Windows")
      end
      local victim = fs.join(dir, "victim")
      assert(fs.write_atomic(victim, "precious"))
      assert.equal(0, (H.run({ argv = { "ln", "-s", victim, log } })))
      local r = run({}, "lines", "3", "100", "L")
      assert.matches("^[^\n]* warn  cannot open the log file ", r.stderr)
      assert.equal(1, select(2, r.stderr:gsub(" warn  ", "")))
      assert.same(range("L", 1, 3), tags(r.stderr, 100))
      assert.equal("precious", fs.read(victim))
    end)

  it("a file that cannot be written (a full disk, /dev/full): one warning on "
    .. "stderr, then every line there (broken if lines are lost)", function()
      if H.windows or not fs.exists("/dev/full") then
        pending("needs /dev/full (Linux)")
      end
      local r = run({ GOLIAT_LOG_FILE = "/dev/full" }, "lines", "3", "100", "L")
      assert.matches("^[^\n]* warn  cannot write to the log file /dev/full %(", r.stderr)
      assert.equal(1, select(2, r.stderr:gsub(" warn  ", "")))
      assert.same(range("L", 1, 3), tags(r.stderr, 100))
    end)

  it("a bad GOLIAT_LOG_MAX_BYTES: a warning in the log, and 10 MiB (broken if a "
    .. "bad value is taken or silently ignored)", function()
      local mib = 1048576
      run({ GOLIAT_LOG_MAX_BYTES = "10MB", GOLIAT_LOG_KEEP = "1" },
        "lines", "11", tostring(mib), "L")
      assert.same({ "agent.log", "agent.log.1" }, fs.list(logs))
      local old = assert(fs.read(fs.join(logs, "agent.log.1")))
      assert.matches("^[^\n]* warn  GOLIAT_LOG_MAX_BYTES=10MB is not a whole number "
        .. "of bytes > 0; using 10485760\n", old)
      -- the warning and 9 lines fit in 10 MiB, a 10th does not
      assert.is_true(#old <= 10 * mib and #old > 9 * mib, "size " .. #old)
      assert.same(range("L", 1, 9), tags(old, mib))
      assert.same(range("L", 10, 11), file_tags("agent.log", mib))
    end)

  it("a bad GOLIAT_LOG_KEEP: a warning in the log, and 5 copies (broken if a bad "
    .. "value is taken or silently ignored)", function()
      local env = { GOLIAT_LOG_MAX_BYTES = "1050", GOLIAT_LOG_KEEP = "-1" }
      run(env, "lines", "1", "100", "A")
      assert.matches("^[^\n]* warn  GOLIAT_LOG_KEEP=%-1 is not a whole number from 0 "
        .. "to 100; using 5\n", assert(fs.read(log)))
      run(env, "lines", "80", "100", "B")
      assert.same({ "agent.log", "agent.log.1", "agent.log.2", "agent.log.3",
        "agent.log.4", "agent.log.5" }, fs.list(logs))
      -- oldest to newest: the last lines without a gap, 5 copies' worth
      local all = {}
      for _, name in ipairs { "agent.log.5", "agent.log.4", "agent.log.3",
        "agent.log.2", "agent.log.1", "agent.log" } do
        for _, tag in ipairs(file_tags(name, 100)) do all[#all + 1] = tag end
      end
      assert.same(range("B", 80 - #all + 1, 80), all)
      assert.same(range("B", 80 - #all + 1, 80 - #all + 10),
        file_tags("agent.log.5", 100))
    end)

  it("a goliat-host started by the host does not inherit the file (broken if a "
    .. "study's wrapper would log into the agent's file)", function()
      local r = run({}, "child")
      local text = assert(fs.read(log))
      assert.matches(" info  parent\n$", text)
      assert.equal(1, select(2, text:gsub("\n", "")))
      assert.same(range("C", 1, 2), tags(r.stderr, 100))
    end)
end)
