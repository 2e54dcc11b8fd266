-- Specs for loom.udp (SPEC section 6): datagrams over loopback, the queue
-- of unreceived datagrams, timeouts, close, kill, and bad input. Every
-- example ends with no live tasklet, no active handle and no extra
-- descriptor.
-- Run: build/loom /usr/bin/busted spec/50-udp_spec.lua
local loom = require "loom"
local lfs = require "lfs"

local udp = loom.udp
local HOST = "127.0.0.1"

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

-- A bound socket and its port.
local function bound(host)
  local s = assert(udp.bind(host or HOST, 0))
  local _, port = s:sockname()
  return s, port
end

-- Runs a snippet under this very loom binary; returns its exit status.
local function run_loom(code)
  local exe = assert(loom.fs.realpath("/proc/self/exe"))
  local ok, _, status = os.execute(("timeout 10 %s -e %q >/dev/null 2>&1"):format(exe, code))
  return ok and 0 or status
end

-- Runs a snippet under a stock lua5.4 with loom.core from the CLI's build
-- directory (loom in the main thread); returns its output, or nil when
-- there is no such module.
local function run_lua54(code)
  local exe = assert(loom.fs.realpath("/proc/self/exe"))
  local dir = exe:gsub("[^/]+$", "")
  if not loom.fs.exists(dir .. "lib/loom/core.so") then
    return nil
  end
  -- A sanitizer build's module needs its runtime loaded first.
  local maps = assert(loom.fs.read_file("/proc/self/maps"))
  local asan = maps:match("(/%S+/libasan%.so[%.%d]*)")
  local script = os.tmpname()
  assert(loom.fs.write_file(script, ("package.cpath = %q .. package.cpath\n"):format(
    dir .. "lib/?/core.so;") .. code))
  local pipe = assert(io.popen((asan and ("LD_PRELOAD=" .. asan .. " ") or "")
    .. "timeout 10 lua5.4 " .. script .. " 2>&1"))
  local out = pipe:read("a")
  pipe:close()
  os.remove(script)
  return out
end

