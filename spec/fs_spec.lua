-- host.fs: whole-file reads, atomic writes, appends and folders. Each test
-- works in a fresh folder under /tmp that is removed afterwards.
local host = require "host"
local H = require "support.helpers"

local fs = host.fs

describe("host.fs", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(function()
    H.rm_rf(dir)
  end)

  local function path(...)
    return fs.join(dir, ...)
  end

  local function ln_s(target, name)
    if H.windows then
      pending("symbolic links: creating one needs a privilege on Windows")
    end
    assert.equal(0, (H.run({ argv = { "ln", "-s", target, name } })))
  end

  describe("read and write_atomic", function()
    it("round-trip binary data with NUL bytes (broken if data is cut at a NUL or "
      .. "translated)", function()
        local data = "a\0b\r\n\255\0" .. string.rep("\0\1\2", 1000) .. "end"
        assert.is_true(fs.write_atomic(path("bin"), data))
        local back = fs.read(path("bin"))
        assert.equal(#data, #back)
        assert.equal(data, back)
      end)

    it("round-trip an empty file and a file larger than one read chunk (broken at "
      .. "buffer boundaries)", function()
        assert.is_true(fs.write_atomic(path("empty"), ""))
        assert.equal("", fs.read(path("empty")))
        local big = string.rep("0123456789abcdef", 300000) -- 4.8 MB
        assert.is_true(fs.write_atomic(path("big"), big))
        assert.equal(big, fs.read(path("big")))
      end)

    it("reads a file whose size says nothing (procfs says 0) to its end, past "
      .. "the first read (broken if the buffer is sized by the file's size "
      .. "alone, or not grown)", function()
        if H.windows then pending("no procfs on Windows") end
        -- /proc/self/maps of a host with Lua and libcurl loaded: well over
        -- the first 4 KiB read, with a size of 0
        local maps = assert(fs.read("/proc/self/maps"))
        assert.is_true(#maps > 8192, #maps)
        assert.matches("\n$", maps)
        assert.matches("%[stack%]", maps)
      end)

    it("with sync = false still replaces the file whole and leaves the flush out, "
      .. "while the default flushes (broken if the option is ignored either way; "
      .. "strace counts the fsync calls)", function()
        assert.is_true(fs.write_atomic(path("s"), "old", { sync = false }))
        assert.is_true(fs.write_atomic(path("s"), "new", { sync = false }))
        assert.equal("new", fs.read(path("s")))
        assert.same({ "s" }, fs.list(dir))
        assert.has_error(function() fs.write_atomic(path("s"), "x", { sync = "no" }) end,
          "bad argument #3 to 'write_atomic' (sync must be a boolean)")
        if H.windows or H.run({ argv = { "sh", "-c", "command -v strace" },
            stdout = path("which") }) ~= 0 then
          pending("needs strace (Linux)")
        end
        local function fsyncs(opts)
          local script = path("w.lua")
          assert(fs.write_atomic(script, 'local host = require "host"\n' ..
            "assert(host.fs.write_atomic(arg[1], 'data', " .. opts .. "))\n"))
          local out = path("strace.txt")
          -- (LeakSanitizer cannot work under ptrace: off in a sanitized
          -- build, where it would fail the child at exit)
          assert.equal(0, (H.run({ argv = { "strace", "-f", "-qq", "-e",
            "trace=fsync,fdatasync", "-o", out, H.host_binary(), script,
            path("target") }, env = { ASAN_OPTIONS = "detect_leaks=0" } })))
          local n = 0
          for _ in (fs.read(out) or ""):gmatch("fsync%(") do n = n + 1 end
          for _ in (fs.read(out) or ""):gmatch("fdatasync%(") do n = n + 1 end
          return n
        end
        assert.equal(0, fsyncs("{ sync = false }"))
        assert.is_true(fsyncs("nil") >= 1)
      end)

    it("sync flushes a file written by other means, and answers nil, msg, code "
      .. "for a missing file or a folder (broken if it flushes nothing: strace "
      .. "counts the fsync calls)", function()
        assert.is_true(fs.append(path("a"), "appended"))
        assert.is_true(fs.sync(path("a")))
        assert.equal("appended", fs.read(path("a")))
        local ok, msg, code = fs.sync(path("missing"))
        assert.is_nil(ok)
        assert.is_string(msg)
        assert.equal("ENOENT", code)
        assert.is_nil((fs.sync(dir)))
        if H.windows or H.run({ argv = { "sh", "-c", "command -v strace" },
            stdout = path("which") }) ~= 0 then
          pending("needs strace (Linux)")
        end
        local script = path("s.lua")
        assert(fs.write_atomic(script, 'local host = require "host"\n' ..
          "assert(host.fs.sync(arg[1]))\n"))
        local out = path("strace.txt")
        assert.equal(0, (H.run({ argv = { "strace", "-f", "-qq", "-e",
          "trace=fsync,fdatasync", "-o", out, H.host_binary(), script,
          path("a") }, env = { ASAN_OPTIONS = "detect_leaks=0" } })))
        local n = select(2, (fs.read(out) or ""):gsub("f%a*sync%(", ""))
        assert.equal(1, n)
      end)

    it("replaces an existing file and leaves no temporary file behind (broken if the "
      .. "temp file is not renamed over)", function()
        assert.is_true(fs.write_atomic(path("f"), "old contents that are longer"))
        assert.is_true(fs.write_atomic(path("f"), "new"))
        assert.equal("new", fs.read(path("f")))
        assert.same({ "f" }, fs.list(dir))
      end)

    it("fails into a missing folder with nil, msg, 'ENOENT' and leaves nothing (broken "
      .. "if the failure raises or leaks a temp file)", function()
        local ok, msg, code = fs.write_atomic(path("nope", "f"), "x")
        assert.is_nil(ok)
        assert.is_string(msg)
        assert.equal("ENOENT", code)
        assert.same({}, fs.list(dir))
      end)

    it("read of a missing file returns nil, msg, 'ENOENT' (broken if it raises or "
      .. "returns an empty string)", function()
        local data, msg, code = fs.read(path("missing"))
        assert.is_nil(data)
        assert.matches("missing", msg)
        assert.equal("ENOENT", code)
      end)

    it("read of a folder fails with nil, msg, code (broken if it returns garbage)",
      function()
        local data, msg, code = fs.read(dir)
        assert.is_nil(data)
        assert.is_string(msg)
        assert.equal("EISDIR", code)
      end)

    it("raises on a non-string argument (broken if misuse is a failure value)", function()
      assert.has_error(function()
        fs.write_atomic(path("f"), {})
      end)
      assert.has_error(function()
        fs.read()
      end)
    end)

    it("raises on a path with a NUL byte in it, for every path argument " ..
      "(broken if the path is cut at the NUL: remove('keep\\0.tmp') " ..
      "removed keep)", function()
        assert(fs.write_atomic(path("keep"), "kept"))
        local bad = path("keep") .. "\0.tmp"
        for name, call in pairs {
          read = function() return fs.read(bad) end,
          write_atomic = function() return fs.write_atomic(bad, "x") end,
          append = function() return fs.append(bad, "x") end,
          sync = function() return fs.sync(bad) end,
          copy_truncate = function() return fs.copy_truncate(bad, path("c")) end,
          copy_truncate_2 = function()
            return fs.copy_truncate(path("keep"), bad)
          end,
          space = function() return fs.space(bad) end,
          mkdir_p = function() return fs.mkdir_p(bad) end,
          exists = function() return fs.exists(bad) end,
          stat = function() return fs.stat(bad) end,
          remove = function() return fs.remove(bad) end,
          rename = function() return fs.rename(bad, path("r")) end,
          rename_2 = function() return fs.rename(path("keep"), bad) end,
          list = function() return fs.list(bad) end,
          lock = function() return fs.lock(bad) end,
        } do
          local ok, err = pcall(call)
          assert.is_false(ok, name)
          assert.matches("a path with a NUL byte in it", tostring(err), 1,
            true, name)
        end
        assert.same({ "keep" }, fs.list(dir))
        assert.equal("kept", fs.read(path("keep")))
        -- data may hold NUL bytes
        assert(fs.write_atomic(path("keep"), "a\0b"))
        assert(fs.append(path("keep"), "\0"))
        assert.equal("a\0b\0", fs.read(path("keep")))
      end)
  end)

  describe("temporary files and links planted in the way", function()
    it("write_atomic does not write through links planted at the names a " ..
      "counter would give its temporary file (broken if the temporary file is " ..
      "opened without O_EXCL at a predictable name: the victim is overwritten)",
      function()
        if H.windows then
          pending("symbolic links: creating one needs a privilege on Windows")
        end
        local victim = path("victim")
        assert(fs.write_atomic(victim, "precious"))
        -- a fresh host, whose first write_atomic is the one under test,
        -- with links at <target>.tmp-<its pid>-1 ... -200
        local script = path("plant.lua")
        assert(fs.write_atomic(script, [=[
          local host = require "host"
          local target, victim = arg[1], arg[2]
          local p = assert(host.proc.spawn { argv = { "sh", "-c",
            'i=1; while [ $i -le 200 ]; do ln -s "$1" "$2.tmp-$3-$i" || ' ..
            'exit 1; i=$((i+1)); done', "sh", victim, target,
            tostring(host.sys.pid()) } })
          assert(p:wait() == 0, "ln failed")
          assert(host.fs.write_atomic(target, "written by the agent"))
        ]=]))
        local target = path("state.json")
        local r = H.run_host({ script, target, victim }, { timeout = 30 })
        assert.equal(0, r.code, r.stderr)
        assert.equal("precious", fs.read(victim))
        assert.equal("file", fs.stat(target).type)
        assert.equal("written by the agent", fs.read(target))
      end)

    it("write_atomic names its temporary files <path>.tmp-<pid>-<random " ..
      "number> (broken if the second number is a count: the next name could " ..
      "be guessed from the last)", function()
        local last
        for _ = 1, 20 do
          -- a missing folder: the message names the temporary file
          local ok, msg, code = fs.write_atomic(path("nope", "f"), "x")
          assert.is_nil(ok)
          assert.equal("ENOENT", code)
          local pid, n = msg:match("%.tmp%-(%d+)%-(%d+)")
          assert.is_truthy(n, "no temporary file named in: " .. msg)
          assert.equal(tostring(host.sys.pid()), pid)
          -- 64 random bits: two within 1000 of each other once in 1e16
          if last then
            assert.is_true(math.abs(tonumber(n) - tonumber(last)) > 1000,
              last .. " then " .. n)
          end
          last = n
        end
        assert.same({}, fs.list(dir))
      end)

    it("append refuses a symbolic link planted at the path (broken if it " ..
      "appends to the file the link points to)", function()
        assert(fs.write_atomic(path("victim"), "precious"))
        ln_s(path("victim"), path("log"))
        local ok, msg, code = fs.append(path("log"), "line\n")
        assert.is_nil(ok)
        assert.is_string(msg)
        assert.equal("ELOOP", code)
        assert.equal("precious", fs.read(path("victim")))
      end)

    it("copy_truncate replaces a link planted at the copy instead of " ..
      "writing through it (broken if the copy is opened where the link " ..
      "points)", function()
        assert(fs.write_atomic(path("victim"), "precious"))
        assert(fs.append(path("log"), "lines\n"))
        ln_s(path("victim"), path("log.1"))
        assert.equal(6, fs.copy_truncate(path("log"), path("log.1")))
        assert.equal("precious", fs.read(path("victim")))
        assert.equal("file", fs.stat(path("log.1")).type)
        assert.equal("lines\n", fs.read(path("log.1")))
        assert.equal("", fs.read(path("log")))
        assert.same({ "log", "log.1", "victim" }, fs.list(dir))
      end)

    it("copy_truncate refuses a symbolic link planted at the file it " ..
      "empties, with ELOOP (broken if it follows the link and empties the " ..
      "file it points to)", function()
        assert(fs.write_atomic(path("victim"), "precious"))
        ln_s(path("victim"), path("log"))
        local ok, msg, code = fs.copy_truncate(path("log"), path("log.1"))
        assert.is_nil(ok)
        assert.is_string(msg)
        assert.equal("ELOOP", code)
        assert.equal("precious", fs.read(path("victim")))
        assert.same({ "log", "victim" }, fs.list(dir))
      end)
  end)

  describe("special files", function()
    it("read, copy_truncate, append and sync refuse a FIFO at once with a " ..
      "message that says so, and stat reports it as 'other' (broken if the " ..
      "host opens it to read: it waits for a writer for ever)", function()
        if H.windows then pending("no FIFOs on Windows") end
        local fifo = path("fifo")
        assert.equal(0, (H.run({ argv = { "mkfifo", fifo } })))
        assert.equal("other", fs.stat(fifo).type)
        assert.same({ "fifo" }, fs.list(dir))
        -- in a child with a time limit: a host that blocks fails the test
        -- instead of hanging the suite
        local script = path("fifo.lua")
        assert(fs.write_atomic(script, [=[
          local fs = require("host").fs
          local function show(name, ok, msg, code)
            io.stdout:write(name, "|", tostring(ok), "|", tostring(msg), "|",
              tostring(code), "\n")
          end
          show("read", fs.read(arg[1]))
          show("copy_truncate", fs.copy_truncate(arg[1], arg[1] .. ".1"))
          show("append", fs.append(arg[1], "x"))
          show("sync", fs.sync(arg[1]))
        ]=]))
        local r = H.run_host({ script, fifo }, { timeout = 20 })
        assert.is_false(r.timed_out, "the host blocked on the FIFO")
        assert.equal(0, r.code, r.stderr)
        local got = {}
        for name, ok, msg, code in r.stdout:gmatch("([%w_]+)|([^|]*)|([^|]*)|([^\n]*)\n") do
          got[name] = true
          assert.equal("nil", ok, name)
          assert.equal(fifo .. ": not a regular file (a FIFO)", msg, name)
          assert.equal("EFTYPE", code, name)
        end
        assert.same({ read = true, copy_truncate = true, append = true, sync = true }, got)
        assert.same({ "fifo", "fifo.lua" }, fs.list(dir))
      end)

    it("read refuses a device (broken if /dev/null reads as an empty file)",
      function()
        if H.windows then pending("no /dev/null on Windows") end
        local data, msg, code = fs.read("/dev/null")
        assert.is_nil(data)
        assert.equal("/dev/null: not a regular file (a character device)", msg)
        assert.equal("EFTYPE", code)
      end)
  end)

  describe("called from tasks", function()
    local spawn = host.task.spawn

    it("a task's file operation does not hold the other tasks: they run " ..
      "while it is outstanding (broken if host.fs runs on the loop's thread: " ..
      "a network share that hangs would stop the heartbeat)", function()
        local order = {}
        local a = spawn(function()
          order[#order + 1] = "start"
          assert(fs.write_atomic(path("f"), "data"))
          order[#order + 1] = "end"
        end)
        local b = spawn(function()
          for _ = 1, 3 do
            order[#order + 1] = "tick"
            host.time.sleep(0)
          end
        end)
        assert.is_true((a:join()))
        assert.is_true((b:join()))
        local text = table.concat(order, " ")
        assert.matches("^start tick .*end", text)
        assert.equal("data", fs.read(path("f")))
      end)

    it("operations of several tasks take effect in the order they were " ..
      "called (broken if each is handed to the thread pool on its own: a " ..
      "read could overtake the write called before it)", function()
        local p = path("f")
        assert(fs.write_atomic(p, "v0"))
        local seen = {}
        local tasks = {
          spawn(function() assert(fs.write_atomic(p, "v1")) end),
          spawn(function()
            assert(fs.write_atomic(p, "v2"))
            seen.writer = fs.read(p)
          end),
          -- called after both writes, before the second task's read
          spawn(function() seen.reader = fs.read(p) end),
          spawn(function() seen.exists = fs.exists(p) end),
        }
        for i = 1, 30 do
          tasks[#tasks + 1] = spawn(function()
            assert(fs.append(path("log"), i .. "\n"))
          end)
        end
        tasks[#tasks + 1] = spawn(function() seen.log = fs.read(path("log")) end)
        for _, t in ipairs(tasks) do
          assert.is_true((t:join()))
        end
        local remover = spawn(function() assert(fs.remove(p)) end)
        local checker = spawn(function() seen.gone = not fs.exists(p) end)
        assert.is_true((remover:join()))
        assert.is_true((checker:join()))
        assert.equal("v2", seen.reader)
        assert.equal("v2", seen.writer)
        assert.is_true(seen.exists)
        local want = {}
        for i = 1, 30 do want[i] = i .. "\n" end
        assert.equal(table.concat(want), seen.log)
        assert.is_true(seen.gone)
      end)

    it("a call that cannot wait (inside a coroutine of a task's own) still " ..
      "works, after the operations called before it (broken if it raises, " ..
      "or runs ahead of a write queued by another task)", function()
        local p = path("g")
        local writer = spawn(function() assert(fs.write_atomic(p, "queued")) end)
        local got, msg
        local reader = spawn(function()
          got, msg = coroutine.wrap(function() return fs.read(p) end)()
        end)
        assert.is_true((writer:join()))
        assert.is_true((reader:join()))
        assert.equal("queued", got, msg)
      end)

    it("the host exits cleanly with operations still queued (broken if it " ..
      "hangs, crashes, or leaks them: under AddressSanitizer a leak fails the " ..
      "exit code)", function()
        local script = path("exit.lua")
        assert(fs.write_atomic(script, [=[
          local host = require "host"
          for i = 1, 50 do
            host.task.spawn(function()
              host.fs.write_atomic(host.fs.join(arg[1], "f" .. i),
                string.rep("x", 100000))
            end)
          end
          host.task.spawn(function() os.exit(7) end)
        ]=]))
        assert(fs.mkdir_p(path("out")))
        local r = H.run_host({ script, path("out") }, { timeout = 30 })
        assert.is_false(r.timed_out)
        assert.equal(7, r.code, r.stderr)
        assert.equal("", r.stderr)
        for _, name in ipairs(assert(fs.list(path("out")))) do
          assert.matches("^f%d+$", name) -- no temporary file left
        end
      end)

    it("operations queued when a task calls os.exit still take effect, in " ..
      "order, before the host exits (broken if a write asked for before the " ..
      "exit is dropped)", function()
        local script = path("drain.lua")
        assert(fs.write_atomic(script, [=[
          local host = require "host"
          local fs = host.fs
          host.task.spawn(function() -- in the pool when the exit comes
            fs.write_atomic(fs.join(arg[1], "big"), string.rep("b", 32 << 20))
          end)
          host.task.spawn(function() -- queued behind it
            fs.write_atomic(fs.join(arg[1], "small"), "small")
          end)
          host.task.spawn(function()
            fs.append(fs.join(arg[1], "small"), " and more")
          end)
          host.task.spawn(function()
            fs.rename(fs.join(arg[1], "small"), fs.join(arg[1], "moved"))
          end)
          host.task.spawn(function() os.exit(7) end)
        ]=]))
        assert(fs.mkdir_p(path("out")))
        local r = H.run_host({ script, path("out") }, { timeout = 60 })
        assert.is_false(r.timed_out)
        assert.equal(7, r.code, r.stderr)
        assert.equal("", r.stderr)
        assert.same({ "big", "moved" }, fs.list(path("out")))
        assert.equal(32 << 20, fs.stat(path("out", "big")).size)
        assert.equal("small and more", fs.read(path("out", "moved")))
      end)
  end)

  describe("copy_truncate", function()
    it("copies the file over the copy, then empties it, and the next " ..
      "append starts the emptied file (broken if the log is renamed away " ..
      "or only half of it is copied)", function()
        local big = string.rep("0123456789", 20000) -- several read chunks
        assert.is_true(fs.append(path("log"), big))
        assert.is_true(fs.write_atomic(path("log.1"), "older copy"))
        assert.equal(#big, fs.copy_truncate(path("log"), path("log.1")))
        assert.equal(big, fs.read(path("log.1")))
        assert.equal("", fs.read(path("log")))
        assert.is_true(fs.append(path("log"), "next\n"))
        assert.equal("next\n", fs.read(path("log")))
      end)

    it("of a missing file returns nil, msg, 'ENOENT' and makes no copy",
      function()
        local ok, _, code = fs.copy_truncate(path("nope"), path("nope.1"))
        assert.is_nil(ok)
        assert.equal("ENOENT", code)
        assert.is_false(fs.exists(path("nope.1")))
      end)
  end)

  describe("append", function()
    it("creates the file, then adds to its end (broken if it truncates)", function()
      assert.is_true(fs.append(path("log"), "one\n"))
      assert.is_true(fs.append(path("log"), "two\0\n"))
      assert.equal("one\ntwo\0\n", fs.read(path("log")))
    end)

    it("fails into a missing folder with nil, msg, 'ENOENT' (broken if it raises)",
      function()
        local ok, _, code = fs.append(path("nope", "log"), "x")
        assert.is_nil(ok)
        assert.equal("ENOENT", code)
      end)
  end)

  describe("mkdir_p", function()
    it("creates nested folders and is idempotent (broken if a parent is not made or an "
      .. "existing folder is an error)", function()
        local deep = path("a", "b", "c")
        assert.is_true(fs.mkdir_p(deep))
        assert.equal("directory", fs.stat(deep).type)
        assert.is_true(fs.mkdir_p(deep))
        assert.is_true(fs.mkdir_p(path("a")))
        assert.is_true(fs.mkdir_p(path("a", "b", "c", "d") .. "/"))
        assert.equal("directory", fs.stat(path("a", "b", "c", "d")).type)
      end)

    it("fails where a file is in the way (broken if it reports success for a path that "
      .. "is not a folder)", function()
        assert.is_true(fs.write_atomic(path("file"), "x"))
        local ok, msg, code = fs.mkdir_p(path("file"))
        assert.is_nil(ok)
        assert.is_string(msg)
        assert.is_string(code)
        local ok2, _, code2 = fs.mkdir_p(path("file", "sub"))
        assert.is_nil(ok2)
        assert.equal("ENOTDIR", code2)
        local ok3 = fs.mkdir_p(path("file") .. "/")
        assert.is_nil(ok3)
        assert.equal("file", fs.stat(path("file")).type)
      end)

    it("raises on an empty path (broken if '' means the current folder)", function()
      assert.has_error(function()
        fs.mkdir_p("")
      end)
    end)
  end)

  describe("exists and stat", function()
    it("exists tells files and folders from missing paths (broken if it raises or "
      .. "is always true)", function()
        assert.is_true(fs.write_atomic(path("f"), "x"))
        assert.is_true(fs.exists(path("f")))
        assert.is_true(fs.exists(dir))
        assert.is_false(fs.exists(path("missing")))
      end)

    it("stat gives type, size and mtime (broken if a field is wrong)", function()
      assert.is_true(fs.write_atomic(path("f"), "12345"))
      local st = fs.stat(path("f"))
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.is_true(math.type(st.size) == "integer")
      assert.is_true(math.abs(st.mtime - host.time.now()) < 60)
      assert.equal("directory", fs.stat(dir).type)
      if not H.windows then -- no such device file there
        assert.equal("other", fs.stat("/dev/null").type)
      end
    end)

    it("stat of a missing path returns nil, msg, 'ENOENT' (broken if it raises)",
      function()
        local st, msg, code = fs.stat(path("missing"))
        assert.is_nil(st)
        assert.is_string(msg)
        assert.equal("ENOENT", code)
      end)

    it("stat reports a symbolic link as 'link' (broken if it follows the link)",
      function()
        assert.is_true(fs.mkdir_p(path("target")))
        ln_s(path("target"), path("link"))
        assert.equal("link", fs.stat(path("link")).type)
        assert.is_true(fs.exists(path("link")))
      end)
  end)

  describe("list", function()
    it("returns the entry names sorted, without . and .. (broken if unsorted or "
      .. "with dot entries)", function()
        -- (Windows' file names are case-insensitive: "B" would be "b")
        local upper = H.windows and "D" or "B"
        for _, name in ipairs({ "b", "c", "a", ".hidden", upper }) do
          assert.is_true(fs.write_atomic(path(name), name))
        end
        assert.is_true(fs.mkdir_p(path("sub")))
        assert.same({ ".hidden", upper, "a", "b", "c", "sub" }, fs.list(dir))
      end)

    it("of an empty folder is an empty table (broken if it returns nil)", function()
      assert.same({}, fs.list(dir))
    end)

    it("of a missing folder returns nil, msg, 'ENOENT' (broken if it raises)", function()
      local t, msg, code = fs.list(path("missing"))
      assert.is_nil(t)
      assert.is_string(msg)
      assert.equal("ENOENT", code)
    end)
  end)

  describe("write_atomic's permissions", function()
    it("are owner-only on POSIX (broken if other local users could read " ..
      "the agent's state, reports or configs)", function()
      if H.windows then
        pending("POSIX permissions: Windows files inherit their folder's ACL")
      end
      assert(fs.write_atomic(path("state.json"), "{}"))
      local out = path("mode")
      assert.equal(0, (H.run({ argv = { "stat", "-c", "%a", path("state.json") },
        stdout = out })))
      assert.equal("600", (fs.read(out):gsub("%s+$", "")))
    end)
  end)

  describe("lock", function()
    -- another goliat-host process tries the lock and prints what it got
    local function try_lock_elsewhere(file)
      local script = path("try_lock.lua")
      assert(fs.write_atomic(script, [[
        local l, msg, code = require("host").fs.lock(arg[1])
        io.stdout:write(l and "locked" or tostring(code))
      ]]))
      local out = path("try_lock.out")
      fs.remove(out)
      local code = H.run({ argv = { H.host_binary(), script, file },
        stdout = out }, 20)
      assert.equal(0, code)
      return fs.read(out)
    end

    it("excludes other processes until unlocked (broken if a second agent " ..
      "could share a work dir)", function()
      local file = path("agent.lock")
      local lock = assert(fs.lock(file))
      assert.equal("EBUSY", try_lock_elsewhere(file))
      lock:unlock()
      assert.equal("locked", try_lock_elsewhere(file))
    end)

    it("does not follow a link planted in its place (broken if root could " ..
      "be made to create or lock another file)", function()
      assert(fs.write_atomic(path("target"), "precious"))
      ln_s(path("target"), path("agent.lock"))
      local lock, msg = fs.lock(path("agent.lock"))
      assert.is_nil(lock)
      assert.is_string(msg)
      assert.equal("precious", fs.read(path("target")))
    end)

    it("is not inherited by children (broken if a study kept its agent's " ..
      "lock after the agent died)", function()
      local file = path("agent.lock")
      local lock = assert(fs.lock(file))
      local sleeper = path("sleep.lua")
      assert(fs.write_atomic(sleeper, "require('host').time.sleep(30)\n"))
      local child = assert(host.proc.spawn { argv = { H.host_binary(), sleeper } })
      lock:unlock()
      assert.equal("locked", try_lock_elsewhere(file))
      child:kill()
      child:wait()
    end)
  end)

  describe("rename", function()
    it("moves a file over an existing one (broken if the old one stays or " ..
      "Windows refuses to replace)", function()
      assert(fs.write_atomic(path("a"), "new"))
      assert(fs.write_atomic(path("b"), "old"))
      assert.is_true(fs.rename(path("a"), path("b")))
      assert.equal("new", fs.read(path("b")))
      assert.is_false(fs.exists(path("a")))
    end)

    it("answers nil, message, ENOENT for a missing file", function()
      local ok, msg, code = fs.rename(path("nope"), path("b"))
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("ENOENT", code)
    end)
  end)

  describe("remove", function()
    it("removes a file and an empty folder (broken if either is refused)", function()
      assert.is_true(fs.write_atomic(path("f"), "x"))
      assert.is_true(fs.mkdir_p(path("d")))
      assert.is_true(fs.remove(path("f")))
      assert.is_true(fs.remove(path("d")))
      assert.same({}, fs.list(dir))
    end)

    it("refuses a folder that is not empty (broken if it removes recursively)", function()
      assert.is_true(fs.mkdir_p(path("d")))
      assert.is_true(fs.write_atomic(path("d", "keep"), "x"))
      local ok, msg, code = fs.remove(path("d"))
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("ENOTEMPTY", code)
      assert.equal("x", fs.read(path("d", "keep")))
    end)

    it("of a missing path returns nil, msg, 'ENOENT' (broken if it raises)", function()
      local ok, _, code = fs.remove(path("missing"))
      assert.is_nil(ok)
      assert.equal("ENOENT", code)
    end)

    it("removes a link to a folder, not the folder (broken if it follows the link)",
      function()
        assert.is_true(fs.mkdir_p(path("target")))
        assert.is_true(fs.write_atomic(path("target", "keep"), "x"))
        ln_s(path("target"), path("link"))
        assert.is_true(fs.remove(path("link")))
        assert.is_false(fs.exists(path("link")))
        assert.equal("x", fs.read(path("target", "keep")))
      end)

    it("removes a dangling link (broken if it stats the missing target)", function()
      ln_s(path("nowhere"), path("dangling"))
      assert.is_true(fs.remove(path("dangling")))
      assert.same({}, fs.list(dir))
    end)
  end)

  describe("join", function()
    -- the platform's separator: a backslash on Windows, '/' elsewhere
    local windows = host.sys.platform() == "windows"
    local function sep(p) return windows and (p:gsub("/", "\\")) or p end

    it("puts exactly one separator between parts (broken if separators double or go "
      .. "missing)", function()
        assert.equal(sep("a/b"), fs.join("a", "b"))
        assert.equal(sep("a/b"), fs.join("a/", "/b"))
        assert.equal(sep("a/b"), fs.join("a/", "b"))
        assert.equal(sep("a/b"), fs.join("a", "/b"))
        assert.equal(sep("a/b/c"), fs.join("a", "b", "c"))
        assert.equal(sep("a/b/"), fs.join("a", "b/"))
      end)

    it("keeps a leading root and skips empty parts (broken if '/' is lost or '' adds "
      .. "a separator)", function()
        assert.equal(sep("/a"), fs.join("/", "a"))
        assert.equal(sep("/a/b"), fs.join("/a", "b"))
        assert.equal(sep("/b"), fs.join("", "/b"))
        assert.equal(sep("a/b"), fs.join("a", "", "b"))
        assert.equal("a", fs.join("a"))
        assert.equal("", fs.join())
      end)

    it("gives a path one kind of separator: on Windows backslashes, a '/' " ..
      "an operator wrote in a setting included (broken if C:\\x\\y/z is " ..
      "built); elsewhere the parts as they are", function()
        if windows then
          assert.equal("C:\\goliat\\Wörk dir é\\configs\\a.json",
            fs.join("C:/goliat\\Wörk dir é", "configs/a.json"))
          assert.equal("C:\\goliat\\work", fs.join("C:/goliat/work"))
          assert.equal("\\\\server\\share\\x", fs.join("//server/share", "x"))
        else
          assert.equal("/srv/a\\b/c", fs.join("/srv/a\\b", "c"))
          assert.equal("/srv/x/y", fs.join("/srv/x/", "y"))
        end
      end)

    it("raises on a non-string part (broken if it is skipped)", function()
      assert.has_error(function()
        fs.join("a", {})
      end)
    end)
  end)
end)
