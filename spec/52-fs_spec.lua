-- Specs for loom.fs (SPEC section 6): path calls, file objects, errors that
-- name their path, and cancellation of thread-pool requests. Every example
-- ends with no live tasklet, no active handle and no extra descriptor.
-- Run: build/loom /usr/bin/busted spec/52-fs_spec.lua
local loom = require "loom"
local lfs = require "lfs"

local fs = loom.fs
local POOL = tonumber(os.getenv("UV_THREADPOOL_SIZE")) or 4

local function fd_count()
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do
    n = n + 1
  end
  return n
end

local function is_fail(code, a, b, c)
  assert.is_nil(a)
  assert.is_string(b)
  assert.equal(code, c)
  assert.equal(code, b:match("^([%u_]+):"))
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.matches(pattern, tostring(err), 1, true)
end

local root -- a fresh directory for the whole file
local n = 0
local function tmp(name)
  n = n + 1
  return ("%s/%d-%s"):format(root, n, name or "f")
end

-- Occupies every thread of libuv's pool with an open() of a FIFO nobody
-- writes to. Returns a function that releases them (opening the writing
-- end wakes every blocked reader) and waits until they are done.
local function block_pool()
  local fifo = tmp("pool.fifo")
  assert(os.execute("mkfifo " .. fifo))
  local ts = {}
  for i = 1, POOL do
    ts[i] = loom.spawn(function()
      local f = fs.open(fifo, "r")
      if f then f:close() end
    end)
  end
  loom.sleep(0.05)
  return function()
    -- Keep the writing end open until every reader is through.
    local w = assert(io.open(fifo, "w"))
    for _, t in ipairs(ts) do
      assert.is_true((t:join(5)))
    end
    w:close()
  end
end

