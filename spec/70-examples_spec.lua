-- Specs for the example servers (docs/examples.md): their protocol parts
-- as pure functions (valid input, malformed input, limits, pipelined input
-- split at every byte boundary), then each server on an ephemeral loopback
-- port, in this process and as a child process, driven by real clients:
-- redis-cli, redis-benchmark, curl, wrk, bash's /dev/tcp. Every example
-- ends with no live tasklet, no active handle, no extra descriptor and no
-- child process of ours.
-- Run: build/loom /usr/bin/busted spec/70-examples_spec.lua
local loom = require "loom"
local clean = require "spec.support.clean"

local HOST = "127.0.0.1"
local P = loom.process

-- The loom binary running these specs (children run the examples with it).
local function loom_bin()
  local env = os.getenv("LOOM_BIN")
  if env then
    return env
  end
  local exe = loom.fs.realpath("/proc/self/exe")
  if exe and exe:match("/loom$") then
    return exe
  end
  return "build/loom"
end
local LOOM = loom_bin()

-- Our child processes now, as a set of pids (libuv spawns them from the
-- loop's thread, which is the main thread).
local PID
local function children()
  if not PID then
    local f = assert(io.open("/proc/self/stat"))
    PID = f:read("l"):match("^(%d+)")
    f:close()
  end
  local set = {}
  local f = io.open("/proc/" .. PID .. "/task/" .. PID .. "/children")
  if f then
    for child in f:read("a"):gmatch("%d+") do
      set[child] = true
    end
    f:close()
  end
  return set
end

local snap, kids
before_each(function()
  kids = children()
  snap = clean.snapshot()
end)
after_each(function()
  -- Children first (a stray one would also hold descriptors).
  local deadline = loom.now() + 2
  local stray
  repeat
    stray = {}
    for pid in pairs(children()) do
      if not kids[pid] then
        stray[#stray + 1] = pid
      end
    end
    if #stray > 0 then
      loom.sleep(0.02)
    end
  until #stray == 0 or loom.now() > deadline
  if #stray > 0 then
    os.execute("kill -9 " .. table.concat(stray, " ") .. " 2>/dev/null")
    error("child process(es) left running: " .. table.concat(stray, ", "))
  end
  clean.assert_clean(snap, nil, 2)
end)

-- Runs a client program to its end (bounded), returns its result table.
local function run(cmd, args, opts)
  opts = opts or {}
  opts.timeout = opts.timeout or 30
  return assert(P.run(cmd, args, opts))
end

-- Starts `loom <script> [args]` (default arg "0") as a child. Returns an
-- object with proc, port (from the first stdout line: "...:PORT"), line,
-- and stop() (SIGTERM, then checks that the child ended). Closing it (a
-- `<close>` variable) kills a child that was not stopped, so a failing
-- example leaves nothing behind.
local function child_server(script, args)
  local proc = assert(P.spawn(LOOM, { script, table.unpack(args or { "0" }) },
    { stdout = "pipe", stderr = "pipe" }))
  local child = { proc = proc }
  setmetatable(child, {
    __close = function()
      if not child.stopped then
        child.stopped = true
        proc:kill("SIGKILL")
        proc:wait(5)
        proc:close()
      end
    end,
  })
  function child.stop()
    assert(proc:kill("SIGTERM"))
    local code, err = proc:wait(10)
    assert(code, "the server did not exit on SIGTERM: " .. tostring(err))
    child.stopped = true
    proc:close()
    return code
  end
  proc.stdout:settimeout(10)
  local line, err = proc.stdout:read_line()
  if not line then
    getmetatable(child).__close()
    error("the server printed no port line: " .. tostring(err))
  end
  child.line = line
  child.port = tonumber(line:match(":(%d+)%s*$"))
  if not (child.port and child.port > 0) then
    getmetatable(child).__close()
    error("no port in: " .. line)
  end
  return child
end

-- A client on loopback with a timeout on every read.
local function connect(port)
  local c = assert(loom.tcp.connect(HOST, port, { timeout = 10 }))
  return c
end

-- Feeds `input` to a stateful consumer split at `cuts` (sorted positions
-- after which a new piece starts) the way a server receives it: the
-- consumer gets the unconsumed rest plus the new piece each time.
local function pieces(input, cuts)
  local list, from = {}, 1
  for _, c in ipairs(cuts) do
    list[#list + 1] = input:sub(from, c)
    from = c + 1
  end
  list[#list + 1] = input:sub(from)
  return list
end

---------------------------------------------------------------- redis

local R = dofile("examples/redis_server.lua")

local function resp(...)
  local args = { ... }
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- Runs every command of `input` through R.process as a server would with
-- the input arriving in the given pieces; returns all replies and whether
-- the connection was closed.
local function serve_pieces(list, db)
  db = db or R.new_db()
  local buf, replies, scratch = "", {}, { argv = {}, out = {} }
  for _, piece in ipairs(list) do
    buf = buf .. piece
    local out, pos, close = R.process(db, buf, 1, scratch)
    replies[#replies + 1] = out
    if close then
      return table.concat(replies), true
    end
    buf = buf:sub(pos)
  end
  return table.concat(replies), false, buf
end

describe("examples/redis_server.lua", function()
  describe("parse()", function()
    it("reads a multibulk command: argv, the next position and the count", function()
      local cmd = resp("SET", "key", "value")
      local argv, nxt, n = R.parse(cmd .. "rest")
      assert.same({ "SET", "key", "value" }, argv)
      assert.equal(#cmd + 1, nxt)
      assert.equal(3, n)
      argv, nxt, n = R.parse("xx" .. cmd, 3)
      assert.same({ "SET", "key", "value" }, argv)
      assert.equal(#cmd + 3, nxt)
    end)

    it("is binary safe: data may hold CR, LF and NUL bytes", function()
      local v = "a\r\nb\0c\r\n"
      local argv = R.parse(resp("SET", "k\r\n", v))
      assert.same({ "SET", "k\r\n", v }, argv)
    end)

    it("reads long lengths and counts the slow way", function()
      local big = ("x"):rep(12345)
      local args = { "MSET" }
      for i = 1, 12 do
        args[#args + 1] = tostring(i)
      end
      args[#args + 1] = big
      local argv, nxt, n = R.parse(resp(table.unpack(args)))
      assert.equal(14, n)
      assert.same(args, argv)
      assert.equal(#resp(table.unpack(args)) + 1, nxt)
      -- Leading zeros in lengths are accepted.
      assert.same({ "PING" }, (R.parse("*01\r\n$0004\r\nPING\r\n")))
    end)

    it("reads inline commands: words, quotes and escapes like Redis", function()
      assert.same({ { "PING" }, 7, 1 }, { R.parse("PING\r\nx") })
      assert.same({ { "PING" }, 6, 1 }, { R.parse("PING\nx") })
      assert.same({ "SET", "a", "b" }, (R.parse("  SET \t a   b  \r\n")))
      assert.same({ "SET", "k", "hello world" }, (R.parse('SET k "hello world"\r\n')))
      assert.same({ "SET", "k", "A\n\t\"\\" }, (R.parse('SET k "\\x41\\n\\t\\"\\\\"\r\n')))
      assert.same({ "SET", "k", "it's" }, (R.parse("SET k 'it\\'s'\r\n")))
      assert.same({ "SET", "k", "" }, (R.parse("SET k \"\"\r\n")))
    end)

    it("gives n = 0 for an empty line, *0 and *-1 (nothing to run)", function()
      for _, input in ipairs({ "\r\n", "   \r\n", "*0\r\n", "*-1\r\n" }) do
        local _, nxt, n = R.parse(input)
        assert.equal(0, n, input)
        assert.equal(#input + 1, nxt, input)
      end
    end)

    it("reuses an argv table when one is given", function()
      local argv = { "old", "old", "old", "old" }
      local a, _, n = R.parse(resp("GET", "k"), 1, argv)
      assert.equal(argv, a)
      assert.equal(2, n)
      assert.same({ "GET", "k" }, { argv[1], argv[2] })
    end)

    it("returns nil for every incomplete prefix, with need once the length is known", function()
      for _, cmd in ipairs({ resp("SET", "key", "value"), "PING\r\n", 'SET k "a b"\r\n',
        resp("GET", ("k"):rep(1000)), "*1\r\n$4\r\nPING\r\n" }) do
        for k = 0, #cmd - 1 do
          local argv, need = R.parse(cmd:sub(1, k))
          assert.is_nil(argv, ("prefix of %d bytes"):format(k))
          if need then
            assert.is_true(need > k and need <= #cmd)
          end
        end
        assert.truthy(R.parse(cmd))
      end
      -- Once the bulk header is in, the whole size is known.
      local argv, need = R.parse("*2\r\n$3\r\nGET\r\n$1000\r\nkkk")
      assert.is_nil(argv)
      assert.equal(#"*2\r\n$3\r\nGET\r\n$1000\r\n" + 1002, need)
    end)

    it("reports protocol errors with Redis's messages", function()
      local cases = {
        ["*x\r\n"] = "Protocol error: invalid multibulk length",
        ["*99999999999\r\n"] = "Protocol error: invalid multibulk length",
        ["*1\r\nfoo\r\n"] = "Protocol error: expected '$', got 'f'",
        ["*1\r\n+4\r\nPING\r\n"] = "Protocol error: expected '$', got '+'",
        ["*1\r\n$-1\r\n"] = "Protocol error: invalid bulk length",
        ["*1\r\n$x\r\n"] = "Protocol error: invalid bulk length",
        ["*1\r\n$600000000\r\n"] = "Protocol error: invalid bulk length",
        ["*1\r\n$4\r\nPINGxx"] = "Protocol error: expected CRLF after bulk data",
        ["*2\r\n$3\r\nGET\r\n$1\r\nkXX"] = "Protocol error: expected CRLF after bulk data",
        ['SET k "abc\r\n'] = "Protocol error: unbalanced quotes in request",
        ['SET k "a"b\r\n'] = "Protocol error: unbalanced quotes in request",
        ["SET k 'a\r\n"] = "Protocol error: unbalanced quotes in request",
      }
      for input, msg in pairs(cases) do
        local ok, got = R.parse(input)
        assert.equal(false, ok, input)
        assert.equal(msg, got, input)
      end
    end)

    it("limits lines that do not end: inline requests and count strings", function()
      local long = ("a"):rep(R.MAX_INLINE + 1)
      assert.same({ false, "Protocol error: too big inline request" }, { R.parse(long) })
      assert.is_nil(R.parse(long:sub(1, R.MAX_INLINE)))
      assert.same({ false, "Protocol error: too big multibulk count string" },
        { R.parse("*" .. ("1"):rep(R.MAX_INLINE + 1)) })
      assert.same({ false, "Protocol error: too big bulk count string" },
        { R.parse("*1\r\n$" .. ("1"):rep(R.MAX_INLINE + 1)) })
      -- A complete inline line may be long (the limit is for the wait).
      assert.same({ "ECHO", long }, (R.parse("ECHO " .. long .. "\r\n")))
    end)
  end)

  describe("execute()", function()
    local db
    before_each(function()
      db = R.new_db()
    end)
    local function ex(...)
      return (R.execute(db, { ... }))
    end

    it("answers PING, PING msg and ECHO", function()
      assert.equal("+PONG\r\n", ex("PING"))
      assert.equal("$5\r\nhello\r\n", ex("PING", "hello"))
      assert.equal("$0\r\n\r\n", ex("ECHO", ""))
      assert.equal("-ERR wrong number of arguments for 'ping' command\r\n", ex("PING", "a", "b"))
    end)

    it("takes command names in any case", function()
      assert.equal("+PONG\r\n", ex("ping"))
      assert.equal("+OK\r\n", ex("sEt", "k", "v"))
      assert.equal("$1\r\nv\r\n", ex("get", "k"))
    end)

    it("stores with SET, reads with GET, counts with EXISTS and DEL", function()
      assert.equal("$-1\r\n", ex("GET", "k"))
      assert.equal("+OK\r\n", ex("SET", "k", "v1"))
      assert.equal("+OK\r\n", ex("SET", "k", "v\r\n2"))
      assert.equal("$4\r\nv\r\n2\r\n", ex("GET", "k"))
      assert.equal("+OK\r\n", ex("SET", "other", ""))
      assert.equal(":3\r\n", ex("EXISTS", "k", "other", "k", "nope"))
      assert.equal(":2\r\n", ex("DBSIZE"))
      assert.equal(":2\r\n", ex("DEL", "k", "nope", "other", "k"))
      assert.equal("$-1\r\n", ex("GET", "k"))
      assert.equal("-ERR syntax error\r\n", ex("SET", "k", "v", "EX"))
      assert.equal("-ERR wrong number of arguments for 'get' command\r\n", ex("GET"))
      assert.equal("-ERR wrong number of arguments for 'del' command\r\n", ex("DEL"))
    end)

    it("counts with INCR and DECR, from 0 for a missing key", function()
      assert.equal(":1\r\n", ex("INCR", "n"))
      assert.equal(":2\r\n", ex("INCR", "n"))
      assert.equal("$1\r\n2\r\n", ex("GET", "n"))
      assert.equal(":-1\r\n", ex("DECR", "m"))
      ex("SET", "n", "-9223372036854775808")
      assert.equal(":-9223372036854775807\r\n", ex("INCR", "n"))
    end)

    it("refuses to INCR what is not a 64-bit integer, as Redis does", function()
      local msg = "-ERR value is not an integer or out of range\r\n"
      for _, v in ipairs({ "abc", "", " 1", "1 ", "01", "+1", "-0", "1.0", "1e3", "0x10",
        "9223372036854775808", "-9223372036854775809", "99999999999999999999" }) do
        ex("SET", "n", v)
        assert.equal(msg, ex("INCR", "n"), v)
        assert.equal("$" .. #v .. "\r\n" .. v .. "\r\n", ex("GET", "n"), v)
      end
      ex("SET", "n", "9223372036854775807")
      assert.equal("-ERR increment or decrement would overflow\r\n", ex("INCR", "n"))
      ex("SET", "n", "-9223372036854775808")
      assert.equal("-ERR increment or decrement would overflow\r\n", ex("DECR", "n"))
      assert.equal("-ERR wrong number of arguments for 'incr' command\r\n", ex("INCR"))
    end)

    it("answers CONFIG GET save / appendonly (and globs) the way redis-benchmark expects", function()
      assert.equal("*2\r\n$4\r\nsave\r\n$0\r\n\r\n", ex("CONFIG", "GET", "save"))
      assert.equal("*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n", ex("config", "get", "appendonly"))
      assert.equal("*2\r\n$4\r\nSAVE\r\n$0\r\n\r\n", ex("CONFIG", "GET", "SAVE"))
      assert.equal("*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
        ex("CONFIG", "GET", "*"))
      assert.equal("*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n", ex("CONFIG", "GET", "append?nly"))
      assert.equal("*0\r\n", ex("CONFIG", "GET", "maxmemory"))
      assert.equal("-ERR unknown subcommand 'foo'. Try CONFIG HELP.\r\n", ex("CONFIG", "foo"))
      assert.matches("^%-ERR CONFIG SET is not supported", ex("CONFIG", "SET", "a", "b"))
      assert.equal("-ERR wrong number of arguments for 'config|get' command\r\n",
        ex("CONFIG", "GET"))
    end)

    it("names unknown commands with their first arguments", function()
      assert.equal("-ERR unknown command 'foo', with args beginning with: 'a' 'b c' \r\n",
        ex("foo", "a", "b c"))
      -- Line ends in the name become spaces: an error is one RESP line.
      assert.equal("-ERR unknown command 'x  y', with args beginning with: \r\n", ex("x\r\ny"))
    end)

    it("closes after QUIT; COMMAND is an empty list", function()
      assert.same({ "+OK\r\n", "close" }, { R.execute(db, { "QUIT" }) })
      assert.equal("*0\r\n", ex("COMMAND", "DOCS"))
    end)
  end)

  describe("process()", function()
    local batch = resp("SET", "a", "1") .. "PING\r\n" .. resp("INCR", "a") .. "\r\n" ..
      "GET a\r\n" .. resp("DEL", "a") .. "*0\r\n" .. resp("GET", "a") ..
      'ECHO "x\\r\\ny"\r\n' .. resp("SET", "bin", "\r\n\0") .. resp("GET", "bin")
    local replies = "+OK\r\n+PONG\r\n:2\r\n$1\r\n2\r\n:1\r\n$-1\r\n$4\r\nx\r\ny\r\n" ..
      "+OK\r\n$3\r\n\r\n\0\r\n"

    it("answers a pipelined batch in order, in one string", function()
      local out, pos, close, need = R.process(R.new_db(), batch)
      assert.equal(replies, out)
      assert.equal(#batch + 1, pos)
      assert.is_false(close)
      assert.is_nil(need)
      assert.same({ nil, 1, false }, { R.process(R.new_db(), "") })
    end)

    it("gives the same answers whatever byte boundary splits the input", function()
      for cut = 0, #batch do
        local out, closed, rest = serve_pieces(pieces(batch, { cut }))
        assert.equal(replies, out, "split after byte " .. cut)
        assert.is_false(closed)
        assert.equal("", rest)
      end
      for cut = 1, #batch - 7, 7 do -- two cuts: every start, a few widths
        for width = 1, 5 do
          local out = serve_pieces(pieces(batch, { cut, cut + width }))
          assert.equal(replies, out, ("cuts after %d and %d"):format(cut, cut + width))
        end
      end
    end)

    it("gives the same answers fed one byte at a time", function()
      local list = {}
      for i = 1, #batch do
        list[i] = batch:sub(i, i)
      end
      assert.equal(replies, (serve_pieces(list)))
    end)

    it("keeps the answers before a protocol error, then answers it and closes", function()
      local input = "PING\r\n" .. resp("SET", "k", "v") .. "*1\r\nfoo\r\nPING\r\n"
      local out, pos, close = R.process(R.new_db(), input)
      assert.equal("+PONG\r\n+OK\r\n-ERR Protocol error: expected '$', got 'f'\r\n", out)
      assert.is_true(close)
      assert.equal(#"PING\r\n" + #resp("SET", "k", "v") + 1, pos)
    end)

    it("stops at QUIT", function()
      local db = R.new_db()
      local out, pos, close = R.process(db, "PING\r\nQUIT\r\nSET k v\r\n")
      assert.equal("+PONG\r\n+OK\r\n", out)
      assert.is_true(close)
      assert.equal(13, pos)
      assert.is_nil(db.data.k)
    end)

    it("reports what an incomplete command still needs", function()
      local head = resp("SET", "k", "v") .. "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc"
      local out, pos, close, need = R.process(R.new_db(), head)
      assert.equal("+OK\r\n", out)
      assert.is_false(close)
      assert.equal(#resp("SET", "k", "v") + 1, pos)
      assert.equal(#"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\n" + 102, need)
    end)
  end)

  describe("the server", function()
    it("serves redis-cli: ping, set, get, incr, del", function()
      local srv <close>, db = assert(R.start(HOST, 0))
      local _, port = srv:sockname()
      local function cli(...)
        local r = run("redis-cli", { "-h", HOST, "-p", tostring(port), ... })
        assert.equal(0, r.status, r.stderr)
        return r.stdout
      end
      assert.equal("PONG\n", cli("ping"))
      assert.equal("hi there\n", cli("ping", "hi there"))
      assert.equal("OK\n", cli("set", "greeting", "hello"))
      assert.equal("hello\n", cli("get", "greeting"))
      assert.equal("1\n", cli("incr", "counter"))
      assert.equal("2\n", cli("incr", "counter"))
      assert.equal("ERR value is not an integer or out of range\n\n", cli("incr", "greeting"))
      assert.equal("2\n", cli("del", "greeting", "counter", "nope"))
      assert.equal("\n", cli("get", "greeting"))
      assert.matches("^ERR unknown command 'nosuch'", cli("nosuch", "x"))
      assert.same({}, db.data)
    end)

    it("serves redis-benchmark, with and without pipelining", function()
      local srv <close> = assert(R.start(HOST, 0))
      local _, port = srv:sockname()
      for _, pipeline in ipairs({ "1", "16" }) do
        local r = run("redis-benchmark", { "-h", HOST, "-p", tostring(port), "-t",
          "ping,set,get", "-n", "2000", "-c", "10", "-P", pipeline, "-q" }, { timeout = 60 })
        assert.equal(0, r.status, r.stderr)
        local out = r.stdout:gsub("\r", "\n")
        for _, test in ipairs({ "PING_INLINE", "PING_MBULK", "SET", "GET" }) do
          assert.matches(test .. ": [%d.]+ requests per second", out)
        end
        assert.is_nil(out:find("ERR", 1, true), out)
      end
    end)

    it("answers pipelined commands in order over one connection", function()
      local srv <close> = assert(R.start(HOST, 0))
      local _, port = srv:sockname()
      local c <close> = connect(port)
      local req, want = {}, {}
      for i = 1, 500 do
        req[#req + 1] = i % 2 == 0 and resp("INCR", "n") or "INCR n\r\n"
        want[#want + 1] = ":" .. i .. "\r\n"
      end
      want = table.concat(want)
      assert(c:write(req))
      assert.equal(want, c:read_exactly(#want))
      -- The same again, one byte per write.
      local one = table.concat(req):sub(1, 200)
      for i = 1, #one do
        assert(c:write(one:sub(i, i)))
      end
      local got = c:read_exactly(#":501\r\n")
      assert.equal(":501\r\n", got)
    end)

    it("takes a value larger than one read (1 MiB) and gives it back", function()
      local srv <close> = assert(R.start(HOST, 0))
      local _, port = srv:sockname()
      local c <close> = connect(port)
      local value = ("0123456789abcdef"):rep(65536)
      assert(c:write(resp("SET", "big", value), resp("GET", "big"), "PING\r\n"))
      local want = "+OK\r\n$" .. #value .. "\r\n" .. value .. "\r\n+PONG\r\n"
      assert.equal(want, c:read_exactly(#want))
    end)

    it("closes the connection after a protocol error, answering it first", function()
      local srv <close> = assert(R.start(HOST, 0))
      local _, port = srv:sockname()
      local c <close> = connect(port)
      assert(c:write("PING\r\n*1\r\n$x\r\nPING\r\n"))
      assert.equal("+PONG\r\n-ERR Protocol error: invalid bulk length\r\n", c:read_all())
    end)

    it("runs as a program on a port it picks and ends on SIGTERM", function()
      local server <close> = child_server("examples/redis_server.lua")
      local port = server.port
      assert.equal("redis server listening on 127.0.0.1:" .. port, server.line)
      local r = run("redis-cli", { "-p", tostring(port), "set", "k", "v" })
      assert.equal("OK\n", r.stdout)
      r = run("redis-cli", { "-p", tostring(port), "get", "k" })
      assert.equal("v\n", r.stdout)
      server.stop()
    end)
  end)
end)

---------------------------------------------------------------- http

local H = dofile("examples/http_server.lua")

local GET = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

local function post(path, body, extra)
  return ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s"):format(path, #body,
    extra or "", body)
end

-- The status line and body of each response in `text`.
local function responses(text)
  local list, pos = {}, 1
  while pos <= #text do
    local hend = assert(text:find("\r\n\r\n", pos, true), "no header end")
    local head = text:sub(pos, hend + 1)
    local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d) "))
    local len = tonumber(head:match("\r\nContent%-Length: (%d+)\r\n")) or 0
    local body = text:sub(hend + 4, hend + 3 + len)
    list[#list + 1] = { status = status, body = body, head = head }
    pos = hend + 4 + len
  end
  return list
end

-- What a server sends back for `input` arriving in the given pieces.
local function answer_pieces(list, opts)
  local buf, out = "", {}
  for _, piece in ipairs(list) do
    buf = buf .. piece
    local answers, pos, close = H.answer(buf, 1, opts)
    for _, a in ipairs(answers) do
      out[#out + 1] = a
    end
    if close then
      return table.concat(out), true
    end
    buf = buf:sub(pos)
  end
  return table.concat(out), false, buf
end

-- Responses without their Date line (it may change between two runs).
local function undated(s)
  return (s:gsub("Date: [^\r]*\r\n", ""))
end

describe("examples/http_server.lua", function()
  describe("parse_request()", function()
    it("reads the request line, headers and the position after the request", function()
      local input = "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example\r\nX-Thing:  some value \t\r\n" ..
        "Accept: a\r\naccept: b\r\n\r\nnext"
      local req, nxt = H.parse_request(input)
      assert.equal("GET", req.method)
      assert.equal("/a/b?x=1&y=2", req.target)
      assert.equal("/a/b", req.path)
      assert.equal("x=1&y=2", req.query)
      assert.equal("1.1", req.version)
      assert.same({ host = "example", ["x-thing"] = "some value", accept = "a, b" }, req.headers)
      assert.equal("", req.body)
      assert.is_true(req.keep_alive)
      assert.is_false(req.expect_continue)
      assert.equal(#input - 3, nxt)
    end)

    it("trims blanks around header values; a value may be empty", function()
      local req = H.parse_request("GET / HTTP/1.1\r\nHost:x\r\nA: \t a b \t \r\nB:\r\nC: \r\n\r\n")
      assert.same({ host = "x", a = "a b", b = "", c = "" }, req.headers)
    end)

    it("reads a Content-Length body, which may hold anything", function()
      local body = "a\r\n\r\nb\0"
      local req, nxt = H.parse_request(post("/echo", body) .. GET)
      assert.equal(body, req.body)
      assert.equal(#post("/echo", body) + 1, nxt)
      assert.equal("POST", req.method)
    end)

    it("skips empty lines before a request and reads from pos", function()
      local req, nxt = H.parse_request("zz\r\n\r\n" .. GET, 3)
      assert.equal("/", req.path)
      assert.equal(7 + #GET, nxt)
    end)

    it("knows the absolute form a proxy gets", function()
      local req = H.parse_request("GET http://h:8/p/q?z HTTP/1.1\r\nHost: h\r\n\r\n")
      assert.equal("/p/q", req.path)
      assert.equal("z", req.query)
      req = H.parse_request("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n")
      assert.equal("/", req.path)
    end)

    it("keeps HTTP/1.1 alive unless Connection: close; HTTP/1.0 only when asked", function()
      local function ka(version, connection)
        local hdr = connection and ("Connection: " .. connection .. "\r\n") or ""
        return H.parse_request(("GET / HTTP/%s\r\nHost: x\r\n%s\r\n"):format(version, hdr))
          .keep_alive
      end
      assert.is_true(ka("1.1"))
      assert.is_false(ka("1.1", "close"))
      assert.is_false(ka("1.1", "Upgrade, CLOSE"))
      assert.is_true(ka("1.1", "keep-alive"))
      assert.is_false(ka("1.0"))
      assert.is_true(ka("1.0", "Keep-Alive"))
      assert.is_true(ka("1.0", "foo , keep-alive"))
      assert.is_false(ka("1.0", "keep-alives"))
    end)

    it("returns nil for every incomplete prefix; need and head once the head is in", function()
      local input = post("/echo", "hello body")
      local head_len = #input - #"hello body"
      for k = 0, #input - 1 do
        local req, need, head = H.parse_request(input:sub(1, k))
        assert.is_nil(req, "prefix " .. k)
        if k >= head_len then
          assert.equal(#input, need)
          assert.equal("/echo", head.path)
          assert.is_nil(head.body)
        else
          assert.is_nil(need)
        end
      end
    end)

    it("notes Expect: 100-continue (HTTP/1.1 only)", function()
      local _, _, head = H.parse_request(post("/echo", "abc", "Expect: 100-Continue\r\n"):sub(1, -4))
      assert.is_true(head.expect_continue)
      local req = H.parse_request("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
      assert.is_false(req.expect_continue)
    end)

    it("rejects malformed requests with 400", function()
      for _, input in ipairs({
        "GET /\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        "GET / http/1.1\r\nHost: x\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.x\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\ny\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nA: \r \r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        " / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET  HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "GET / HTTP/1.1\r\n\r\n", -- no Host
      }) do
        local ok, status, reason = H.parse_request(input)
        assert.equal(false, ok, input)
        assert.equal(400, status, input)
        assert.is_string(reason)
      end
      -- The same Content-Length twice is fine.
      local req = H.parse_request(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")
      assert.equal("ab", req.body)
    end)

    it("limits the head to 64 KiB (431) and the body to 1 MiB (413)", function()
      local filler = "X-Fill: " .. ("f"):rep(1000) .. "\r\n"
      local huge = "GET / HTTP/1.1\r\nHost: x\r\n" .. filler:rep(66)
      assert.same({ false, 431, "request head too large" }, { H.parse_request(huge) })
      assert.same({ false, 431, "request head too large" },
        { H.parse_request(huge .. "\r\n") })
      local fits = "GET / HTTP/1.1\r\nHost: x\r\n" .. filler:rep(60) .. "\r\n"
      assert.truthy(H.parse_request(fits))
      assert.same({ false, 431, "request head too large" },
        { H.parse_request(fits, 1, { max_head = 1000 }) })
      local ok, status = H.parse_request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " ..
        (H.MAX_BODY + 1) .. "\r\n\r\n")
      assert.equal(false, ok)
      assert.equal(413, status)
      assert.truthy(H.parse_request(post("/", "abc"), 1, { max_body = 3 }))
      assert.equal(413, select(2, H.parse_request(post("/", "abcd"), 1, { max_body = 3 })))
    end)

    it("answers Transfer-Encoding with 501 and HTTP/2 with 505", function()
      assert.equal(501, select(2, H.parse_request(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")))
      assert.equal(505, select(2, H.parse_request("GET / HTTP/2.0\r\nHost: x\r\n\r\n")))
    end)
  end)

  describe("route() and response()", function()
    local function req(method, path, body)
      local r = assert(H.parse_request(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s")
        :format(method, path, #(body or ""), body or "")))
      return r
    end

    it("routes GET /, /hello/<name>, POST /echo; 404 and 405 otherwise", function()
      assert.same({ 200, "Hello, World!", "text/plain" }, { H.route(req("GET", "/")) })
      assert.same({ 200, "Hello, Ann Lee!", "text/plain; charset=utf-8" },
        { H.route(req("GET", "/hello/Ann%20Lee")) })
      assert.same({ 200, "data", "application/octet-stream" }, { H.route(req("POST", "/echo", "data")) })
      assert.equal(404, (H.route(req("GET", "/hello/a/b"))))
      assert.equal(404, (H.route(req("GET", "/nope"))))
      local status, _, _, extra = H.route(req("GET", "/echo"))
      assert.equal(405, status)
      assert.same({ "Allow: POST" }, extra)
      assert.equal(405, (H.route(req("POST", "/"))))
    end)

    it("builds whole responses, with Connection only where it is needed", function()
      local text, close = H.response(req("GET", "/"), 200, "Hello, World!", "text/plain")
      assert.matches("^HTTP/1%.1 200 OK\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n",
        text)
      assert.equal("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n" ..
        "Hello, World!", undated(text))
      assert.is_false(close)
      local r10 = assert(H.parse_request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
      assert.matches("\r\nConnection: keep%-alive\r\n\r\nok$", (H.response(r10, 200, "ok", "text/plain")))
      text, close = H.response(nil, 400, "bad\n", "text/plain")
      assert.is_true(close)
      assert.matches("^HTTP/1%.1 400 Bad Request\r\n.*Connection: close\r\n\r\nbad\n$", text)
    end)

    it("answers HEAD with the headers of GET and no body", function()
      local r = req("HEAD", "/")
      local text = H.response(r, H.route(r))
      assert.equal("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n",
        undated(text))
    end)
  end)

  describe("answer()", function()
    local input = GET .. post("/echo", "one\r\n\r\n") .. "GET /hello/you HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n" .. post("/echo", "")
    local want = { { 200, "Hello, World!" }, { 200, "one\r\n\r\n" }, { 200, "Hello, you!" },
      { 404, "Not Found\n" }, { 200, "" } }

    local function check(text, where)
      local got = responses(text)
      assert.equal(#want, #got, where)
      for i, w in ipairs(want) do
        assert.same(w, { got[i].status, got[i].body }, where)
      end
    end

    it("answers pipelined requests in order", function()
      local answers, pos, close = H.answer(input)
      assert.equal(#want, #answers)
      assert.equal(#input + 1, pos)
      assert.is_false(close)
      check(table.concat(answers), "in one piece")
    end)

    it("gives the same answers whatever byte boundary splits the input", function()
      local whole = undated(answer_pieces({ input }))
      for cut = 0, #input do
        local out, closed, rest = answer_pieces(pieces(input, { cut }))
        assert.equal(whole, undated(out), "split after byte " .. cut)
        assert.is_false(closed)
        assert.equal("", rest)
      end
      local list = {}
      for i = 1, #input do
        list[i] = input:sub(i, i)
      end
      assert.equal(whole, undated((answer_pieces(list))))
    end)

    it("stops after a request that closes the connection", function()
      local answers, pos, close = H.answer("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" .. GET)
      assert.equal(1, #answers)
      assert.is_true(close)
      assert.matches("Connection: close\r\n\r\nHello, World!$", answers[1])
      assert.equal(#"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + 1, pos)
    end)

    it("answers a malformed request after the good ones, then closes", function()
      local answers, _, close = H.answer(GET .. "BAD\r\n\r\n" .. GET)
      assert.equal(2, #answers)
      assert.is_true(close)
      assert.matches("^HTTP/1%.1 400 Bad Request\r\n", answers[2])
      assert.matches("Connection: close\r\n", answers[2])
    end)

    it("answers 500 when the route raises, and reports the error", function()
      local reported = {}
      loom.on_error(function(err, where)
        reported[#reported + 1] = tostring(where) .. ": " .. tostring(err)
      end)
      local answers = H.answer(GET, 1, { route = function() error("boom") end })
      loom.on_error(nil)
      assert.matches("^HTTP/1%.1 500 Internal Server Error\r\n", answers[1])
      assert.equal(1, #reported)
      assert.matches("boom", reported[1])
    end)
  end)

  describe("the server", function()
    -- A server whose handler also counts connections.
    local function start(opts)
      local count = 0
      local srv = assert(loom.tcp.serve(HOST, 0, function(conn)
        count = count + 1
        H.handle(conn, opts)
      end))
      local _, port = srv:sockname()
      return srv, ("http://127.0.0.1:%d"):format(port), function() return count end, port
    end

    it("serves curl: GET /, /hello/<name>, POST /echo, 404", function()
      local srv <close>, url = start()
      local function curl(...)
        local r = run("curl", { "-s", "-S", "-m", "10", "-w", "\n%{http_code}", ... })
        assert.equal(0, r.status, r.stderr)
        return r.stdout
      end
      assert.equal("Hello, World!\n200", curl(url .. "/"))
      assert.equal("Hello, loom!\n200", curl(url .. "/hello/loom"))
      assert.equal("some text\n200", curl("--data", "some text", url .. "/echo"))
      assert.equal("Not Found\n\n404", curl(url .. "/nope"))
      local r = run("curl", { "-s", "-I", "-m", "10", url .. "/" })
      assert.matches("^HTTP/1%.1 200 OK\r\n", r.stdout)
      assert.matches("Content%-Length: 13\r\n", r.stdout)
    end)

    it("echoes a large body that curl sends with Expect: 100-continue", function()
      local srv <close>, url = start()
      local body = ("loom "):rep(200000) -- 1,000,000 bytes: under the 1 MiB limit
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(body)
      f:close()
      local r = run("curl", { "-s", "-m", "20", "-H", "Expect: 100-continue", "--data-binary",
        "@" .. path, url .. "/echo" })
      os.remove(path)
      assert.equal(0, r.status, r.stderr)
      assert.equal(#body, #r.stdout)
      assert.is_true(r.stdout == body)
    end)

    it("keeps the connection alive: curl fetches two URLs over one connection", function()
      local srv <close>, url, connections = start()
      local r = run("curl", { "-s", "-v", "-m", "10", url .. "/", url .. "/hello/again" })
      assert.equal(0, r.status, r.stderr)
      assert.equal("Hello, World!Hello, again!", r.stdout)
      assert.matches("Re%-using existing connection", r.stderr)
      assert.equal(1, connections())
    end)

    it("answers pipelined requests in order, in one write", function()
      local srv <close>, _, _, port = start()
      local c <close> = connect(port)
      assert(c:write(GET, "GET /hello/2 HTTP/1.1\r\nHost: x\r\n\r\n", post("/echo", "3"),
        "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", GET))
      local got = responses(assert(c:read_all()))
      assert.same({ 200, 200, 200, 404 }, { got[1].status, got[2].status, got[3].status,
        got[4].status })
      assert.same({ "Hello, World!", "Hello, 2!", "3", "Not Found\n" }, { got[1].body,
        got[2].body, got[3].body, got[4].body })
      assert.equal(4, #got) -- nothing after Connection: close
    end)

    it("closes after answering HTTP/1.0 unless asked to keep alive", function()
      local srv <close>, _, _, port = start()
      local c <close> = connect(port)
      assert(c:write("GET / HTTP/1.0\r\n\r\n"))
      local text = assert(c:read_all())
      assert.matches("Connection: close\r\n\r\nHello, World!$", text)
      local k <close> = connect(port)
      assert(k:write("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
      local first = assert(k:read_until("Hello, World!"))
      assert.matches("Connection: keep%-alive\r\n", first)
      assert(k:write("GET /hello/1.0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
      assert(k:read_until("Hello, 1.0!"))
    end)

    it("answers 431 to a head over 64 KiB and 400 to garbage, then closes", function()
      local srv <close>, _, _, port = start()
      local c <close> = connect(port)
      assert(c:write("GET / HTTP/1.1\r\nHost: x\r\nX: " .. ("y"):rep(70000)))
      local text = assert(c:read_all())
      assert.matches("^HTTP/1%.1 431 Request Header Fields Too Large\r\n", text)
      local d <close> = connect(port)
      assert(d:write("HELLO\r\n\r\n"))
      assert.matches("^HTTP/1%.1 400 Bad Request\r\n.*Connection: close\r\n", assert(d:read_all()))
    end)

    it("drops a connection that stays silent longer than its timeout", function()
      local srv <close>, _, _, port = start({ timeout = 0.2 })
      local c <close> = connect(port)
      assert(c:write("GET / HTTP/1.1\r\n")) -- and nothing more
      local t0 = loom.now()
      local data, _, code = c:read()
      assert.is_nil(data)
      assert.equal("EOF", code)
      assert.is_true(loom.now() - t0 < 5)
    end)

    it("stands a short wrk run without errors", function()
      local srv <close>, url = start()
      local r = run("wrk", { "-t1", "-c8", "-d1s", url .. "/" }, { timeout = 30 })
      assert.equal(0, r.status, r.stderr)
      local rps = tonumber(r.stdout:match("Requests/sec:%s*([%d.]+)"))
      assert.is_true(rps and rps > 0, r.stdout)
      assert.is_nil(r.stdout:find("Socket errors", 1, true), r.stdout)
      assert.is_nil(r.stdout:find("Non-2xx", 1, true), r.stdout)
    end)

    it("runs as a program on a port it picks and ends on SIGTERM", function()
      local server <close> = child_server("examples/http_server.lua")
      local port = server.port
      assert.equal("http server listening on 127.0.0.1:" .. port, server.line)
      local r = run("curl", { "-s", "-m", "10", ("http://127.0.0.1:%d/hello/child"):format(port) })
      assert.equal("Hello, child!", r.stdout)
      server.stop()
    end)
  end)
end)

---------------------------------------------------------------- the bench servers

describe("bench/w5_http.lua and bench/w6_redis.lua", function()
  it("w5 answers 200 with the 13-byte body, keeps alive, ends on SIGTERM", function()
    local server <close> = child_server("bench/w5_http.lua")
    local port = server.port
    local url = ("http://127.0.0.1:%d/"):format(port)
    local r = run("curl", { "-s", "-v", "-m", "10", "-o", "/dev/null", "-o", "/dev/null", "-w",
      "%{http_code} %{size_download} ", url, url })
    assert.equal("200 13 200 13 ", r.stdout)
    assert.matches("Re%-using existing connection", r.stderr)
    local c <close> = connect(port)
    assert(c:write(GET, post("/", "body"), "GET / HTTP/1.0\r\n\r\n"))
    local got = responses(assert(c:read_all()))
    assert.equal(3, #got)
    for _, g in ipairs(got) do
      assert.same({ 200, "Hello, World!" }, { g.status, g.body })
    end
    server.stop()
  end)

  it("w6 serves redis-cli and redis-benchmark, ends on SIGTERM", function()
    local server <close> = child_server("bench/w6_redis.lua")
    local port = server.port
    local r = run("redis-cli", { "-p", tostring(port), "ping" })
    assert.equal("PONG\n", r.stdout)
    r = run("redis-benchmark", { "-p", tostring(port), "-t", "ping,set,get", "-n", "1000",
      "-c", "5", "-P", "16", "-q" })
    assert.equal(0, r.status)
    assert.matches("GET: [%d.]+ requests per second", (r.stdout:gsub("\r", "\n")))
    server.stop()
  end)
end)

---------------------------------------------------------------- echo and chat

describe("examples/echo_server.lua and examples/chat_server.lua", function()
  it("echo: a bash /dev/tcp client gets its bytes back", function()
    local echo = dofile("examples/echo_server.lua")
    local srv <close> = assert(echo.start(HOST, 0))
    local _, port = srv:sockname()
    local r = run("bash", { "-c", ("exec 3<>/dev/tcp/127.0.0.1/%d; printf 'hello\\nworld\\n' >&3; " ..
      "head -c 12 <&3"):format(port) })
    assert.equal("hello\nworld\n", r.stdout)
  end)

  it("echo: runs as a program and ends on SIGTERM", function()
    -- It takes a port but does not pick one: find a free one first.
    local probe = assert(loom.tcp.listen(HOST, 0))
    local _, port = probe:sockname()
    probe:close()
    local server <close> = child_server("examples/echo_server.lua", { tostring(port) })
    assert.equal(port, server.port)
    local c <close> = connect(port)
    assert(c:write("ping"))
    assert.equal("ping", c:read_exactly(4))
    server.stop()
  end)

  it("chat: a line from one client reaches every client", function()
    local chat_mod = dofile("examples/chat_server.lua")
    local chat = assert(chat_mod.start(HOST, 0))
    local _, port = chat.server:sockname()
    local a = connect(port)
    local b = connect(port)
    assert.matches("^welcome", a:read_line())
    assert.matches("^welcome", b:read_line())
    -- b is known to the hub once a's next line reaches it too.
    assert(a:write("hello from a\n"))
    local got_a = a:read_line()
    local got_b = b:read_line()
    assert.matches(": hello from a$", got_a)
    assert.equal(got_a, got_b)
    assert(b:write("and b\n"))
    assert.matches(": and b$", a:read_line())
    assert.matches(": and b$", b:read_line())
    a:close()
    b:close()
    chat.close()
  end)
end)
