-- Specs for loom.stdin, loom.stdout and loom.stderr (SPEC section 6). Each
-- example runs this very loom binary as a child with a script (-e) and
-- talks to it over pipes, files or /dev/null.
-- Run: build/loom /usr/bin/busted spec/61-stdio_spec.lua
local loom = require "loom"
require "loom.process"

local P = loom.process

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local PID = tonumber(read_file("/proc/self/stat"):match("^(%d+)"))
-- The running loom executable: the children are the same build (ASan too).
local LOOM
do
  local f = assert(io.popen("readlink /proc/" .. PID .. "/exe"))
  LOOM = f:read("l")
  f:close()
end

-- Runs `code` in a child loom; returns its run() result, and checks that it
-- ended well with nothing on stderr (ASan reports land there).
local function child(code, opts)
  local r = assert(P.run(LOOM, { "-e", code }, opts))
  assert.equal("", r.stderr or "")
  assert.equal(0, r.status)
  return r
end

-- Runs `code` in a child loom under sh with the redirection `redir`, in
-- which "$2" stands for `path`.
local function child_sh(code, redir, path, opts)
  local pre = redir:match("^|") and "cat | " or ""
  local r = assert(P.run("sh", { "-c", pre .. '"$0" -e "$1" ' .. redir, LOOM, code, path }, opts))
  assert.equal("", r.stderr)
  assert.equal(0, r.status)
  return r
end

local function fd_count()
  local f = assert(io.popen(("sh -c 'me=$(readlink /proc/$$/fd/1); " ..
    "for f in /proc/%d/fd/*; do l=$(readlink $f) && [ \"$l\" != \"$me\" ] && echo $l; done'")
    :format(PID)))
  local out = f:read("a")
  f:close()
  local n = 0
  for _ in out:gmatch("[^\n]+") do
    n = n + 1
  end
  return n
end

local base = {}

setup(function()
  assert(P.run("true", {})) -- libuv's first stream opens a reserve descriptor
end)

before_each(function()
  base.tasklets = #loom.tasklets()
  base.handles = loom.stats().handles
  base.fds = fd_count()
end)

