-- Specs for loom.tcp (SPEC section 6) and the stream methods its
-- connections share (src/stream.c). Every example ends with no live
-- tasklet, no active handle and no extra descriptor.
-- Run: build/loom /usr/bin/busted spec/40-tcp_spec.lua
local loom = require "loom"
local tcp = require "loom.tcp" -- serve(); the same table as loom.tcp
local lfs = require "lfs"

local HOST = "127.0.0.1"

-- Our open sockets and pipes (files that busted or luassert leave to the
-- garbage collector would make a plain count flicker).
local function fd_count()
  local n = 0
  for f in lfs.dir("/proc/self/fd") do
    local target = lfs.symlinkattributes("/proc/self/fd/" .. f, "target")
    if target and target:match("^socket:") then
      n = n + 1
    end
  end
  return n
end

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)"))
end

-- Under AddressSanitizer freed memory sits in quarantine: RSS says nothing.
local function sanitized()
  local f = io.open("/proc/self/maps")
  local maps = f and f:read("a") or ""
  if f then
    f:close()
  end
  return maps:find("libasan", 1, true) ~= nil
end

local function listen(opts)
  local srv = assert(tcp.listen(HOST, 0, opts))
  local _, port = srv:sockname()
  return srv, port
end

-- A connected pair: the client end and the server end.
local function pair()
  local srv, port = listen()
  local c = assert(tcp.connect(HOST, port))
  local s = assert(srv:accept(5))
  srv:close()
  return c, s
end

-- A port where nothing listens.
local function closed_port()
  local srv, port = listen()
  srv:close()
  return port
end