local base
before_each(function()
  base = { tasklets = #loom.tasklets(), handles = loom.stats().handles, fds = fd_count() }
end)

after_each(function()
  -- Dying tasklets and late pool callbacks need a pass or two of the loop.
  for _ = 1, 200 do
    if #loom.tasklets() == base.tasklets and loom.stats().handles == base.handles
        and fd_count() == base.fds then
      break
    end
    collectgarbage() -- files dropped without close() are closed by the collector
    loom.sleep(0.005)
  end
  assert.equal(base.tasklets, #loom.tasklets(), loom.dump())
  assert.equal(base.handles, loom.stats().handles)
  if fd_count() ~= base.fds then
    local open = {}
    for fd in lfs.dir("/proc/self/fd") do
      open[#open + 1] = fd .. " -> " .. tostring(lfs.symlinkattributes("/proc/self/fd/" .. fd, "target"))
    end
    assert.equal(base.fds, fd_count(), table.concat(open, "\n"))
  end
end)

setup(function()
  root = assert(fs.mkdtemp("/tmp/loom-fs-spec-XXXXXX"))
end)

teardown(function()
  os.execute("rm -rf '" .. root .. "'")
end)

describe("loom.fs", function()
  describe("read_file() and write_file()", function()
    it("round-trip binary data", function()
      local p, data = tmp(), {}
      for i = 0, 255 do data[#data + 1] = string.char(i) end
      data = table.concat(data):rep(3)
      assert.is_true(fs.write_file(p, data))
      assert.equal(data, fs.read_file(p))
    end)

    it("write and read an empty file", function()
      local p = tmp()
      assert.is_true(fs.write_file(p, ""))
      assert.equal("", fs.read_file(p))
      assert.equal(0, fs.stat(p).size)
    end)

    it("read a file larger than a chunk", function()
      local p = tmp()
      local data = ("0123456789abcdef"):rep(65536) .. "xyz"
      assert.is_true(fs.write_file(p, data))
      local got = fs.read_file(p)
      assert.equal(#data, #got)
      assert.is_true(got == data)
    end)

    it("read files that report no size", function()
      local s = assert(fs.read_file("/proc/self/status"))
      assert.matches("Pid:", s, 1, true)
    end)

    it("replaces the content of an existing file", function()
      local p = tmp()
      fs.write_file(p, "a long first version")
      fs.write_file(p, "short")
      assert.equal("short", fs.read_file(p))
    end)

    it("creates new files with the given permissions", function()
      local p = tmp()
      assert.is_true(fs.write_file(p, "secret", tonumber("600", 8)))
      assert.equal(tonumber("600", 8), fs.stat(p).perm)
    end)

    it("fail with ENOENT and name the path", function()
      local p = tmp("missing")
      local a, msg, code = fs.read_file(p)
      is_fail("ENOENT", a, msg, code)
      assert.equal("ENOENT: no such file or directory: " .. p, msg)
      is_fail("ENOENT", fs.write_file(p .. "/child", "x"))
    end)

    it("fail with EISDIR on a directory", function()
      is_fail("EISDIR", fs.read_file(root))
      is_fail("EISDIR", fs.write_file(root, "x"))
    end)

    it("reject NUL bytes, non-strings and bad modes", function()
      raises("path contains a NUL byte", fs.read_file, root .. "/a\0b")
      raises("path contains a NUL byte", fs.write_file, "a\0", "x")
      raises("bad argument #1", fs.read_file, nil)
      raises("bad argument #2", fs.write_file, tmp(), {})
      raises("bad argument #3", fs.write_file, tmp(), "x", -1)
      raises("bad argument #3", fs.write_file, tmp(), "x", 0 / 0)
    end)
  end)

  describe("stat(), lstat() and exists()", function()
    it("describe a file", function()
      local p = tmp()
      fs.write_file(p, "12345")
      local st = assert(fs.stat(p))
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.is_number(st.mtime)
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
      assert.is_number(st.ino)
      assert.equal(1, st.nlink)
    end)

    it("describe a directory", function()
      assert.equal("directory", fs.stat(root).type)
    end)

    it("follow links, except lstat", function()
      local p, l = tmp(), tmp("link")
      fs.write_file(p, "x")
      assert(os.execute(("ln -s '%s' '%s'"):format(p, l)))
      assert.equal("file", fs.stat(l).type)
      assert.equal("link", fs.lstat(l).type)
    end)

    it("fail with ENOENT naming the path", function()
      local p = tmp("missing")
      local _, msg, code = fs.stat(p)
      assert.equal("ENOENT", code)
      assert.matches(p, msg, 1, true)
      is_fail("ENOENT", fs.lstat(p))
    end)

    it("exists() answers true or false", function()
      local p = tmp()
      fs.write_file(p, "x")
      assert.is_true(fs.exists(p))
      assert.is_true(fs.exists(root))
      assert.is_false(fs.exists(tmp("missing")))
      assert.is_false(fs.exists(p .. "/below-a-file"))
    end)

    it("reject NUL bytes", function()
      raises("path contains a NUL byte", fs.stat, "\0")
      raises("path contains a NUL byte", fs.lstat, "/tmp\0")
      raises("path contains a NUL byte", fs.exists, "/\0x")
    end)
  end)

  describe("readdir()", function()
    it("lists sorted names and their types", function()
      local d = tmp("dir")
      assert.is_true(fs.mkdir(d))
      fs.write_file(d .. "/b", "")
      fs.write_file(d .. "/a", "")
      fs.mkdir(d .. "/c")
      local names, types = fs.readdir(d)
      assert.same({ "a", "b", "c" }, names)
      assert.same({ a = "file", b = "file", c = "directory" }, types)
    end)

    it("lists an empty directory", function()
      local d = tmp("dir")
      fs.mkdir(d)
      local names, types = fs.readdir(d)
      assert.same({}, names)
      assert.same({}, types)
    end)

    it("fails with ENOENT and ENOTDIR", function()
      is_fail("ENOENT", fs.readdir(tmp("missing")))
      local p = tmp()
      fs.write_file(p, "")
      is_fail("ENOTDIR", fs.readdir(p))
    end)
  end)

  describe("mkdir() and rmdir()", function()
    it("create and remove a directory", function()
      local d = tmp("dir")
      assert.is_true(fs.mkdir(d, tonumber("700", 8)))
      assert.equal("directory", fs.stat(d).type)
      assert.equal(tonumber("700", 8), fs.stat(d).perm)
      assert.is_true(fs.rmdir(d))
      assert.is_false(fs.exists(d))
    end)

    it("fail with EEXIST, ENOTEMPTY and ENOENT", function()
      local d = tmp("dir")
      fs.mkdir(d)
      is_fail("EEXIST", fs.mkdir(d))
      fs.write_file(d .. "/x", "")
      is_fail("ENOTEMPTY", fs.rmdir(d))
      is_fail("ENOENT", fs.rmdir(tmp("missing")))
      is_fail("ENOENT", fs.mkdir(tmp("missing") .. "/sub"))
    end)

    it("reject bad modes and NUL bytes", function()
      raises("bad argument #2", fs.mkdir, tmp(), -1)
      raises("bad argument #2", fs.mkdir, tmp(), "rwx")
      raises("path contains a NUL byte", fs.mkdir, "a\0")
      raises("path contains a NUL byte", fs.rmdir, "a\0")
    end)
  end)

  describe("unlink(), rename() and copyfile()", function()
    it("unlink removes a file", function()
      local p = tmp()
      fs.write_file(p, "x")
      assert.is_true(fs.unlink(p))
      assert.is_false(fs.exists(p))
      is_fail("ENOENT", fs.unlink(p))
    end)

    it("rename moves a file and names both paths when it fails", function()
      local a, b = tmp("a"), tmp("b")
      fs.write_file(a, "data")
      assert.is_true(fs.rename(a, b))
      assert.equal("data", fs.read_file(b))
      local _, msg, code = fs.rename(a, b)
      assert.equal("ENOENT", code)
      assert.equal(("ENOENT: no such file or directory: %s -> %s"):format(a, b), msg)
    end)

    it("copyfile copies, and refuses an existing target when exclusive", function()
      local a, b = tmp("a"), tmp("b")
      fs.write_file(a, ("copy me"):rep(1000))
      assert.is_true(fs.copyfile(a, b))
      assert.equal(fs.read_file(a), fs.read_file(b))
      is_fail("EEXIST", fs.copyfile(a, b, { exclusive = true }))
      assert.is_true(fs.copyfile(a, b, { exclusive = false }))
      is_fail("ENOENT", fs.copyfile(tmp("missing"), b))
    end)

    it("reject NUL bytes in either path", function()
      raises("path contains a NUL byte", fs.unlink, "\0")
      raises("bad argument #1", fs.rename, "a\0", "b")
      raises("bad argument #2", fs.rename, "a", "b\0")
      raises("bad argument #2", fs.copyfile, "a", "b\0")
      raises("bad argument #3", fs.copyfile, "a", "b", true)
    end)
  end)

  describe("realpath()", function()
    it("resolves dots and links", function()
      local real = fs.realpath(root)
      local l = tmp("link")
      assert(os.execute(("ln -s '%s' '%s'"):format(root, l)))
      assert.equal(real, fs.realpath(l))
      assert.equal(real, fs.realpath(root .. "/../" .. root:match("[^/]+$")))
    end)

    it("fails with ENOENT", function()
      is_fail("ENOENT", fs.realpath(tmp("missing")))
    end)
  end)

  describe("mkdtemp()", function()
    it("creates fresh directories from a template", function()
      local a = assert(fs.mkdtemp(root .. "/t-XXXXXX"))
      local b = assert(fs.mkdtemp(root .. "/t-XXXXXX"))
      assert.are_not.equal(a, b)
      assert.matches("^" .. root:gsub("%p", "%%%0") .. "/t%-......$", a)
      assert.equal("directory", fs.stat(a).type)
    end)

    it("requires the template to end in XXXXXX", function()
      raises("template must end in XXXXXX", fs.mkdtemp, root .. "/t-XXXXX")
      raises("template must end in XXXXXX", fs.mkdtemp, root .. "/XXXXXXt")
      raises("path contains a NUL byte", fs.mkdtemp, "/tmp/\0XXXXXX")
    end)

    it("fails with ENOENT in a missing directory", function()
      is_fail("ENOENT", fs.mkdtemp(tmp("missing") .. "/XXXXXX"))
    end)
  end)

  describe("open()", function()
    it("opens for reading by default", function()
      local p = tmp()
      fs.write_file(p, "abc")
      local f = assert(fs.open(p))
      assert.equal("abc", f:read())
      assert.is_true(f:close())
    end)

    it("w truncates, a appends, r+ reads and writes", function()
      local p = tmp()
      fs.write_file(p, "0123456789")
      local f = assert(fs.open(p, "r+"))
      assert.equal("012", f:read(3))
      assert.is_true(f:write("ab"))
      f:close()
      assert.equal("012ab56789", fs.read_file(p))
      f = assert(fs.open(p, "a"))
      assert.is_true(f:write("X", "Y"))
      f:close()
      assert.equal("012ab56789XY", fs.read_file(p))
      f = assert(fs.open(p, "w"))
      f:write("new")
      f:close()
      assert.equal("new", fs.read_file(p))
    end)

    it("a+ reads from the start and writes at the end", function()
      local p = tmp()
      fs.write_file(p, "abc")
      local f = assert(fs.open(p, "a+"))
      assert.equal("a", f:read(1))
      f:write("Z")
      assert.equal("bcZ", f:read())
      f:close()
    end)

    it("x refuses an existing file", function()
      local p = tmp()
      local f = assert(fs.open(p, "wx"))
      f:close()
      is_fail("EEXIST", fs.open(p, "wx"))
      is_fail("EEXIST", fs.open(p, "a+x"))
    end)

    it("fails with ENOENT naming the path", function()
      local p = tmp("missing")
      local _, msg, code = fs.open(p)
      assert.equal("ENOENT", code)
      assert.equal("ENOENT: no such file or directory: " .. p, msg)
    end)

    it("rejects bad modes and NUL bytes", function()
      for _, m in ipairs({ "", "q", "rw", "r++", "rx", "wxx", "r\0", "+" }) do
        raises("bad argument #2", fs.open, tmp(), m)
      end
      raises("path contains a NUL byte", fs.open, "a\0b", "w")
      raises("bad argument #3", fs.open, tmp(), "w", -1)
    end)
  end)

  describe("file:read()", function()
    it("reads at most n bytes, then fails with EOF", function()
      local p = tmp()
      fs.write_file(p, "hello world")
      local f = assert(fs.open(p))
      assert.equal("hello", f:read(5))
      assert.equal("", f:read(0))
      assert.equal(" world", f:read(100))
      is_fail("EOF", f:read(1))
      is_fail("EOF", f:read())
      f:close()
    end)

    it("reads up to 64 KiB without n", function()
      local p = tmp()
      fs.write_file(p, ("x"):rep(100000))
      local f = assert(fs.open(p))
      assert.equal(65536, #f:read())
      assert.equal(100000 - 65536, #f:read())
      f:close()
    end)

    it("rejects negative and fractional sizes", function()
      local p = tmp()
      fs.write_file(p, "x")
      local f = assert(fs.open(p))
      raises("size must not be negative", f.read, f, -1)
      raises("bad argument #2", f.read, f, 1.5)
      raises("bad argument #2", f.read, f, 0 / 0)
      raises("loom.file expected", f.read, {}, 1)
      f:close()
    end)

    it("fails with EBADF on a file opened for writing only", function()
      local f = assert(fs.open(tmp(), "w"))
      is_fail("EBADF", f:read(1))
      f:close()
    end)

    it("fails with EISDIR on a directory", function()
      local f = assert(fs.open(root))
      is_fail("EISDIR", f:read(1))
      f:close()
    end)
  end)

  describe("file:write()", function()
    it("writes strings and numbers in order", function()
      local p = tmp()
      local f = assert(fs.open(p, "w"))
      assert.is_true(f:write("a", 1, "b"))
      assert.is_true(f:write())
      assert.is_true(f:write(""))
      f:close()
      assert.equal("a1b", fs.read_file(p))
    end)

    it("fails with EBADF on a read-only file and rejects tables", function()
      local p = tmp()
      fs.write_file(p, "x")
      local f = assert(fs.open(p))
      is_fail("EBADF", f:write("y"))
      raises("bad argument #2", f.write, f, {})
      f:close()
    end)
  end)

  describe("file:seek()", function()
    it("moves with set, cur and end, and reports the position", function()
      local p = tmp()
      fs.write_file(p, "0123456789")
      local f = assert(fs.open(p))
      assert.equal(0, f:seek())
      assert.equal(4, f:seek("set", 4))
      assert.equal("45", f:read(2))
      assert.equal(6, f:seek("cur"))
      assert.equal(8, f:seek("cur", 2))
      assert.equal(7, f:seek("end", -3))
      assert.equal("789", f:read(10))
      assert.equal(12, f:seek("end", 2))
      is_fail("EOF", f:read(1))
      f:close()
    end)

    it("fails with EINVAL before the start", function()
      local p = tmp()
      fs.write_file(p, "abc")
      local f = assert(fs.open(p))
      is_fail("EINVAL", f:seek("set", -1))
      is_fail("EINVAL", f:seek("end", -4))
      assert.equal(0, f:seek())
      f:close()
    end)

    it("rejects unknown whence and fractional offsets", function()
      local p = tmp()
      fs.write_file(p, "abc")
      local f = assert(fs.open(p))
      raises("bad argument #2", f.seek, f, "middle")
      raises("bad argument #3", f.seek, f, "set", 0.5)
      f:close()
    end)

    it("counts bytes that lines() read ahead as unread", function()
      local p = tmp()
      fs.write_file(p, "one\ntwo\nthree\n")
      local f = assert(fs.open(p, "r+"))
      local next_line = f:lines()
      assert.equal("one", next_line())
      assert.equal(4, f:seek())
      assert.equal("tw", f:read(2))
      f:write("X") -- lands where the reader is, not after the read-ahead
      f:close()
      assert.equal("one\ntwX\nthree\n", fs.read_file(p))
    end)
  end)

  describe("file:lines()", function()
    it("strips \\n and \\r\\n and keeps empty lines", function()
      local p = tmp()
      fs.write_file(p, "a\r\n\nb\nlast")
      local f = assert(fs.open(p))
      local got = {}
      for line in f:lines() do got[#got + 1] = line end
      assert.same({ "a", "", "b", "last" }, got)
      assert.is_nil(f:lines()())
      f:close()
    end)

    it("reads lines longer than a chunk", function()
      local p = tmp()
      local long = ("y"):rep(200000)
      fs.write_file(p, long .. "\nshort\n")
      local f = assert(fs.open(p))
      local it = f:lines()
      assert.equal(long, it())
      assert.equal("short", it())
      assert.is_nil(it())
      f:close()
    end)

    it("mixes with read()", function()
      local p = tmp()
      fs.write_file(p, "l1\nl2\nrest")
      local f = assert(fs.open(p))
      assert.equal("l1", f:lines()())
      assert.equal("l2\nre", f:read(5))
      assert.equal("st", f:lines()())
      f:close()
    end)

    it("works in a generator coroutine", function()
      local p = tmp()
      fs.write_file(p, "x\ny\n")
      local f = assert(fs.open(p))
      local gen = coroutine.wrap(function()
        for line in f:lines() do coroutine.yield(line) end
      end)
      assert.equal("x", gen())
      assert.equal("y", gen())
      f:close()
    end)

    it("raises on a closed file", function()
      local p = tmp()
      fs.write_file(p, "x\n")
      local f = assert(fs.open(p))
      local it = f:lines()
      f:close()
      raises("ECLOSED", it)
      raises("ECLOSED", f.lines, f)
    end)

    it("raises on a read error", function()
      local f = assert(fs.open(tmp(), "w"))
      raises("EBADF", f:lines())
      f:close()
    end)
  end)

  describe("file:sync() and file:stat()", function()
    it("sync and describe the open file", function()
      local f = assert(fs.open(tmp(), "w+"))
      f:write("12345")
      assert.is_true(f:sync())
      local st = assert(f:stat())
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      f:close()
    end)
  end)

  describe("file:close()", function()
    it("is harmless twice and ends every method with ECLOSED", function()
      local p = tmp()
      fs.write_file(p, "x")
      local f = assert(fs.open(p))
      assert.is_true(f:close())
      assert.is_true(f:close())
      is_fail("ECLOSED", f:read())
      is_fail("ECLOSED", f:write("x"))
      is_fail("ECLOSED", f:seek())
      is_fail("ECLOSED", f:sync())
      is_fail("ECLOSED", f:stat())
      assert.matches("closed", tostring(f))
    end)

    it("closes at the end of a <close> scope", function()
      local p = tmp()
      fs.write_file(p, "x")
      local before = fd_count()
      do
        local f <close> = assert(fs.open(p))
        assert.equal(before + 1, fd_count())
        assert.matches(p, tostring(f), 1, true)
      end
      assert.equal(before, fd_count())
    end)

    it("closes a collected file", function()
      local p = tmp()
      fs.write_file(p, "x")
      local before = fd_count()
      do
        local f = assert(fs.open(p))
        assert.equal("x", f:read())
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, fd_count())
    end)
  end)

  describe("one file, several tasklets", function()
    it("runs their operations one at a time, in call order", function()
      local p = tmp()
      local f = assert(fs.open(p, "w"))
      local ts = {}
      for i, c in ipairs({ "a", "b", "c" }) do
        ts[i] = loom.spawn(function()
          for _ = 1, 5 do assert.is_true(f:write(c:rep(4096))) end
        end)
      end
      for _, t in ipairs(ts) do assert.is_true((t:join(5))) end
      f:close()
      local data = fs.read_file(p)
      assert.equal(15 * 4096, #data)
      for i = 1, #data, 4096 do
        assert.equal(data:sub(i, i):rep(4096), data:sub(i, i + 4095))
      end
    end)

    it("close() ends queued and running calls with ECLOSED", function()
      local fifo = tmp("fifo")
      assert(os.execute("mkfifo " .. fifo))
      local f = assert(fs.open(fifo, "r+")) -- r+ does not wait for a writer
      local results = {}
      local a = loom.spawn(function() results.a = table.pack(f:read(10)) end)
      local b = loom.spawn(function() results.b = table.pack(f:read(10)) end)
      loom.sleep(0.02)
      assert.equal("blocked", a.status)
      assert.is_true(f:close())
      assert.is_true((a:join(1)))
      assert.is_true((b:join(1)))
      assert.equal("ECLOSED", results.a[3])
      assert.equal("ECLOSED", results.b[3])
      -- The read still runs in the pool: give it data so it ends and the
      -- descriptor is closed behind it.
      local w = assert(io.open(fifo, "w"))
      w:write("late")
      w:close()
    end)

    it("a killed read consumes nothing", function()
      local fifo = tmp("fifo")
      assert(os.execute("mkfifo " .. fifo))
      local f = assert(fs.open(fifo, "r+"))
      local t = loom.spawn(function() f:read(100) end)
      loom.sleep(0.02)
      t:kill()
      assert.is_false((t:join(1)))
      local w = assert(io.open(fifo, "w"))
      w:write("kept\n")
      w:close()
      assert.equal("kept", f:lines()())
      f:close()
    end)
  end)

  describe("cancellation", function()
    it("a call killed while it runs in the pool has its late result closed", function()
      local fifo = tmp("fifo")
      assert(os.execute("mkfifo " .. fifo))
      local t = loom.spawn(function() return fs.open(fifo, "r") end)
      loom.sleep(0.02)
      assert.equal("blocked", t.status)
      t:kill()
      assert.is_false((t:join(1)))
      -- Now let the open finish: its descriptor must be closed by the late
      -- callback (after_each checks). The writing end stays open a while,
      -- so that the reader cannot miss it.
      local w = assert(io.open(fifo, "w"))
      loom.sleep(0.2)
      w:close()
    end)

    it("a call killed while queued for the pool never runs", function()
      local release = block_pool()
      local p = tmp()
      local t = loom.spawn(function() return fs.write_file(p, "never") end)
      loom.sleep(0.01)
      t:kill()
      assert.is_false((t:join(1)))
      release()
      assert.is_false(fs.exists(p))
    end)

    it("loom.timeout interrupts a call waiting for the pool", function()
      local release = block_pool()
      local p = tmp()
      local a, msg, code = loom.timeout(0.05, fs.write_file, p, "late")
      release()
      is_fail("ETIMEDOUT", a, msg, code)
      loom.sleep(0.02)
      assert.is_false(fs.exists(p))
      assert.is_true(fs.write_file(p, "now"))
    end)

    it("many killed calls leave nothing behind", function()
      local p = tmp()
      fs.write_file(p, ("z"):rep(300000))
      for round = 1, 20 do
        local ts = {}
        for i = 1, 8 do
          ts[i] = loom.spawn(function()
            local f = fs.open(p)
            if f then f:read(1000) f:close() end
            fs.read_file(p)
          end)
        end
        if round % 2 == 0 then loom.yield() end
        for _, t in ipairs(ts) do t:kill() end
        for _, t in ipairs(ts) do t:join(5) end
      end
      assert.equal(300000, #fs.read_file(p))
    end)
  end)

  describe("contexts", function()
    it("cannot block in the reactor", function()
      local r
      loom.call_later(0, function() r = table.pack(pcall(fs.stat, root)) end)
      loom.sleep(0.02)
      assert.is_false(r[1])
      assert.matches("cannot block in the reactor", r[2], 1, true)
    end)

    it("works from the main thread of a plain lua5.4 script", function()
      -- The CLI's build directory holds the module: lib/loom/core.so.
      local exe = assert(fs.realpath("/proc/self/exe"))
      local core = exe:gsub("[^/]+$", "") .. "lib/loom/core.so"
      if not fs.exists(core) then
        pending("no loom.core beside " .. exe)
        return
      end
      local script = tmp("main.lua")
      fs.write_file(script, ([[
        package.cpath = %q .. ";" .. package.cpath
        local fs = require("loom").fs
        assert(fs.write_file(%q, "from main"))
        io.write(fs.read_file(%q))
      ]]):format(core:gsub("loom/core%.so$", "?/core.so"), script .. ".out", script .. ".out"))
      -- A sanitizer build's module needs its runtime loaded first.
      local maps = assert(fs.read_file("/proc/self/maps"))
      local asan = maps:match("(/%S+/libasan%.so[%.%d]*)")
      local pre = asan and ("LD_PRELOAD=" .. asan .. " ") or ""
      local pipe = assert(io.popen(pre .. "lua5.4 " .. script))
      local out = pipe:read("a")
      pipe:close()
      assert.equal("from main", out)
    end)
  end)
end)