after_each(function()
  for _ = 1, 100 do
    if #loom.tasklets() == base.tasklets and loom.stats().handles == base.handles then
      break
    end
    loom.sleep(0.01)
  end
  assert.equal(base.tasklets, #loom.tasklets())
  assert.equal(base.handles, loom.stats().handles)
  collectgarbage()
  assert.equal(base.fds, fd_count())
end)

describe("loom.stdin, loom.stdout, loom.stderr", function()
  it("are created once, on first use, after the kind of descriptor", function()
    local code = [[
      assert(loom.stdin == loom.stdin and loom.stdout == loom.stdout)
      io.write(tostring(loom.stdin):match("^[%w._]+"), " ",
               tostring(loom.stdout):match("^[%w._]+"))
    ]]
    -- real pipes: libuv streams on private descriptions
    assert.equal("loom.pipe loom.pipe", child_sh(code, "| cat", nil,
      { input = "" }).stdout)
    -- loom.process gives socketpairs: stdin is read through libuv, stdout
    -- written on the thread pool (so that fd 1 stays blocking)
    assert.equal("loom.pipe loom.stdio_file", child(code, { input = "" }).stdout)
    -- /dev/null (run's default stdin) cannot be polled: the thread pool
    assert.equal("loom.stdio_file loom.stdio_file", child(code).stdout)
  end)

  describe("reading", function()
    it("reads lines from a pipe, stripping \\n and \\r\\n", function()
      local r = child([[
        while true do
          local line, err, code = loom.stdin:read_line()
          if not line then io.write("<", code, ">") break end
          io.write("[", line, "]")
        end
      ]], { input = "one\ntwo\r\n\nlast" })
      assert.equal("[one][two][][last]<EOF>", r.stdout)
    end)

    it("reads pieces, exact sizes, records and the rest", function()
      local r = child([[
        local s = loom.stdin
        io.write(assert(s:read_exactly(3)), "|", assert(s:read_until(";")), "|",
                 assert(s:read(2)), "|", assert(s:read_all()), "|", select(3, s:read()))
      ]], { input = "abcde;fghijk" })
      assert.equal("abc|de|fg|hijk|EOF", r.stdout)
    end)

    it("gives EOF at once when stdin is /dev/null", function()
      local r = child([[
        io.write(select(3, loom.stdin:read()), "|", loom.stdin:read_all(), "|",
                 select(3, loom.stdin:read_line()))
      ]])
      assert.equal("EOF||EOF", r.stdout)
    end)

    it("reads a regular file on the thread pool", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      local lines = {}
      for i = 1, 20000 do
        lines[i] = "line " .. i
      end
      f:write(table.concat(lines, "\n"), "\n")
      f:close()
      local r = child_sh([[
        local n, last = 0
        for line in function() return loom.stdin:read_line() end do
          n, last = n + 1, line
        end
        io.write(tostring(loom.stdin):match("^[%w._]+"), " ", n, " ", last)
      ]], '< "$2"', path)
      os.remove(path)
      assert.equal("loom.stdio_file 20000 line 20000", r.stdout)
    end)

    it("times out with ETIMEDOUT when nothing arrives", function()
      local p = assert(P.spawn(LOOM, { "-e", [[
        loom.stdin:settimeout(0.05)
        io.write(select(3, loom.stdin:read_line()))
      ]] }, { stdin = "pipe", stdout = "pipe" }))
      assert.equal("ETIMEDOUT", p.stdout:read_all())
      assert.equal(0, p:wait())
      p:close()
    end)

    it("suspends only the reading tasklet", function()
      local p = assert(P.spawn(LOOM, { "-e", [[
        local ticks = 0
        local t = loom.spawn(function()
          for _ = 1, 3 do loom.sleep(0.01) ticks = ticks + 1 end
        end)
        local line = loom.stdin:read_line()
        io.write(ticks, " ", line)
      ]] }, { stdin = "pipe", stdout = "pipe" }))
      loom.sleep(0.3)
      assert(p.stdin:write("hello\n"))
      assert.equal("3 hello", p.stdout:read_all())
      assert.equal(0, p:wait())
      p:close()
    end)
  end)

  describe("writing", function()
    it("writes strings and arrays of strings to stdout and stderr", function()
      local r = assert(P.run(LOOM, { "-e", [[
        assert(loom.stdout:write("a", "b", 1, "\n"))
        assert(loom.stdout:write({ "c", "d" }))
        assert(loom.stderr:write("to stderr"))
      ]] }))
      assert.equal(0, r.status)
      assert.equal("ab1\ncd", r.stdout)
      assert.equal("to stderr", r.stderr)
    end)

    it("passes 4 MB through a pipe with backpressure", function()
      local r = child([[
        local chunk = string.rep("0123456789abcdef", 4096)
        for _ = 1, 64 do assert(loom.stdout:write(chunk)) end
      ]])
      assert.equal(4 * 1024 * 1024, #r.stdout)
      assert.equal(string.rep("0123456789abcdef", 4096), r.stdout:sub(1, 65536))
    end)

    it("echoes stdin to stdout line by line", function()
      local input = {}
      for i = 1, 5000 do
        input[i] = ("%d %s"):format(i, ("x"):rep(i % 97))
      end
      local r = child([[
        for line in function() return loom.stdin:read_line() end do
          assert(loom.stdout:write(line, "\n"))
        end
      ]], { input = table.concat(input, "\n") .. "\n" })
      assert.equal(table.concat(input, "\n") .. "\n", r.stdout)
    end)

    it("writes to a regular file, in order, from several tasklets", function()
      local path = os.tmpname()
      child_sh([[
        local ts = {}
        for w = 1, 4 do
          ts[w] = loom.spawn(function()
            for i = 1, 200 do assert(loom.stdout:write(("w%d %d\n"):format(w, i))) end
          end)
        end
        for _, t in ipairs(ts) do assert(t:join()) end
        io.stderr:write(tostring(loom.stdout):match("^[%w._]+") == "loom.stdio_file"
                        and "" or "not a file stream")
      ]], '> "$2"', path)
      local out = read_file(path)
      os.remove(path)
      local next_i = { 0, 0, 0, 0 }
      local n = 0
      for w, i in out:gmatch("w(%d) (%d+)\n") do
        w, i = tonumber(w), tonumber(i)
        assert.equal(next_i[w] + 1, i)
        next_i[w] = i
        n = n + 1
      end
      assert.equal(800, n)
    end)

    it("appends to a file opened with >>", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write("first\n")
      f:close()
      child_sh([[assert(loom.stdout:write("second\n"))]], '>> "$2"', path)
      local out = read_file(path)
      os.remove(path)
      assert.equal("first\nsecond\n", out)
    end)
  end)

  describe("descriptors 0-2", function()
    it("stay blocking for print() and io.write", function()
      local code = [[
        assert(loom.stdout:write("x"))
        local f = io.open("/proc/self/fdinfo/1")
        local flags = f:read("a"):match("flags:%s*(%d+)")
        f:close()
        io.write(" ", (tonumber(flags, 8) & 2048) == 0 and "blocking" or "NONBLOCK")
      ]]
      assert.equal("x blocking", child(code).stdout) -- a socket
      assert.equal("x blocking", child_sh(code, "| cat").stdout) -- a pipe
    end)

    it("get a socket stdin back to blocking when the runtime ends", function()
      -- sh shares the child's socket stdin and looks at it after loom ended
      local r = child_sh([[
        assert(loom.stdin:read_line())
        local f = io.open("/proc/self/fdinfo/0")
        io.write(f:read("a"):match("flags:%s*(%d+)"), " ")
        f:close()
      ]], "; grep flags: /proc/self/fdinfo/0", nil, { input = "x\n" })
      local inside, after = r.stdout:match("^(%d+) flags:%s*(%d+)")
      assert.is_true(tonumber(inside, 8) & 2048 ~= 0)
      assert.is_true(tonumber(after, 8) & 2048 == 0)
    end)

    it("stay open when the streams are closed", function()
      local r = child([[
        assert(loom.stdout:close())
        assert(loom.stdout:close())
        io.write(select(3, loom.stdout:write("lost")), " still open")
        io.stdout:flush()
      ]])
      assert.equal("ECLOSED still open", r.stdout)
    end)

    it("mix with print() in order when flushed", function()
      local r = child([[
        print("one") io.stdout:flush()
        assert(loom.stdout:write("two\n"))
        print("three")
      ]])
      assert.equal("one\ntwo\nthree\n", r.stdout)
    end)
  end)
end)