-- A listener whose accept queue is full: a further connect gets no answer
-- (Linux drops the SYN), so it waits until its timeout. Returns the server,
-- its port and the clients that filled the queue.
local function stuck_port()
  local srv, port = listen({ backlog = 1 })
  local fillers = {}
  for _ = 1, 16 do
    local c, _, code = tcp.connect(HOST, port, { timeout = 0.2 })
    if not c then
      assert.equal("ETIMEDOUT", code)
      return srv, port, fillers
    end
    fillers[#fillers + 1] = c
  end
  error("could not fill the accept queue")
end

local function close_all(list)
  for _, c in ipairs(list) do
    c:close()
  end
end

local function is_fail(code, a, b, c)
  assert.is_nil(a)
  assert.is_string(b)
  assert.equal(code, c)
  assert.equal(code, b:match("^(%u+):"))
end

local base
before_each(function()
  base = { tasklets = #loom.tasklets(), handles = loom.stats().handles, fds = fd_count() }
end)

after_each(function()
  -- Dying tasklets and close callbacks need a pass or two of the loop.
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

describe("loom.tcp", function()
  it("is the table that loom.tcp names", function()
    assert.equal(loom.tcp, tcp)
    assert.is_function(tcp.connect)
    assert.is_function(tcp.listen)
    assert.is_function(tcp.serve)
  end)

  describe("connect()", function()
    it("connects and exchanges data both ways", function()
      local c, s = pair()
      assert.is_true(c:write("ping"))
      assert.equal("ping", s:read_exactly(4))
      assert.is_true(s:write("pong"))
      assert.equal("pong", c:read_exactly(4))
      c:close()
      s:close()
    end)

    it("fails with ECONNREFUSED on a closed port", function()
      is_fail("ECONNREFUSED", tcp.connect(HOST, closed_port()))
    end)

    it("names host and port in the message", function()
      local port = closed_port()
      local _, msg = tcp.connect(HOST, port)
      assert.matches(HOST .. ":" .. port, msg, 1, true)
    end)

    it("resolves host names and tries each address", function()
      local srv, port = listen()
      -- localhost may resolve to ::1 first: that refusal is not the answer.
      local c = assert(tcp.connect("localhost", port))
      local s = assert(srv:accept(5))
      assert.equal(HOST, (s:peername()))
      c:close()
      s:close()
      srv:close()
    end)

    it("connects over IPv6 literals when the host has ::1", function()
      local srv = tcp.listen("::1", 0)
      if not srv then
        return -- no IPv6 on this machine
      end
      local _, port = srv:sockname()
      local c = assert(tcp.connect("::1", port))
      assert.equal("::1", (c:peername()))
      c:close()
      srv:close()
    end)

    it("times out with opts.timeout", function()
      local srv, port, fillers = stuck_port()
      local t0 = loom.now()
      is_fail("ETIMEDOUT", tcp.connect(HOST, port, { timeout = 0.1 }))
      assert.is_true(loom.now() - t0 >= 0.1)
      close_all(fillers)
      srv:close()
    end)

    it("gives opts.timeout to the conn as its default timeout", function()
      local srv, port = listen()
      local c = assert(tcp.connect(HOST, port, { timeout = 0.05 }))
      assert.equal(0.05, c:gettimeout())
      is_fail("ETIMEDOUT", c:read())
      c:close()
      srv:close()
    end)

    it("is cancelled cleanly when its tasklet is killed", function()
      local srv, port, fillers = stuck_port()
      local t = loom.spawn(tcp.connect, HOST, port)
      loom.sleep(0.05)
      assert.equal("blocked", t.status)
      t:kill()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.is_true(loom.TaskletExit:is(err))
      close_all(fillers)
      srv:close()
    end)

    it("is cancelled by loom.timeout", function()
      local srv, port, fillers = stuck_port()
      is_fail("ETIMEDOUT", loom.timeout(0.05, tcp.connect, HOST, port))
      close_all(fillers)
      srv:close()
    end)

    it("works from the main thread of a generator (user coroutine)", function()
      local srv, port = listen()
      local gen = coroutine.wrap(function()
        coroutine.yield(assert(tcp.connect(HOST, port)))
      end)
      local c = gen()
      assert.equal("loom.tcp_conn", getmetatable(c).__name)
      c:close()
      srv:close()
    end)

    it("rejects bad arguments", function()
      assert.has_error(function() tcp.connect(nil, 80) end,
        "bad argument #1 to 'connect' (string expected, got nil)")
      assert.has_error(function() tcp.connect("a\0b", 80) end,
        "bad argument #1 to 'connect' (host must not contain NUL bytes)")
      assert.has_error(function() tcp.connect(HOST, "80") end,
        "bad argument #2 to 'connect' (integer expected, got string)")
      assert.has_error(function() tcp.connect(HOST, 70000) end,
        "bad argument #2 to 'connect' (port must be an integer 0..65535)")
      assert.has_error(function() tcp.connect(HOST, -1) end,
        "bad argument #2 to 'connect' (port must be an integer 0..65535)")
      assert.has_error(function() tcp.connect(HOST, 1.5) end,
        "bad argument #2 to 'connect' (port must be an integer 0..65535)")
      assert.has_error(function() tcp.connect(HOST, 80, 5) end,
        "bad argument #3 to 'connect' (table expected, got number)")
      assert.has_error(function() tcp.connect(HOST, 80, { timeout = -1 }) end,
        "bad argument #3 to 'connect' (opts.timeout must be a number >= 0)")
      assert.has_error(function() tcp.connect(HOST, 80, { timeout = 0 / 0 }) end,
        "bad argument #3 to 'connect' (opts.timeout must be a number >= 0)")
      assert.has_error(function() tcp.connect(HOST, 80, { high_water = -5 }) end,
        "bad argument #3 to 'connect' (opts.high_water must be a non-negative integer)")
    end)

    it("may not block in the reactor", function()
      local srv, port = listen()
      local ev = loom.event()
      local err
      loom.call_later(0, function()
        local ok, e = pcall(tcp.connect, HOST, port)
        assert(not ok)
        err = e
        ev:set()
      end)
      ev:wait()
      assert.matches("cannot block in the reactor", err, 1, true)
      srv:close()
    end)
  end)

  describe("listen()", function()
    it("binds an ephemeral port with port 0", function()
      local srv = assert(tcp.listen(HOST, 0))
      local host, port = srv:sockname()
      assert.equal(HOST, host)
      assert.is_true(math.type(port) == "integer" and port > 0)
      srv:close()
    end)

    it("fails with EADDRINUSE on a port in use", function()
      local srv, port = listen()
      is_fail("EADDRINUSE", tcp.listen(HOST, port))
      srv:close()
    end)

    it("resolves a host name", function()
      local srv = assert(tcp.listen("localhost", 0))
      local host, port = srv:sockname()
      assert.is_true(host == "127.0.0.1" or host == "::1")
      local c = assert(tcp.connect("localhost", port))
      local s = assert(srv:accept(5))
      c:close()
      s:close()
      srv:close()
    end)

    it("rejects bad arguments", function()
      assert.has_error(function() tcp.listen(HOST, 65536) end,
        "bad argument #2 to 'listen' (port must be an integer 0..65535)")
      assert.has_error(function() tcp.listen(HOST, 0, { backlog = 0 }) end,
        "bad argument #3 to 'listen' (opts.backlog must be an integer 1..65535)")
      assert.has_error(function() tcp.listen({}, 0) end,
        "bad argument #1 to 'listen' (string expected, got table)")
    end)
  end)

  describe("server", function()
    describe("accept()", function()
      it("returns connections in order and applies opts to them", function()
        local srv, port = listen({ high_water = 4096, timeout = 0.05 })
        local c1 = assert(tcp.connect(HOST, port))
        local c2 = assert(tcp.connect(HOST, port))
        local s1 = assert(srv:accept())
        local s2 = assert(srv:accept())
        assert.equal(select(2, c1:sockname()), select(2, s1:peername()))
        assert.equal(select(2, c2:sockname()), select(2, s2:peername()))
        assert.equal(0.05, s1:gettimeout())
        close_all({ c1, c2, s1, s2, srv })
      end)

      it("waits for a connection", function()
        local srv, port = listen()
        local t = loom.spawn(function()
          loom.sleep(0.02)
          return tcp.connect(HOST, port)
        end)
        local s = assert(srv:accept())
        local _, c = t:join()
        close_all({ s, c, srv })
      end)

      it("times out with ETIMEDOUT", function()
        local srv = listen()
        is_fail("ETIMEDOUT", srv:accept(0.02))
        srv:close()
      end)

      it("is woken with ECLOSED when the server closes", function()
        local srv = listen()
        local t = loom.spawn(function() return srv:accept() end)
        loom.sleep(0.01)
        assert.is_true(srv:close())
        local ok, a, b, c = t:join()
        assert.is_true(ok)
        is_fail("ECLOSED", a, b, c)
        is_fail("ECLOSED", srv:accept())
      end)

      it("is cancelled when its tasklet is killed, and the server goes on", function()
        local srv, port = listen()
        local t = loom.spawn(function() return srv:accept() end)
        loom.sleep(0.01)
        t:kill()
        assert.is_false((t:join()))
        local c = assert(tcp.connect(HOST, port))
        local s = assert(srv:accept(5))
        close_all({ c, s, srv })
      end)

      it("raises for a second concurrent accepter", function()
        local srv = listen()
        local t = loom.spawn(function() return srv:accept() end)
        loom.sleep(0.01)
        assert.has_error(function() srv:accept() end,
          "loom.tcp_server: another tasklet is already accepting")
        srv:close()
        t:join()
      end)
    end)

    it("closes twice harmlessly, and with <close>", function()
      local port
      do
        local srv <close> = assert(tcp.listen(HOST, 0))
        port = select(2, srv:sockname())
      end
      is_fail("ECONNREFUSED", tcp.connect(HOST, port))
      local srv = listen()
      assert.is_true(srv:close())
      assert.is_true(srv:close())
      assert.is_true(srv:closed())
      is_fail("ECLOSED", srv:sockname())
      assert.matches("closed", tostring(srv))
    end)

    it("is closed by the garbage collector", function()
      local port
      do
        local srv = listen()
        port = select(2, srv:sockname())
      end
      collectgarbage()
      collectgarbage()
      is_fail("ECONNREFUSED", tcp.connect(HOST, port))
    end)
  end)

  describe("conn", function()
    describe("read()", function()
      it("returns what has arrived, at most n bytes", function()
        local c, s = pair()
        c:write("hello world")
        loom.sleep(0.01)
        assert.equal("hello", s:read(5))
        assert.equal(" world", s:read())
        assert.equal("", s:read(0))
        close_all({ c, s })
      end)

      it("returns the EOF triple after the peer closes", function()
        local c, s = pair()
        c:write("bye")
        c:close()
        assert.equal("bye", s:read())
        is_fail("EOF", s:read())
        is_fail("EOF", s:read())
        s:close()
      end)

      it("times out without losing the connection or buffered data", function()
        local c, s = pair()
        s:settimeout(0.02)
        is_fail("ETIMEDOUT", s:read())
        c:write("late")
        assert.equal("late", s:read())
        c:write("abc")
        is_fail("ETIMEDOUT", s:read_exactly(5)) -- "abc" stays buffered
        c:write("de")
        assert.equal("abcde", s:read_exactly(5))
        s:settimeout(nil)
        assert.is_nil(s:gettimeout())
        close_all({ c, s })
      end)

      it("is woken with ECLOSED when the conn closes", function()
        local c, s = pair()
        local t = loom.spawn(function() return s:read() end)
        loom.sleep(0.01)
        s:close()
        local ok, a, b, code = t:join()
        assert.is_true(ok)
        is_fail("ECLOSED", a, b, code)
        is_fail("ECLOSED", s:read())
        c:close()
      end)

      it("is cancelled by a kill; the conn stays usable", function()
        local c, s = pair()
        local t = loom.spawn(function() return s:read() end)
        loom.sleep(0.01)
        t:kill()
        assert.is_false((t:join()))
        c:write("still here")
        assert.equal("still here", s:read())
        close_all({ c, s })
      end)

      it("keeps the loop alive only while a reader waits", function()
        local c, s = pair()
        local idle = loom.stats().handles
        local t = loom.spawn(function() return s:read() end)
        loom.sleep(0.01)
        assert.equal(idle + 1, loom.stats().handles)
        c:write("x")
        t:join()
        assert.equal(idle, loom.stats().handles)
        close_all({ c, s })
      end)

      it("raises for a second concurrent reader", function()
        local c, s = pair()
        local t = loom.spawn(function() return s:read() end)
        loom.sleep(0.01)
        assert.has_error(function() s:read() end,
          "loom.tcp_conn: another tasklet is already reading")
        c:write("x")
        assert.equal("x", select(2, t:join()))
        close_all({ c, s })
      end)

      it("reports a reset", function()
        local c, s = pair()
        c:write("unread")
        loom.sleep(0.01)
        s:close() -- unread data: the kernel resets the connection
        local _, _, code = c:read()
        assert.is_true(code == "ECONNRESET" or code == "EOF")
        c:close()
      end)

      it("rejects bad arguments", function()
        local c, s = pair()
        assert.has_error(function() s:read(-1) end,
          "bad argument #1 to 'read' (size must be a non-negative integer)")
        assert.has_error(function() s:read("x") end)
        assert.has_error(function() s.read(nil) end,
          "bad argument #1 to 'read' (loom.tcp_conn expected, got nil)")
        close_all({ c, s })
      end)
    end)

    describe("read_exactly()", function()
      it("collects exactly n bytes over several writes", function()
        local c, s = pair()
        loom.spawn(function()
          for i = 1, 10 do
            c:write(tostring(i % 10))
            loom.sleep(0.001)
          end
        end)
        assert.equal("1234567890", s:read_exactly(10))
        close_all({ c, s })
      end)

      it("fails with EOF on a short stream and keeps the bytes", function()
        local c, s = pair()
        c:write("abc")
        c:close()
        is_fail("EOF", s:read_exactly(5))
        assert.equal("abc", s:read())
        s:close()
      end)

      it("returns large blocks", function()
        local c, s = pair()
        local big = string.rep("0123456789abcdef", 1 << 16) -- 1 MiB
        loom.spawn(function() c:write(big) end)
        assert.equal(big, s:read_exactly(#big))
        close_all({ c, s })
      end)
    end)

    describe("read_line()", function()
      it("strips \\n and \\r\\n", function()
        local c, s = pair()
        c:write("one\ntwo\r\n\nthree\r\n")
        assert.equal("one", s:read_line())
        assert.equal("two", s:read_line())
        assert.equal("", s:read_line())
        assert.equal("three", s:read_line())
        close_all({ c, s })
      end)

      it("keeps the newline with keep_newline", function()
        local c, s = pair()
        c:write("a\r\nb\n")
        assert.equal("a\r\n", s:read_line({ keep_newline = true }))
        assert.equal("b\n", s:read_line({ keep_newline = true }))
        close_all({ c, s })
      end)

      it("joins a line split over many packets", function()
        local c, s = pair()
        loom.spawn(function()
          for ch in ("split line\r\n"):gmatch(".") do
            c:write(ch)
            loom.sleep(0)
          end
        end)
        assert.equal("split line", s:read_line())
        close_all({ c, s })
      end)

      it("returns a last line without newline, then EOF", function()
        local c, s = pair()
        c:write("x\nlast")
        c:close()
        assert.equal("x", s:read_line())
        assert.equal("last", s:read_line())
        is_fail("EOF", s:read_line())
        s:close()
      end)

      it("fails with EMSGSIZE beyond opts.max", function()
        local c, s = pair()
        c:write("12345\n" .. string.rep("y", 100))
        is_fail("EMSGSIZE", s:read_line({ max = 4 }))
        assert.equal("12345", s:read_line({ max = 5 })) -- nothing was consumed
        is_fail("EMSGSIZE", s:read_line({ max = 50 })) -- no newline in sight
        assert.equal(string.rep("y", 100), s:read(1000))
        close_all({ c, s })
      end)

      it("limits lines to 64 KiB by default", function()
        local c, s = pair()
        loom.spawn(function() c:write(string.rep("z", 70000)) end)
        is_fail("EMSGSIZE", s:read_line())
        close_all({ c, s })
      end)

      it("rejects bad arguments", function()
        local c, s = pair()
        assert.has_error(function() s:read_line(5) end,
          "bad argument #1 to 'read_line' (table expected, got number)")
        assert.has_error(function() s:read_line({ max = -1 }) end,
          "bad argument #1 to 'read_line' (opts.max must be a non-negative integer)")
        close_all({ c, s })
      end)
    end)

    describe("read_until()", function()
      it("returns the data before a delimiter, even split across packets", function()
        local c, s = pair()
        loom.spawn(function()
          c:write("key: value\r")
          loom.sleep(0.01)
          c:write("\n\r\nbody--END--tail")
        end)
        assert.equal("key: value", s:read_until("\r\n"))
        assert.equal("", s:read_until("\r\n"))
        assert.equal("body", s:read_until("--END--"))
        assert.equal("tail", s:read(4))
        close_all({ c, s })
      end)

      it("fails with EMSGSIZE beyond max and EOF without the delimiter", function()
        local c, s = pair()
        c:write("abcdefgh|rest")
        is_fail("EMSGSIZE", s:read_until("|", 4))
        assert.equal("abcdefgh", s:read_until("|", 8))
        c:close()
        is_fail("EOF", s:read_until("|"))
        assert.equal("rest", s:read_all())
        s:close()
      end)

      it("keeps the waiting reader's delimiter when a second reader is refused", function()
        local c, s = pair()
        local t = loom.spawn(function() return s:read_until("<>") end)
        loom.sleep(0.01)
        assert.has_error(function() s:read_until("|") end,
          "loom.tcp_conn: another tasklet is already reading")
        c:write("a|b<>")
        local _, got = t:join()
        assert.equal("a|b", got)
        close_all({ c, s })
      end)

      it("rejects an empty delimiter", function()
        local c, s = pair()
        assert.has_error(function() s:read_until("") end,
          "bad argument #1 to 'read_until' (delimiter must not be empty)")
        close_all({ c, s })
      end)
    end)

    describe("read_all()", function()
      it("reads until EOF, then returns an empty string", function()
        local c, s = pair()
        loom.spawn(function()
          for i = 1, 100 do
            c:write(("%03d"):format(i))
          end
          c:close()
        end)
        local all = s:read_all()
        assert.equal(300, #all)
        assert.equal("001002", all:sub(1, 6))
        assert.equal("", s:read_all())
        s:close()
      end)
    end)

    describe("write()", function()
      it("takes several strings or one array of strings", function()
        local c, s = pair()
        assert.is_true(c:write("a", "b", 42))
        assert.is_true(c:write({ "c", "d", "e" }))
        assert.is_true(c:write({}))
        assert.is_true(c:write(""))
        assert.equal("ab42cde", s:read_exactly(7))
        local many = {}
        for i = 1, 100 do
          many[i] = tostring(i % 10)
        end
        assert.is_true(c:write(many))
        assert.equal(table.concat(many), s:read_exactly(100))
        close_all({ c, s })
      end)

      it("rejects what is not a string", function()
        local c, s = pair()
        assert.has_error(function() c:write(true) end,
          "bad argument #1 to 'write' (string expected, got boolean)")
        assert.has_error(function() c:write({ "a", {} }) end,
          "bad argument #1 to 'write' (array of strings expected, item 2 is a table)")
        assert.has_error(function() c:write("a", {}) end,
          "bad argument #2 to 'write' (string expected, got table)")
        close_all({ c, s })
      end)

      it("fails with ECLOSED on a closed conn", function()
        local c, s = pair()
        c:close()
        is_fail("ECLOSED", c:write("x"))
        s:close()
      end)

      it("fails once the peer has gone", function()
        local c, s = pair()
        s:close()
        loom.sleep(0.01)
        local ok, code
        for _ = 1, 100 do
          ok, _, code = c:write(string.rep("x", 65536))
          if not ok then
            break
          end
          loom.sleep(0.001)
        end
        assert.is_nil(ok)
        assert.is_true(code == "EPIPE" or code == "ECONNRESET")
        c:close()
      end)

      it("waits above the high-water mark and times out", function()
        local c, s = pair()
        c:set_high_water(1024)
        c:settimeout(0.05)
        local chunk = string.rep("w", 1 << 16)
        local ok, code
        for _ = 1, 1000 do -- fills the socket buffers, then the queue
          ok, _, code = c:write(chunk)
          if not ok then
            break
          end
        end
        assert.equal("ETIMEDOUT", code)
        assert.is_true(c:write_queue_size() <= 1024 + (1 << 16))
        close_all({ c, s })
      end)

      it("writes a string larger than the high-water mark in pieces", function()
        local c, s = pair()
        local big = string.rep("0123456789abcdef", 1 << 19) -- 8 MiB
        c:set_high_water(4096)
        local t = loom.spawn(function() return s:read_exactly(#big) end)
        assert.is_true(c:write(big))
        local _, got = t:join()
        assert.is_true(got == big)
        close_all({ c, s })
      end)

      it("still completes with a high-water mark of 0", function()
        local c, s = pair()
        c:set_high_water(0)
        local chunk = string.rep("q", 1 << 16)
        local t = loom.spawn(function() return s:read_exactly(64 * #chunk) end)
        for _ = 1, 64 do
          assert.is_true(c:write(chunk))
        end
        local _, got = t:join()
        assert.equal(64 * #chunk, #got)
        close_all({ c, s })
      end)

      it("does not wait in the reactor when the data fits, and raises when it must", function()
        local c, s = pair()
        local ev = loom.event()
        local ok1, ok2, err2
        loom.call_later(0, function()
          ok1 = c:write("from the reactor")
          c:set_high_water(0)
          ok2, err2 = pcall(c.write, c, string.rep("r", 1 << 24))
          ev:set()
        end)
        ev:wait()
        assert.is_true(ok1)
        assert.is_false(ok2)
        assert.matches("cannot block in the reactor", err2, 1, true)
        assert.equal("from the reactor", s:read_exactly(16))
        s:settimeout(0.05)
        is_fail("ETIMEDOUT", s:read()) -- the refused write sent nothing
        close_all({ c, s })
      end)

      it("wakes a blocked writer with ECLOSED on close", function()
        local c, s = pair()
        c:set_high_water(0)
        local t = loom.spawn(function()
          local chunk = string.rep("w", 1 << 16)
          for _ = 1, 1000 do
            local ok, err, code = c:write(chunk)
            if not ok then
              return err, code
            end
          end
        end)
        loom.sleep(0.05)
        assert.equal("blocked", t.status)
        c:close()
        local _, err, code = t:join()
        assert.equal("ECLOSED", code, err)
        s:close()
      end)

      it("is cancelled by a kill", function()
        local c, s = pair()
        c:set_high_water(0)
        local t = loom.spawn(function()
          local chunk = string.rep("w", 1 << 16)
          for _ = 1, 1000 do
            c:write(chunk)
          end
        end)
        loom.sleep(0.05)
        assert.equal("blocked", t.status)
        t:kill()
        assert.is_false((t:join()))
        close_all({ c, s })
      end)

      it("raises for a second concurrent writer", function()
        local c, s = pair()
        c:set_high_water(0)
        local t = loom.spawn(function()
          local chunk = string.rep("w", 1 << 16)
          for _ = 1, 1000 do
            c:write(chunk)
          end
        end)
        loom.sleep(0.05)
        assert.has_error(function() c:write("x") end,
          "loom.tcp_conn: another tasklet is already writing")
        t:kill()
        t:join()
        close_all({ c, s })
      end)

      it("applies backpressure: 100 MB through a slow reader, bounded memory", function()
        local c, s = pair()
        local CHUNK, N = 1 << 16, 1600 -- 100 MiB
        local function block(i)
          return string.rep(("%015d\n"):format(i), CHUNK // 16)
        end
        collectgarbage()
        local rss0 = rss_kib()
        local max_queued, waited = 0, 0
        local writer = loom.spawn(function()
          for i = 1, N do
            local t0 = loom.now()
            assert(c:write(block(i)))
            if loom.now() - t0 > 0.001 then
              waited = waited + 1
            end
            local q = c:write_queue_size()
            if q > max_queued then
              max_queued = q
            end
          end
          assert(c:shutdown())
        end)
        local reader = loom.spawn(function()
          loom.sleep(0.2) -- slow at first: the writer must wait
          for i = 1, N do
            local data = assert(s:read_exactly(CHUNK))
            if data ~= block(i) then
              error("block " .. i .. " differs")
            end
            if i % 200 == 0 then
              loom.sleep(0.01)
            end
          end
          is_fail("EOF", s:read())
        end)
        local ok, err = loom.timeout(60, function()
          assert(writer:join())
          assert(reader:join())
          return true
        end)
        assert.is_true(ok, err)
        assert.is_true(waited > 0, "the writer never waited")
        assert.is_true(max_queued <= (1 << 20) + CHUNK, "queued " .. max_queued)
        close_all({ c, s })
        local grown = rss_kib() - rss0
        if not sanitized() then
          assert.is_true(grown < 64 * 1024, "RSS grew by " .. grown .. " KiB")
        end
      end)
    end)

    describe("shutdown()", function()
      it("sends EOF while the conn can still read", function()
        local c, s = pair()
        c:write("request")
        assert.is_true(c:shutdown())
        assert.is_true(c:shutdown()) -- a second one is harmless
        assert.equal("request", s:read_all())
        s:write("response")
        s:close()
        assert.equal("response", c:read_all())
        is_fail("EPIPE", c:write("more"))
        c:close()
      end)

      it("fails with ECLOSED on a closed conn", function()
        local c, s = pair()
        c:close()
        is_fail("ECLOSED", c:shutdown())
        s:close()
      end)
    end)

    describe("close()", function()
      it("is harmless twice and reports closed()", function()
        local c, s = pair()
        assert.is_false(c:closed())
        assert.is_true(c:close())
        assert.is_true(c:close())
        assert.is_true(c:closed())
        assert.matches("^loom.tcp_conn %(closed%)", tostring(c))
        is_fail("ECLOSED", c:read())
        is_fail("ECLOSED", c:read_line())
        s:close()
      end)

      it("happens at the end of a <close> scope", function()
        local s
        do
          local c <close>, s1 = pair()
          s = s1
          c:write("x")
        end
        assert.equal("x", s:read())
        is_fail("EOF", s:read())
        s:close()
      end)

      it("happens when the conn is collected", function()
        local s
        do
          local _, s1 = pair()
          s = s1
        end
        collectgarbage()
        collectgarbage()
        is_fail("EOF", s:read())
        s:close()
      end)
    end)

    describe("peername() / sockname()", function()
      it("give host and port of both ends", function()
        local c, s = pair()
        local h1, p1 = c:sockname()
        local h2, p2 = s:peername()
        assert.equal(HOST, h1)
        assert.equal(h1, h2)
        assert.equal(p1, p2)
        c:close()
        is_fail("ECLOSED", c:peername())
        s:close()
      end)
    end)

    describe("nodelay() / keepalive()", function()
      it("set the socket options", function()
        local c, s = pair()
        assert.is_true(c:nodelay(false))
        assert.is_true(c:nodelay(true))
        assert.is_true(c:keepalive(true, 30))
        assert.is_true(c:keepalive(false))
        assert.has_error(function() c:keepalive(true, 0) end,
          "bad argument #2 to 'keepalive' (seconds must be a positive integer)")
        assert.has_error(function() c:nodelay() end,
          "bad argument #1 to 'nodelay' (value expected)")
        c:close()
        is_fail("ECLOSED", c:nodelay(true))
        s:close()
      end)
    end)
  end)

  describe("serve()", function()
    it("runs a tasklet per connection and closes the conn after the handler", function()
      local srv = assert(tcp.serve(HOST, 0, function(conn)
        local line = conn:read_line()
        conn:write(line:upper(), "\n")
      end))
      local _, port = srv:sockname()
      for i = 1, 3 do
        local c = assert(tcp.connect(HOST, port))
        c:write("hi " .. i .. "\n")
        assert.equal("HI " .. i, c:read_line())
        is_fail("EOF", c:read())
        c:close()
      end
      srv:close()
    end)

    it("reports a handler's error and goes on serving", function()
      local reported = {}
      loom.on_error(function(err, where)
        reported[#reported + 1] = tostring(err) .. " | " .. tostring(where)
      end)
      local srv = assert(tcp.serve(HOST, 0, function(conn)
        local line = conn:read_line()
        if line == "boom" then
          error("handler failed")
        end
        conn:write("ok\n")
      end))
      local _, port = srv:sockname()
      local c1 = assert(tcp.connect(HOST, port))
      c1:write("boom\n")
      assert.is_nil(c1:read_line())
      local c2 = assert(tcp.connect(HOST, port))
      c2:write("fine\n")
      assert.equal("ok", c2:read_line())
      loom.on_error(nil)
      assert.equal(1, #reported)
      assert.matches("handler failed", reported[1], 1, true)
      close_all({ c1, c2, srv })
    end)

    it("stops accepting on close(); running handlers go on", function()
      local release = loom.event()
      local srv = assert(tcp.serve(HOST, 0, function(conn)
        release:wait()
        conn:write("done\n")
      end))
      local _, port = srv:sockname()
      local c = assert(tcp.connect(HOST, port))
      loom.sleep(0.01)
      srv:close()
      is_fail("ECONNREFUSED", tcp.connect(HOST, port))
      release:set()
      assert.equal("done", c:read_line())
      c:close()
    end)

    it("fails like listen()", function()
      local srv, port = listen()
      is_fail("EADDRINUSE", tcp.serve(HOST, port, function() end))
      assert.has_error(function() tcp.serve(HOST, 0) end,
        "bad argument #3 to 'serve' (function expected, got nil)")
      srv:close()
    end)

    it("serves 1,000 concurrent clients", function()
      local srv = assert(tcp.serve(HOST, 0, function(conn)
        while true do
          local line = conn:read_line()
          if not line then
            return
          end
          conn:write(line, "\n")
        end
      end, { backlog = 1024 }))
      local _, port = srv:sockname()
      local N, done, failures = 1000, 0, {}
      local all = loom.event()
      for i = 1, N do
        loom.spawn(function()
          local c, err = tcp.connect(HOST, port, { timeout = 20 })
          if c then
            for k = 1, 3 do
              local msg = ("client %d round %d"):format(i, k)
              c:write(msg, "\n")
              local got
              got, err = c:read_line()
              if got ~= msg then
                err = err or ("wrong echo: " .. tostring(got))
                break
              end
              err = nil
            end
            c:close()
          end
          if err then
            failures[#failures + 1] = err
          end
          done = done + 1
          if done == N then
            all:set()
          end
        end)
      end
      local t0 = loom.now()
      assert.is_true(all:wait(30))
      assert.is_true(loom.now() - t0 < 30)
      assert.same({}, failures)
      srv:close()
    end)
  end)

  describe("examples", function()
    it("echo_server.lua echoes", function()
      local echo = dofile("examples/echo_server.lua")
      local srv = assert(echo.start(HOST, 0))
      local _, port = srv:sockname()
      local c = assert(tcp.connect(HOST, port))
      c:write("hello, echo")
      assert.equal("hello, echo", c:read_exactly(11))
      c:write(string.rep("e", 200000))
      assert.equal(string.rep("e", 200000), c:read_exactly(200000))
      c:close()
      srv:close()
    end)

    it("chat_server.lua fans lines out to every client", function()
      local chat_mod = dofile("examples/chat_server.lua")
      local chat = assert(chat_mod.start(HOST, 0))
      local _, port = chat.server:sockname()
      local clients = {}
      for i = 1, 3 do
        clients[i] = assert(tcp.connect(HOST, port))
        assert.equal("welcome, you are #" .. i, clients[i]:read_line())
      end
      clients[2]:write("hello all\n")
      for i = 1, 3 do
        assert.equal("#2: hello all", clients[i]:read_line())
      end
      clients[3]:close()
      clients[1]:write("still there?\n")
      assert.equal("#1: still there?", clients[1]:read_line())
      assert.equal("#1: still there?", clients[2]:read_line())
      close_all(clients)
      chat.close()
    end)
  end)
end)