local base
before_each(function()
  base = { tasklets = #loom.tasklets(), handles = loom.stats().handles, fds = fd_count() }
end)

after_each(function()
  for _ = 1, 200 do
    if #loom.tasklets() == base.tasklets and loom.stats().handles == base.handles
        and fd_count() == base.fds then
      break
    end
    loom.sleep(0.005)
  end
  assert.equal(base.tasklets, #loom.tasklets(), loom.dump())
  assert.equal(base.handles, loom.stats().handles)
  assert.equal(base.fds, fd_count())
end)

describe("loom.udp", function()
  describe("bind()", function()
    it("binds an ephemeral port and reports it", function()
      local s, port = bound()
      assert.equal(HOST, (s:sockname()))
      assert.is_true(port > 0 and port < 65536)
      assert.matches("loom.udp", tostring(s), 1, true)
      s:close()
    end)

    it("binds IPv6 loopback", function()
      local s = udp.bind("::1", 0)
      if not s then
        return -- no IPv6 here
      end
      assert.equal("::1", (s:sockname()))
      s:close()
    end)

    it("fails with EADDRINUSE and names the address", function()
      local s, port = bound()
      local a, msg, code = udp.bind(HOST, port)
      is_fail("EADDRINUSE", a, msg, code)
      assert.matches(HOST .. ":" .. port, msg, 1, true)
      s:close()
    end)

    it("rejects ports out of range, names and NUL bytes", function()
      raises("port must be between 0 and 65535", udp.bind, HOST, -1)
      raises("port must be between 0 and 65535", udp.bind, HOST, 65536)
      raises("bad argument #2", udp.bind, HOST, 1.5)
      raises("bad argument #2", udp.bind, HOST, 0 / 0)
      raises("bad argument #2", udp.bind, HOST)
      raises("numeric IP address expected", udp.bind, "localhost", 0)
      raises("numeric IP address expected", udp.bind, "", 0)
      raises("host contains a NUL byte", udp.bind, "127.0.0.1\0junk", 0)
      raises("bad argument #1", udp.bind, nil, 0)
    end)
  end)

  describe("send() and receive()", function()
    it("carry a datagram and the sender's address", function()
      local a, pa = bound()
      local b, pb = bound()
      assert.is_true(a:send("ping", HOST, pb))
      local data, host, port = b:receive(1)
      assert.equal("ping", data)
      assert.equal(HOST, host)
      assert.equal(pa, port)
      assert.is_true(b:send("pong", host, port))
      assert.equal("pong", (a:receive(1)))
      a:close()
      b:close()
    end)

    it("carry empty and binary datagrams", function()
      local a = bound()
      local b, pb = bound()
      local bin = "\0\1\2\255" .. ("x"):rep(60000)
      assert.is_true(a:send("", HOST, pb))
      assert.is_true(a:send(bin, HOST, pb))
      assert.equal("", (b:receive(1)))
      assert.equal(bin, (b:receive(1)))
      a:close()
      b:close()
    end)

    it("work over IPv6 loopback", function()
      local b = udp.bind("::1", 0)
      if not b then return end
      local _, pb = b:sockname()
      local a = udp.open()
      assert.is_true(a:send("six", "::1", pb))
      local data, host = b:receive(1)
      assert.equal("six", data)
      assert.equal("::1", host)
      a:close()
      b:close()
    end)

    it("an open() socket is bound by its first send and gets replies", function()
      local a = assert(udp.open())
      assert.is_nil((a:sockname())) -- not bound yet
      local b, pb = bound()
      assert.is_true(a:send("hi", HOST, pb))
      local _, host, port = b:receive(1)
      assert.equal(port, select(2, a:sockname()))
      b:send("back", host, port)
      assert.equal("back", (a:receive(1)))
      a:close()
      b:close()
    end)

    it("queue datagrams that arrive while nobody receives, in order", function()
      local a = bound()
      local b, pb = bound()
      for i = 1, 10 do a:send("d" .. i, HOST, pb) end
      loom.sleep(0.02)
      assert.equal(10, #b)
      for i = 1, 10 do assert.equal("d" .. i, (b:receive(0))) end
      assert.equal(0, #b)
      is_fail("ETIMEDOUT", b:receive(0))
      a:close()
      b:close()
    end)

    it("drop the oldest datagrams beyond 1024", function()
      local a = bound()
      local b, pb = bound()
      -- The loop reads sockets only while something keeps it alive (an
      -- unreferenced handle alone does not): a waiting receiver does.
      local c = bound()
      local keeper = loom.spawn(function() c:receive() end)
      for i = 1, 1100 do
        a:send(tostring(i), HOST, pb)
        if i % 50 == 0 then loom.sleep(0.002) end
      end
      loom.sleep(0.02)
      keeper:kill()
      c:close()
      assert.equal(1024, #b)
      assert.equal(76, b:dropped())
      assert.equal("77", (b:receive(0)))
      a:close()
      b:close()
    end)

    it("fail with EMSGSIZE for a datagram that is too long", function()
      local a, pa = bound()
      local r, msg, code = a:send(("x"):rep(70000), HOST, pa)
      is_fail("EMSGSIZE", r, msg, code)
      assert.matches(HOST .. ":" .. pa, msg, 1, true)
      a:close()
    end)

    it("reject bad arguments", function()
      local a = bound()
      -- Called through pcall, the object is argument #1.
      raises("bad argument #2", a.send, a, {}, HOST, 1)
      raises("bad argument #3 to '?' (numeric IP address expected", a.send, a, "x", "example.invalid", 1)
      raises("host contains a NUL byte", a.send, a, "x", "127.0.0.1\0", 1)
      raises("bad argument #4 to '?' (port must be between 0 and 65535", a.send, a, "x", HOST, 70000)
      raises("port must be between 0 and 65535", a.send, a, "x", HOST, -5)
      raises("bad argument #4", a.send, a, "x", HOST, 0 / 0)
      raises("bad argument #2", a.receive, a, -1)
      raises("bad argument #2", a.receive, a, 0 / 0)
      raises("bad argument #2", a.receive, a, "soon")
      raises("loom.udp expected", a.receive, {})
      a:close()
    end)
  end)

  describe("receive() waiting", function()
    it("waits until a datagram comes and keeps the loop alive meanwhile", function()
      local a = bound()
      local b, pb = bound()
      local got
      local t = loom.spawn(function() got = table.pack(b:receive()) end)
      loom.sleep(0.01)
      assert.equal("blocked", t.status)
      assert.equal(base.handles + 1, loom.stats().handles)
      a:send("late", HOST, pb)
      assert.is_true((t:join(1)))
      assert.equal("late", got[1])
      assert.equal(base.handles, loom.stats().handles)
      a:close()
      b:close()
    end)

    it("times out with ETIMEDOUT and consumes nothing", function()
      local a = bound()
      local b, pb = bound()
      local t0 = loom.now()
      is_fail("ETIMEDOUT", b:receive(0.05))
      assert.is_true(loom.now() - t0 >= 0.05)
      a:send("after", HOST, pb)
      assert.equal("after", (b:receive(1)))
      a:close()
      b:close()
    end)

    it("lets one tasklet wait at a time", function()
      local b = bound()
      local t = loom.spawn(function() return b:receive() end)
      loom.sleep(0.01)
      raises("another tasklet is already receiving", b.receive, b, 0.01)
      t:kill()
      b:close()
    end)

    it("ends with ECLOSED when the socket closes", function()
      local b = bound()
      local got
      local t = loom.spawn(function() got = table.pack(b:receive()) end)
      loom.sleep(0.01)
      assert.is_true(b:close())
      assert.is_true((t:join(1)))
      is_fail("ECLOSED", got[1], got[2], got[3])
    end)

    it("a killed receiver loses nothing", function()
      local a = bound()
      local b, pb = bound()
      local t = loom.spawn(function() return b:receive() end)
      loom.sleep(0.01)
      t:kill()
      assert.is_false((t:join(1)))
      a:send("kept", HOST, pb)
      assert.equal("kept", (b:receive(1)))
      a:close()
      b:close()
    end)

    it("loom.timeout interrupts it", function()
      local b = bound()
      local r, msg, code = loom.timeout(0.02, b.receive, b)
      is_fail("ETIMEDOUT", r, msg, code)
      b:close()
    end)

    it("cannot block in the reactor", function()
      local b = bound()
      local r
      loom.call_later(0, function() r = table.pack(pcall(b.receive, b)) end)
      loom.sleep(0.02)
      assert.is_false(r[1])
      assert.matches("cannot block in the reactor", r[2], 1, true)
      b:close()
    end)
  end)

  describe("close()", function()
    it("is harmless twice and ends every method with ECLOSED", function()
      local s = bound()
      assert.is_true(s:close())
      assert.is_true(s:close())
      is_fail("ECLOSED", s:send("x", HOST, 9))
      is_fail("ECLOSED", s:receive())
      is_fail("ECLOSED", s:sockname())
      assert.equal(0, #s)
      assert.matches("closed", tostring(s))
    end)

    it("happens at the end of a <close> scope", function()
      local before = fd_count()
      do
        local s <close> = bound()
        assert.equal(before + 1, fd_count())
      end
      assert.equal(before, fd_count())
    end)

    it("happens when the socket is collected", function()
      local before = fd_count()
      do
        local s = bound()
        s:send("to myself", HOST, select(2, s:sockname()))
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, fd_count())
    end)
  end)

  describe("the main thread of a plain lua5.4", function()
    it("sends and receives", function()
      local out = run_lua54([[
        local udp = require("loom").udp
        local a = assert(udp.bind("127.0.0.1", 0))
        local b = assert(udp.open())
        assert(b:send("main", a:sockname()))
        local data = a:receive(5)
        print(data, select(3, a:receive(0.01)))
        a:close() b:close()
      ]])
      if out then assert.equal("main\tETIMEDOUT\n", out) end
    end)
  end)

  describe("the process", function()
    it("is not kept alive by an open socket nobody waits on", function()
      assert.equal(0, run_loom([[
        local loom = require "loom"
        local s = assert(loom.udp.bind("127.0.0.1", 0))
        s:send("x", s:sockname())
      ]]))
    end)

    it("is kept alive by a waiting receive", function()
      assert.equal(0, run_loom([[
        local loom = require "loom"
        local s = assert(loom.udp.bind("127.0.0.1", 0))
        local host, port = s:sockname()
        loom.call_later(0.05, function() s:send("x", host, port) end)
        assert(s:receive() == "x")
      ]]))
    end)
  end)
end)
