-- Specs for loom.process (SPEC section 6): spawn, wait, kill, close, pipes,
-- env/cwd, run(), no zombies. Each example ends with no live tasklet, no
-- active handle and no extra descriptor.
-- Run: build/loom /usr/bin/busted spec/60-process_spec.lua
local loom = require "loom"
require "loom.process" -- run(); harmless once the facade loads it itself

local P = loom.process

local function read_file(path)
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

local PID = tonumber(read_file("/proc/self/stat"):match("^(%d+)"))

-- Our children that are zombies (state Z), by pid.
local function zombies()
  local list = {}
  local children = read_file(("/proc/%d/task/%d/children"):format(PID, PID)) or ""
  for pid in children:gmatch("%d+") do
    local stat = read_file("/proc/" .. pid .. "/stat")
    if stat and stat:match("%) (%a)") == "Z" then
      list[#list + 1] = tonumber(pid)
    end
  end
  return list
end

-- Our open descriptors, not counting io.popen's own pipe (the listing must
-- not race with a spawn of ours that is still closing the child's ends).
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

local function handles()
  return loom.stats().handles
end

-- Waits (a bounded time) until cond() holds.
local function settle(cond)
  for _ = 1, 200 do
    if cond() then
      return true
    end
    loom.sleep(0.01)
  end
  return cond()
end

local base = {}

setup(function()
  -- libuv opens one descriptor per loop at its first stream (a reserve for
  -- EMFILE): let that happen before the counting starts.
  assert(P.run("true", {}))
end)

before_each(function()
  base.tasklets = #loom.tasklets()
  base.handles = handles()
  base.fds = fd_count()
end)

after_each(function()
  settle(function()
    return #loom.tasklets() == base.tasklets and handles() == base.handles
  end)
  assert.equal(base.tasklets, #loom.tasklets())
  assert.equal(base.handles, handles())
  collectgarbage()
  collectgarbage()
  assert.equal(base.fds, fd_count())
  assert.same({}, zombies())
end)

describe("loom.process", function()
  describe("spawn()", function()
    it("starts a child with a pid, and wait() returns its exit code", function()
      local p = assert(P.spawn("sh", { "-c", "exit 3" }))
      assert.is_true(math.type(p.pid) == "integer" and p.pid > 0)
      local code, sig = p:wait()
      assert.equal(3, code)
      assert.is_nil(sig)
      local p0 = assert(P.spawn("true", {}))
      assert.same({ 0 }, { p0:wait() })
    end)

    it("takes args as an optional array of strings or numbers", function()
      local p = assert(P.spawn("sh", { "-c", "exit $0", 7 }))
      assert.equal(7, p:wait())
      p = assert(P.spawn("true"))
      assert.equal(0, p:wait())
    end)

    it("returns an ENOENT fail naming the command", function()
      local p, err, code = P.spawn("loom-no-such-command", { "x" })
      assert.is_nil(p)
      assert.equal("ENOENT", code)
      assert.matches("^ENOENT: loom%-no%-such%-command", err)
    end)

    it("returns a fail naming the directory when cwd does not exist", function()
      local p, err, code = P.spawn("true", {}, { cwd = "/no/such/dir" })
      assert.is_nil(p)
      assert.equal("ENOENT", code)
      assert.matches("/no/such/dir", err, 1, true)
    end)

    it("runs the child in cwd", function()
      local r = assert(P.run("pwd", {}, { cwd = "/tmp" }))
      assert.equal("/tmp\n", r.stdout)
    end)

    it("extends the environment with env; false removes a variable", function()
      local r = assert(P.run("sh", { "-c", 'echo "$LOOM_A|$LOOM_B|${HOME-unset}|$PATH"' },
        { env = { LOOM_A = "one", LOOM_B = 2, HOME = false } }))
      assert.equal("one|2|unset|" .. os.getenv("PATH") .. "\n", r.stdout)
    end)

    it("starts from an empty environment with env_clear", function()
      local r = assert(P.run("/usr/bin/env", {}, { env_clear = true, env = { ONLY = "this" } }))
      assert.equal("ONLY=this\n", r.stdout)
      r = assert(P.run("/usr/bin/env", {}, { env_clear = true }))
      assert.equal("", r.stdout)
    end)

    it("connects ignored stdio to /dev/null and inherits by default", function()
      local r = assert(P.run("readlink", { "/proc/self/fd/0" }, { stdin = "ignore" }))
      assert.equal("/dev/null\n", r.stdout)
      local mine = assert(P.run("readlink", { "/proc/" .. PID .. "/fd/2" })).stdout
      r = assert(P.run("readlink", { "/proc/self/fd/2" }, { stderr = "inherit" }))
      assert.equal(mine, r.stdout)
      assert.is_nil(r.stderr)
    end)

    it("gives pipes only for the streams asked for", function()
      local p = assert(P.spawn("cat", {}, { stdin = "pipe", stdout = "ignore" }))
      assert.is_not_nil(p.stdin)
      assert.is_nil(p.stdout)
      assert.is_nil(p.stderr)
      p.stdin:close()
      assert.equal(0, p:wait())
      p:close()
    end)

    it("round-trips lines through cat", function()
      local p = assert(P.spawn("cat", {}, { stdin = "pipe", stdout = "pipe" }))
      for i = 1, 100 do
        assert.is_true(p.stdin:write("line ", tostring(i), "\n"))
        assert.equal("line " .. i, p.stdout:read_line())
      end
      p.stdin:close()
      assert.same({ nil, "EOF: end of stream", "EOF" }, { p.stdout:read_line() })
      assert.equal(0, p:wait())
      p:close()
    end)

    it("moves 10 MB through cat both ways at once, intact", function()
      local lines = {}
      for i = 1, 1000000 do
        lines[i] = ("%09d\n"):format(i * 7919 % 1000003)
      end
      local data = table.concat(lines)
      lines = nil
      assert.equal(10000000, #data)
      local p = assert(P.spawn("cat", {}, { stdin = "pipe", stdout = "pipe" }))
      local writer = loom.spawn(function()
        for i = 1, #data, 65536 do
          assert(p.stdin:write(data:sub(i, i + 65535)))
        end
        assert(p.stdin:shutdown())
        p.stdin:close()
      end)
      local got = assert(p.stdout:read_all())
      assert.is_true(writer:join())
      assert.equal(0, p:wait())
      p:close()
      assert.equal(#data, #got)
      assert.is_true(got == data)
      -- and the same checksum as md5sum computes on the data
      local a = assert(P.run("md5sum", {}, { input = data })).stdout
      local b = assert(P.run("md5sum", {}, { input = got })).stdout
      assert.equal(a, b)
    end)

    it("refuses bad arguments", function()
      local function bad(pattern, ...)
        local ok, err = pcall(P.spawn, ...)
        assert.is_false(ok)
        assert.matches("bad argument", err, 1, true)
        assert.matches(pattern, err)
      end
      bad("#1.-string expected, got no value")
      bad("#1.-string expected, got number", 42, {})
      bad("#1.-NUL", "tr\0ue", {})
      bad("#2.-table expected, got string", "true", "x")
      bad("#2.-args%[2%] must be a string, got table", "true", { "a", {} })
      bad("#2.-NUL", "true", { "a\0b" })
      bad("#3.-table expected, got string", "true", {}, "pipe")
      bad("#3.-unknown option 'stdot'", "true", {}, { stdot = "pipe" })
      bad("#3.-option 'stdin' must be", "true", {}, { stdin = "pipes" })
      bad("#3.-option 'stderr' must be", "true", {}, { stderr = 1 })
      bad("#3.-option 'cwd' must be a string", "true", {}, { cwd = 1 })
      bad("#3.-option 'env' must be a table", "true", {}, { env = "A=1" })
      bad("#3.-bad environment variable name 'A=B'", "true", {}, { env = { ["A=B"] = "1" } })
      bad("#3.-bad environment variable name ''", "true", {}, { env = { [""] = "1" } })
      bad("#3.-must be a string or false", "true", {}, { env = { A = {} } })
      bad("#3.-must map names", "true", {}, { env = { "x" } })
      bad("#3.-env_clear", "true", {}, { env_clear = 1 })
    end)
  end)

  describe("wait()", function()
    it("times out with ETIMEDOUT while the child runs", function()
      local p = assert(P.spawn("sleep", { "10" }))
      local t0 = loom.now()
      assert.same({ nil, "ETIMEDOUT: timed out", "ETIMEDOUT" }, { p:wait(0.05) })
      assert.is_true(loom.now() - t0 >= 0.05)
      assert.same({ nil, "ETIMEDOUT: timed out", "ETIMEDOUT" }, { p:wait(0) })
      assert.is_true(p:kill())
      assert.same({ 143, "SIGTERM" }, { p:wait() })
    end)

    it("gives every waiter the result, and returns at once after the exit", function()
      local p = assert(P.spawn("sh", { "-c", "sleep 0.05; exit 5" }))
      local results = {}
      local ts = {}
      for i = 1, 3 do
        ts[i] = loom.spawn(function()
          results[i] = { p:wait() }
        end)
      end
      assert.equal(5, p:wait())
      for i = 1, 3 do
        assert.is_true(ts[i]:join())
        assert.same({ 5 }, results[i])
      end
      assert.equal(5, p:wait())
      assert.equal(5, p:wait(0))
    end)

    it("can be interrupted by killing the waiting tasklet", function()
      local p = assert(P.spawn("sleep", { "10" }))
      local t = loom.spawn(function()
        p:wait()
      end)
      loom.sleep(0.01)
      assert.equal("blocked", t.status)
      t:kill()
      assert.is_false(t:join())
      assert.is_true(p:kill("SIGKILL"))
      assert.same({ 137, "SIGKILL" }, { p:wait() })
    end)

    it("works from loom.timeout", function()
      local p = assert(P.spawn("sleep", { "10" }))
      local _, _, code = loom.timeout(0.02, p.wait, p)
      assert.equal("ETIMEDOUT", code)
      p:kill(9)
      assert.equal(137, p:wait())
    end)
  end)

  describe("kill()", function()
    it("sends SIGTERM by default, or the signal named or numbered", function()
      for _, case in ipairs({ { nil, 143, "SIGTERM" }, { "SIGINT", 130, "SIGINT" },
        { "KILL", 137, "SIGKILL" }, { 10, 138, "SIGUSR1" } }) do
        local p = assert(P.spawn("sleep", { "10" }))
        assert.is_true(p:kill(case[1]))
        assert.same({ case[2], case[3] }, { p:wait() })
      end
    end)

    it("wakes a tasklet waiting on the process (kill mid-wait)", function()
      local p = assert(P.spawn("sleep", { "10" }))
      local got
      local t = loom.spawn(function()
        got = { p:wait() }
      end)
      loom.sleep(0.02)
      assert.is_true(p:kill())
      assert.is_true(t:join())
      assert.same({ 143, "SIGTERM" }, got)
    end)

    it("reports ESRCH once the child has exited", function()
      local p = assert(P.spawn("true", {}))
      p:wait()
      local ok, err, code = p:kill()
      assert.is_nil(ok)
      assert.equal("ESRCH", code)
      assert.matches("^ESRCH: ", err)
    end)

    it("reports a child killed by a signal it sent itself", function()
      local r = assert(P.run("sh", { "-c", "kill -9 $$" }))
      assert.equal(137, r.status)
      assert.equal("SIGKILL", r.signal)
    end)

    it("refuses bad signals", function()
      local p = assert(P.spawn("sleep", { "10" }))
      assert.has_error(function() p:kill("SIGNOPE") end)
      assert.has_error(function() p:kill(-1) end)
      assert.has_error(function() p:kill(1.5) end)
      assert.has_error(function() p:kill({}) end)
      p:kill("SIGKILL")
      p:wait()
    end)
  end)

  describe("close()", function()
    it("closes the pipes, wakes waiters with ECLOSED, and is harmless twice", function()
      local p = assert(P.spawn("sleep", { "0.2" }, { stdin = "pipe", stdout = "pipe" }))
      local stdout = p.stdout
      local got
      local t = loom.spawn(function()
        got = { p:wait() }
      end)
      loom.sleep(0.01)
      assert.is_true(p:close())
      assert.is_true(t:join())
      assert.equal("ECLOSED", got[3])
      assert.is_true(stdout:closed())
      assert.is_true(p:close())
      assert.same({ nil, "ECLOSED: the process object is closed", "ECLOSED" }, { p:wait() })
      assert.equal("ECLOSED", select(3, p:kill()))
      -- the child runs on and is reaped when it exits
      assert.is_true(settle(function()
        return handles() == base.handles
      end))
    end)

    it("closes at the end of a <close> scope", function()
      local stdin
      do
        local p <close> = assert(P.spawn("cat", {}, { stdin = "pipe" }))
        stdin = p.stdin
      end
      assert.is_true(stdin:closed()) -- cat reads EOF and exits
    end)

    it("lets a collected process object's child be reaped at its exit", function()
      for _ = 1, 5 do
        assert(P.spawn("sleep", { "0.05" }, { stdout = "pipe" }))
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(settle(function()
        return handles() == base.handles
      end))
    end)
  end)

  describe("no zombies", function()
    it("after 200 spawns waited for", function()
      local group = {}
      for i = 1, 200 do
        group[#group + 1] = assert(P.spawn("true", {}))
        if #group == 20 or i == 200 then
          for _, p in ipairs(group) do
            assert.equal(0, p:wait())
          end
          group = {}
        end
      end
      assert.same({}, zombies())
    end)

    it("after 200 spawns nobody waits for", function()
      for _ = 1, 200 do
        assert(P.spawn("true", {}))
      end
      collectgarbage()
      assert.is_true(settle(function()
        return handles() == base.handles
      end))
      assert.same({}, zombies())
    end)
  end)

  describe("run()", function()
    it("captures status, stdout and stderr", function()
      local r = assert(P.run("sh", { "-c", "echo out; echo err >&2; exit 2" }))
      assert.same({ status = 2, stdout = "out\n", stderr = "err\n" }, r)
    end)

    it("writes input to the child's stdin", function()
      local r = assert(P.run("cat", {}, { input = "abc\ndef" }))
      assert.same({ status = 0, stdout = "abc\ndef", stderr = "" }, r)
      r = assert(P.run("cat", {}))
      assert.equal("", r.stdout) -- stdin is /dev/null
    end)

    it("does not deadlock on a child that fills stderr before stdout", function()
      local r = assert(P.run("sh", { "-c", "head -c 3000000 /dev/zero >&2; echo done" }))
      assert.equal(3000000, #r.stderr)
      assert.equal("done\n", r.stdout)
    end)

    it("survives a child that does not read its input", function()
      local r = assert(P.run("true", {}, { input = ("x"):rep(3000000) }))
      assert.equal(0, r.status)
    end)

    it("kills the child and returns ETIMEDOUT on timeout", function()
      local t0 = loom.now()
      local r, err, code = P.run("sleep", { "10" }, { timeout = 0.1 })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.matches("^ETIMEDOUT: ", err)
      assert.is_true(loom.now() - t0 < 2)
    end)

    it("times out when a grandchild keeps the pipe open", function()
      local pidfile = os.tmpname()
      local r, _, code = P.run("sh", { "-c", "sleep 10 & echo $! > " .. pidfile },
        { timeout = 0.2 })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      -- the grandchild is not ours to reap; stop it so it does not linger
      local pid = read_file(pidfile):match("%d+")
      os.remove(pidfile)
      assert.equal(0, P.run("kill", { pid }).status)
    end)

    it("returns the spawn failure", function()
      assert.same({ nil, "ENOENT: loom-nope: no such file or directory", "ENOENT" },
        { P.run("loom-nope", {}) })
    end)

    it("leaves nothing running when its tasklet is killed", function()
      local t = loom.spawn(function()
        P.run("sleep", { "10" })
      end)
      loom.sleep(0.05)
      t:kill()
      assert.is_false(t:join())
      assert.is_true(settle(function()
        return handles() == base.handles and #loom.tasklets() == base.tasklets
      end))
    end)

    it("refuses bad arguments, naming run", function()
      local ok, err = pcall(P.run, nil)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'run' (string expected, got nil)", err, 1, true)
      ok, err = pcall(P.run, "true", {}, { timeout = -1 })
      assert.is_false(ok)
      assert.matches("bad argument #3 to 'run'", err, 1, true)
      ok, err = pcall(P.run, "true", {}, { input = 5 })
      assert.is_false(ok)
      assert.matches("option 'input' must be a string", err, 1, true)
      ok, err = pcall(P.run, "true", {}, { input = "x", stdin = "ignore" })
      assert.is_false(ok)
      assert.matches("needs stdin", err, 1, true)
    end)
  end)
end)
