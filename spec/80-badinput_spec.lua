-- spec/80-badinput_spec.lua - the bad-input matrix (issue 7).
--
-- Every public function of the loom module and of its sub-tables (taken
-- from the modules at run time, so a new function is covered without
-- touching this file), and every method of every object type loom makes, is
-- called with each hostile value of BAD in each parameter position, one
-- position at a time, the others holding valid examples from VALID / TYPES
-- below. Fields of option tables get the same treatment. Each call must
--   * raise a clear error: "bad argument ..." / "bad self", or an error this
--     file lists as documented for that function, or a loom error object;
--   * or return normally (a fail triple `nil, "CODE: msg", "CODE"`, or a
--     value: many "bad" values are valid somewhere, like 0 or "");
--   * and never crash, never hang (the call runs in a tasklet that is
--     killed after a deadline; only functions marked `blocking` may wait),
--     never leave a tasklet, a timer or a file descriptor behind, never
--     report an error asynchronously instead of raising it.
-- Seconds arguments (`secs`) must reject NaN, negatives and non-numbers and
-- accept huge values (clamped), as docs/api.md says.
--
-- How it runs: each target (a module table or an object type) is swept by
-- a child process running this very file in worker mode
--   loom spec/80-badinput_spec.lua worker <target> <first call> <progress file>
-- which writes one line per call to the progress file before making it.
-- A crash or a hang of the whole process therefore fails only that
-- target's test, names the exact call, and the sweep resumes after it.
-- Under an ASan build the children are ASan builds too (same binary).
--
-- Run: build-rel/loom /usr/bin/busted spec/80-badinput_spec.lua
--      (LOOM_BADINPUT_ONLY=loom.tcp to sweep one target)
local loom = require "loom"
local core = require "loom.core"

local pack, unpack = table.pack, table.unpack
local IS_SPEC = type(describe) == "function"

------------------------------------------------------------------------
-- What is not swept, and why. Everything else found on the modules is.
local SKIP = {
  ["loom.stop"] = "documented side effect: ends the drive the sweep runs in (the busted run or "
    .. "the worker); it takes no arguments",
}
-- Object types found in the registry that have no factory here.
local SKIP_TYPES = {
  ["loom.tty"] = "needs a terminal; its methods are stream.c's, swept on loom.pipe and "
    .. "loom.tcp_conn",
  ["loom.channel_exception"] = "internal wrapper of ch:send_exception, never handed to scripts",
}

------------------------------------------------------------------------
-- Worker mode: sweeps one target and writes its progress file.

local DEADLINE = tonumber(os.getenv("LOOM_BADINPUT_DEADLINE") or "") or 0.25
local BIG = string.rep("x", 1 << 20)

local out -- the progress file
local function emit(...)
  local line = table.concat({ ... }, " "):gsub("[\r\n]+", " | ")
  if #line > 600 then line = line:sub(1, 600) .. "..." end
  out:write(line, "\n")
  out:flush()
end

local function text(v)
  local ok, s = pcall(tostring, v)
  if not ok then return "<" .. type(v) .. " whose __tostring fails>" end
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return s
end

local function noop() end

-- Fixtures shared by the calls of a worker.
local ctx = {}

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok
end

local function setup_ctx()
  ctx.tmp = os.tmpname()
  os.remove(ctx.tmp)
  assert(sh("mkdir -p " .. ctx.tmp))
  ctx.file = ctx.tmp .. "/f"
  local f = assert(io.open(ctx.file, "w"))
  f:write("hello\nworld\n")
  f:close()
  ctx.n = 0
  if loom.tcp then
    local s = assert(loom.tcp.listen("127.0.0.1", 0))
    local _, port = s:sockname()
    s:close()
    ctx.refused_port = port
    ctx.server = assert(loom.tcp.listen("127.0.0.1", 0))
    _, ctx.server_port = ctx.server:sockname()
  end
  if loom.udp then
    ctx.udp = assert(loom.udp.bind("127.0.0.1", 0))
    local _
    _, ctx.udp_port = ctx.udp:sockname()
  end
end

local function fresh_path(name)
  ctx.n = ctx.n + 1
  return ("%s/%s%d"):format(ctx.tmp, name or "p", ctx.n)
end

local function fresh_file(content)
  local p = fresh_path("f")
  local f = assert(io.open(p, "w"))
  f:write(content or "hello\nworld\n")
  f:close()
  return p
end

local function closed_channel()
  local ch = loom.channel()
  ch:close()
  return ch
end

local function mtname(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__name") or nil
end

-- Releases whatever a call returned: closes, cancels, kills, stops.
local function release(v)
  local name = mtname(v)
  if name == nil then return end
  if name == "loom.deferred" then
    pcall(v.add_errback, v, noop)
    pcall(v.cancel, v)
  elseif name == "loom.tasklet" then
    if v:alive() then pcall(v.kill, v, "badinput cleanup") end
  elseif name == "loom.group" then
    pcall(v.cancel, v)
  elseif name == "loom.proc" then
    pcall(v.kill, v, "SIGKILL")
    pcall(v.wait, v, 2)
    pcall(v.close, v)
  elseif name == "loom.call_later" then
    pcall(v.cancel, v)
  elseif name == "loom.signal_handler" then
    pcall(v.stop, v)
  end
  if type(v) == "userdata" or type(v) == "table" then
    local close = (name ~= "loom.channel") and (getmetatable(v).__close) or nil
    local ok, m = pcall(function() return v.close end)
    if ok and type(m) == "function" then pcall(m, v)
    elseif close then pcall(close, v) end
    local ok2, stop = pcall(function() return v.stop end)
    if ok2 and type(stop) == "function" then pcall(stop, v) end
  end
end

-- A connected TCP pair: conn (the client) has "line1\nline2\n" waiting and
-- then EOF; its writes go to peer, which nobody reads.
local function tcp_pair()
  local conn
  local t = loom.spawn(function()
    conn = assert(loom.tcp.connect("127.0.0.1", ctx.server_port))
  end)
  local peer = assert(ctx.server:accept(5))
  assert(t:join(5))
  assert(peer:write("line1\nline2\n"))
  peer:shutdown()
  return conn, peer
end

------------------------------------------------------------------------
-- The hostile values. Each is {label, make(kind)} where kind tells what a
-- "closed object" / "other loom object" stands for at that position.

local function bad_values()
  return {
    { "nil", function() return nil end },
    { "true", function() return true end },
    { "0", function() return 0 end },
    { "-1", function() return -1 end },
    { "2^53", function() return 2 ^ 53 end },
    { "math.mininteger", function() return math.mininteger end },
    { "NaN", function() return 0 / 0 end },
    { "1/0", function() return 1 / 0 end },
    { "-1/0", function() return -1 / 0 end },
    { '""', function() return "" end },
    { "1 MB string", function() return BIG end },
    { '"a\\0b"', function() return "a\0b" end },
    { "{}", function() return {} end },
    { "print", function() return print end },
    { "a coroutine", function() return coroutine.create(noop) end },
    { "io.stdout", function() return io.stdout end },
    { "a closed object", function(typ) return typ and typ.closed and typ.closed() or closed_channel() end },
    { "another loom object", function(typ)
        if typ and typ.name == "loom.event" then return loom.channel() end
        return loom.event()
      end },
  }
end

-- Values a seconds argument must reject (bad argument) and accept (clamped).
local SECS_REJECT = { ["-1"] = true, ["math.mininteger"] = true, ["NaN"] = true, ["-1/0"] = true,
  ["true"] = true, ['""'] = true, ["1 MB string"] = true, ['"a\\0b"'] = true, ["{}"] = true,
  ["print"] = true, ["a coroutine"] = true, ["io.stdout"] = true, ["a closed object"] = true,
  ["another loom object"] = true }
local SECS_ACCEPT = { ["0"] = true, ["2^53"] = true, ["1/0"] = true }

------------------------------------------------------------------------
-- Valid examples of the module functions. Fields:
--   args(ctx) -> {...}, n     valid arguments (n defaults to #args)
--   secs = {pos...}           positions holding seconds
--   opts = {pos=, fields={...}, secs={field=true}}  an option table to sweep
--   blocking = true           may wait past the deadline (it is then killed)
--   raises = "why"            may raise anything (it documents passing errors on)
--   allow = {pattern...}      documented error messages besides bad argument
--   reports = "why"           may report errors through loom.on_error
--   after(res, args)          extra cleanup / restore
--   deadline = s              a longer deadline (I/O)

local VALID = {}

local function on_error_restore() end -- replaced in worker()

VALID["loom.spawn"] = { args = function() return { noop, 1, "x" } end }
VALID["loom.spawn_with"] = { args = function() return { noop, noop, 1 } end }
VALID["loom.spawn_now"] = { args = function() return { noop, noop, 1 } end }
VALID["loom.run"] = { args = function() return { noop, 1 } end,
  raises = "run raises fn's error (docs/api.md)" }
VALID["loom.current"] = { args = function() return {} end }
VALID["loom.yield"] = { args = function() return {} end }
VALID["loom.sleep"] = { args = function() return { 0.001 } end, secs = { 1 }, blocking = true }
VALID["loom.now"] = { args = function() return {} end }
VALID["loom.tasklets"] = { args = function() return {} end }
VALID["loom.dump"] = { args = function() return {} end }
VALID["loom.stats"] = { args = function() return {} end }
VALID["loom.can_block"] = { args = function() return {} end }
VALID["loom.config"] = { args = function() return { { slice = 0, cpu_limit = 0 } } end,
  opts = { pos = 1, fields = { "slice", "cpu_limit" }, secs = { slice = true, cpu_limit = true } },
  before = function() return core.config() end,
  after = function(_, _, prev) core.config(prev) end }
VALID["loom.timeout"] = { args = function() return { 0.05, noop, 1 } end, secs = { 1 },
  raises = "errors raised by fn pass through unchanged (docs/api.md)" }
VALID["loom.group"] = { args = function() return {} end }
VALID["loom.channel"] = { args = function() return { 1 } end }
VALID["loom.select"] = { args = function() return { { { "receive", loom.channel(1) } }, 0.01 } end,
  secs = { 2 }, blocking = true }
VALID["loom.event"] = { args = function() return {} end }
VALID["loom.semaphore"] = { args = function() return { 1 } end }
VALID["loom.call_later"] = { args = function() return { 10, noop, 1 } end, secs = { 1 },
  reports = "fn runs later in reactor context; an error there is reported (docs/api.md)" }
VALID["loom.looping_call"] = { args = function() return { 10, noop, 1 } end, secs = { 1 },
  reports = "fn runs later in reactor context; an error there is reported" }
VALID["loom.on_error"] = { args = function() return { noop } end,
  after = function() on_error_restore() end }
VALID["loom.report_error"] = { args = function() return { "boom", "where" } end,
  reports = "reporting is what it does" }
VALID["loom.on_shutdown"] = { args = function() return { noop } end }
VALID["loom.deferred"] = { args = function() return { noop } end }
VALID["loom.is_deferred"] = { args = function() return { loom.deferred() } end }
VALID["loom.succeed"] = { args = function() return { 1 } end }
VALID["loom.fail"] = { args = function() return { "x" } end }
VALID["loom.maybe_deferred"] = { args = function() return { noop, 1 } end }
VALID["loom.gather"] = { args = function() return { { loom.succeed(1) } } end }
VALID["loom.deferred_list"] = {
  args = function() return { { loom.succeed(1) }, { consume_errors = true } } end,
  opts = { pos = 2, fields = { "fire_on_one_callback", "fire_on_one_errback", "consume_errors" } } }
VALID["loom.deferred_tasklet"] = { args = function() return { noop } end }
VALID["loom.blocking_tasklet"] = { args = function() return { noop } end }
VALID["loom.block_on"] = { args = function() return { loom.succeed(1) } end, blocking = true }

VALID["loom.tcp.connect"] = { deadline = 5,
  args = function() return { "127.0.0.1", ctx.refused_port, { timeout = 2 } } end,
  opts = { pos = 3, fields = { "timeout", "nodelay", "high_water", "backlog" },
    secs = { timeout = true } } }
VALID["loom.tcp.listen"] = { deadline = 5,
  args = function() return { "127.0.0.1", 0, { backlog = 8 } } end,
  opts = { pos = 3, fields = { "timeout", "nodelay", "high_water", "backlog" },
    secs = { timeout = true } } }
VALID["loom.tcp.serve"] = { deadline = 5,
  args = function() return { "127.0.0.1", 0, noop, { backlog = 8 } } end,
  opts = { pos = 4, fields = { "timeout", "nodelay", "high_water", "backlog" },
    secs = { timeout = true } } }
VALID["loom.udp.bind"] = { deadline = 5, args = function() return { "127.0.0.1", 0 } end }
VALID["loom.udp.open"] = { args = function() return {} end }
VALID["loom.dns.resolve"] = { deadline = 10,
  args = function() return { "localhost", { family = "inet", timeout = 5 } } end,
  opts = { pos = 2, fields = { "family", "timeout" }, secs = { timeout = true } } }
VALID["loom.dns.reverse"] = { deadline = 10, args = function() return { "127.0.0.1" } end }

VALID["loom.fs.read_file"] = { deadline = 5, args = function() return { ctx.file } end }
VALID["loom.fs.write_file"] = { deadline = 5,
  args = function() return { fresh_path("w"), "data" } end }
VALID["loom.fs.open"] = { deadline = 5, args = function() return { ctx.file, "r" } end }
VALID["loom.fs.stat"] = { deadline = 5, args = function() return { ctx.file } end }
VALID["loom.fs.lstat"] = { deadline = 5, args = function() return { ctx.file } end }
VALID["loom.fs.exists"] = { deadline = 5, args = function() return { ctx.file } end }
VALID["loom.fs.readdir"] = { deadline = 5, args = function() return { ctx.tmp } end }
VALID["loom.fs.mkdir"] = { deadline = 5, args = function() return { fresh_path("d") } end }
VALID["loom.fs.rmdir"] = { deadline = 5, args = function()
    local p = fresh_path("d")
    sh("mkdir " .. p)
    return { p }
  end }
VALID["loom.fs.unlink"] = { deadline = 5, args = function() return { fresh_file() } end }
VALID["loom.fs.rename"] = { deadline = 5,
  args = function() return { fresh_file(), fresh_path("r") } end }
VALID["loom.fs.copyfile"] = { deadline = 5,
  args = function() return { ctx.file, fresh_path("c"), { exclusive = true } } end,
  opts = { pos = 3, fields = { "exclusive" } } }
VALID["loom.fs.realpath"] = { deadline = 5, args = function() return { ctx.tmp } end }
VALID["loom.fs.mkdtemp"] = { deadline = 5, args = function() return { ctx.tmp .. "/tXXXXXX" } end }

local IGNORE_ALL = { stdin = "ignore", stdout = "ignore", stderr = "ignore" }
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end
VALID["loom.process.spawn"] = { deadline = 5,
  args = function() return { "true", {}, copy(IGNORE_ALL) } end,
  opts = { pos = 3, fields = { "cwd", "env", "stdin", "stdout", "stderr" } } }
VALID["loom.process.run"] = { deadline = 5,
  args = function() return { "true", {}, { stderr = "ignore" } } end,
  opts = { pos = 3, fields = { "cwd", "env", "stdin", "stdout", "stderr" } } }

-- SIGWINCH: ignored by default, so a raise that goes through is harmless.
VALID["loom.signal.wait"] = { args = function() return { "SIGWINCH", 0.01 } end, secs = { 2 },
  blocking = true }
VALID["loom.signal.on"] = { args = function() return { "SIGWINCH", noop } end }
VALID["loom.signal.raise"] = { args = function() return { "SIGWINCH" } end }

-- The error classes and Failure are tables of functions too.
local function class_valid(cls)
  return {
    new = { args = function() return { cls, "message", { extra = 1 } } end },
    is = { args = function() return { cls, cls:new("m") } end },
    __tostring = { args = function() return { cls:new("m") } end },
  }
end

local function a_failure()
  local f
  loom.fail("x"):add_errback(function(v) f = v end)
  return f
end
local FAILURE_VALID = {
  check = { args = function() return { a_failure(), loom.TaskletExit } end },
  trap = { args = function() return { a_failure(), loom.TaskletExit } end,
    raises = "trap re-raises the failure when no class matches (SPEC 5)" },
  raise = { args = function() return { a_failure() } end,
    raises = "raise() raises the failure's value (SPEC 5)" },
  is = { args = function() return { loom.Failure, a_failure() } end },
  __tostring = { args = function() return { a_failure() } end },
}

local function valid_for(path, tname, key)
  if VALID[path] then return VALID[path] end
  local cls = loom[tname]
  if tname == "Failure" then return FAILURE_VALID[key] end
  if type(cls) == "table" and type(rawget(cls, "is")) == "function"
    and type(rawget(cls, "new")) == "function" then
    return class_valid(cls)[key]
  end
  return nil
end

------------------------------------------------------------------------
-- Object types: how to make one, a closed one, and valid method arguments.
-- `make()` returns the object and a cleanup function.

local TYPES = {}

TYPES["loom.tasklet"] = {
  make = function()
    local t = loom.spawn(function() loom.sleep(30) end)
    loom.yield()
    return t, function() if t:alive() then t:kill() end end
  end,
  closed = function()
    local t = loom.spawn(noop)
    t:join()
    return t
  end,
  methods = {
    join = { args = { 0.01 }, secs = { 2 }, blocking = true },
    kill = { args = { "reason" } },
    throw = { args = { "err" }, reports = "the thrown error ends the tasklet, nobody joins it",
      allow = { "cannot throw into a dead tasklet" } },
    alive = { args = {} },
    traceback = { args = { "msg" } },
    __index = { args = { "name" } },
    __newindex = { args = { "name", "x" }, allow = { "cannot be set (only 'name')" } },
  },
}
TYPES["loom.channel"] = {
  make = function() return loom.channel(1) end,
  closed = closed_channel,
  methods = {
    send = { args = { 1, 0.01 }, secs = { 3 } },
    receive = { args = { 0.01 }, secs = { 2 }, blocking = true },
    close = { args = {} },
    iter = { args = {} },
    send_exception = { args = { "err", 0.01 }, secs = { 3 } },
    __index = { args = { "closed" } },
    __len = { args = {} },
  },
}
TYPES["loom.event"] = {
  make = function() return loom.event() end,
  methods = {
    set = { args = {} }, clear = { args = {} }, is_set = { args = {} },
    wait = { args = { 0.01 }, secs = { 2 }, blocking = true },
  },
}
TYPES["loom.semaphore"] = {
  make = function() return loom.semaphore(1) end,
  methods = {
    acquire = { args = { 0.01 }, secs = { 2 } },
    release = { args = {} },
    __index = { args = { "count" } },
  },
}
TYPES["loom.call_later"] = {
  make = function()
    local h = loom.call_later(30, noop)
    return h, function() h:cancel() end
  end,
  closed = function()
    local h = loom.call_later(30, noop)
    h:cancel()
    return h
  end,
  methods = { cancel = { args = {} }, active = { args = {} } },
}
TYPES["loom.deferred"] = {
  make = function()
    local d = loom.deferred()
    return d, function() release(d) end
  end,
  closed = function() return loom.succeed(1) end,
  allow = { "AlreadyCalled", "EALREADY" },
  methods = {
    callback = { args = { 1 } },
    errback = { args = { "e" } },
    add_callback = { args = { noop } },
    add_errback = { args = { noop } },
    add_both = { args = { noop } },
    add_callbacks = { args = { noop, noop } },
    chain_deferred = { args = function() return { loom.deferred() } end },
    pause = { args = {} },
    unpause = { args = {} },
    cancel = { args = {} },
    add_timeout = { args = { 10 }, secs = { 2 } },
    __tostring = { args = {} },
  },
}
TYPES["loom.group"] = {
  make = function()
    local g = loom.group()
    return g, function() g:cancel() end
  end,
  closed = function()
    local g = loom.group()
    g:cancel()
    return g
  end,
  methods = {
    spawn = { args = { noop }, allow = { "the group was cancelled" } },
    wait = { args = { 0.01 }, secs = { 2 } },
    cancel = { args = {} },
  },
}

local STREAM_METHODS = {
  read = { args = { 1 } },
  read_exactly = { args = { 1 } },
  read_line = { args = { { max = 100, keep_newline = false } },
    opts = { pos = 2, fields = { "max", "keep_newline" } } },
  read_until = { args = { "\n", 100 } },
  read_all = { args = {} },
  write = { args = { "x" }, blocking = true },
  shutdown = { args = {} },
  close = { args = {} },
  closed = { args = {} },
  settimeout = { args = { 1 }, secs = { 2 } },
  gettimeout = { args = {} },
  set_high_water = { args = { 65536 } },
  write_queue_size = { args = {} },
  __tostring = { args = {} },
}

if loom.tcp then
  local conn_methods = copy(STREAM_METHODS)
  conn_methods.peername = { args = {} }
  conn_methods.sockname = { args = {} }
  conn_methods.nodelay = { args = { true } }
  conn_methods.keepalive = { args = { true, 10 } }
  TYPES["loom.tcp_conn"] = {
    deadline = 5,
    make = function()
      local c, p = tcp_pair()
      return c, function() c:close(); p:close() end
    end,
    closed = function()
      local c, p = tcp_pair()
      c:close(); p:close()
      return c
    end,
    methods = conn_methods,
  }
  TYPES["loom.tcp_server"] = {
    deadline = 5,
    make = function()
      local s = assert(loom.tcp.listen("127.0.0.1", 0))
      return s, function() s:close() end
    end,
    closed = function()
      local s = assert(loom.tcp.listen("127.0.0.1", 0))
      s:close()
      return s
    end,
    methods = {
      accept = { args = { 0.01 }, secs = { 2 }, blocking = true },
      sockname = { args = {} }, close = { args = {} }, closed = { args = {} },
      __tostring = { args = {} },
    },
  }
end
if loom.udp then
  TYPES["loom.udp"] = {
    deadline = 5,
    make = function()
      local u = assert(loom.udp.bind("127.0.0.1", 0))
      return u, function() u:close() end
    end,
    closed = function()
      local u = assert(loom.udp.open())
      u:close()
      return u
    end,
    methods = {
      send = { args = { "x", "127.0.0.1", 9 }, setup = function(a) a[4] = ctx.udp_port end },
      receive = { args = { 0.01 }, secs = { 2 }, blocking = true },
      sockname = { args = {} }, dropped = { args = {} }, close = { args = {} },
      __len = { args = {} }, __tostring = { args = {} },
    },
  }
end
if loom.fs then
  TYPES["loom.file"] = {
    deadline = 5,
    make = function()
      local f = assert(loom.fs.open(fresh_file(), "r+"))
      return f, function() f:close() end
    end,
    closed = function()
      local f = assert(loom.fs.open(ctx.file, "r"))
      f:close()
      return f
    end,
    methods = {
      read = { args = { 1 } }, write = { args = { "x" } }, seek = { args = { "set", 0 } },
      sync = { args = {} }, stat = { args = {} },
      lines = { args = {}, allow = { "ECLOSED: file closed" } }, -- "raises on errors" (fs.c)
      close = { args = {} },
      __tostring = { args = {} },
    },
  }
end
if loom.process then
  local function printf_proc()
    return assert(loom.process.spawn("printf", { "line1\\nline2\\n" },
      { stdin = "ignore", stdout = "pipe", stderr = "ignore" }))
  end
  TYPES["loom.pipe"] = {
    deadline = 5,
    make = function()
      local p = printf_proc()
      return p.stdout, function() p.stdout:close(); p:wait(5); p:close() end
    end,
    closed = function()
      local p = printf_proc()
      p.stdout:close(); p:wait(5); p:close()
      return p.stdout
    end,
    methods = STREAM_METHODS,
  }
  TYPES["loom.proc"] = {
    deadline = 5,
    make = function()
      local p = assert(loom.process.spawn("sleep", { "30" }, copy(IGNORE_ALL)))
      return p, function() release(p) end
    end,
    closed = function()
      local p = assert(loom.process.spawn("true", {}, copy(IGNORE_ALL)))
      p:wait(5); p:close()
      return p
    end,
    methods = {
      wait = { args = { 0.01 }, secs = { 2 }, blocking = true },
      kill = { args = { "SIGTERM" } },
      close = { args = {} },
      __index = { args = { "pid" } },
      __tostring = { args = {} },
    },
  }
end
if loom.signal then
  TYPES["loom.signal_handler"] = {
    make = function()
      local h = loom.signal.on("SIGWINCH", noop)
      return h, function() h:stop() end
    end,
    closed = function()
      local h = loom.signal.on("SIGWINCH", noop)
      h:stop()
      return h
    end,
    methods = { stop = { args = {} }, unref = { args = {} }, ref = { args = {} },
      active = { args = {} }, __tostring = { args = {} } },
  }
end
-- The standard streams are singletons: close() runs last. The worker's
-- stdin is /dev/null and its stdout a file.
TYPES["loom.stdio_file"] = {
  singleton = true,
  make = function() return core.stdin end,
  methods = {
    read = { args = { 1 } }, read_exactly = { args = { 1 } },
    read_line = { args = { { max = 100 } } }, read_until = { args = { "\n", 100 } },
    read_all = { args = {} }, write = { args = { "x" } }, closed = { args = {} },
    settimeout = { args = { 1 }, secs = { 2 } }, close = { args = {} },
  },
}

------------------------------------------------------------------------
-- Enumeration: the targets and their calls, from the modules themselves.

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

-- Module targets: "loom" and each table hanging off it ("loom.tcp",
-- "loom.TaskletExit", "loom.Failure", ...): name -> { {path, fn}, ... }.
local function module_targets()
  local targets, order = {}, {}
  local function add(tname, path, fn)
    if not targets[tname] then
      targets[tname] = {}
      order[#order + 1] = tname
    end
    local list = targets[tname]
    list[#list + 1] = { path = path, fn = fn }
  end
  for _, k in ipairs(sorted_keys(loom)) do
    local v = loom[k]
    if type(v) == "function" then
      add("loom", "loom." .. k, v)
    elseif type(v) == "table" then
      for _, k2 in ipairs(sorted_keys(v)) do
        local f = rawget(v, k2)
        if type(f) == "function" and k2:sub(1, 1) ~= "_" or k2 == "__tostring" then
          if type(f) == "function" then add("loom." .. k, "loom." .. k .. "." .. k2, f) end
        end
      end
    end
  end
  return targets, order
end

-- The methods of an object: its metatable's __index table, or the methods
-- table behind loom's C __index (upvalue 2 of the dispatcher), plus the
-- metamethods worth calling with hostile values.
local METAMETHODS = { "__index", "__newindex", "__len", "__tostring", "__close", "__gc" }
local function methods_of(obj)
  local mt = getmetatable(obj)
  local list = {}
  if type(mt) ~= "table" then return list end
  local idx = rawget(mt, "__index")
  local methods
  if type(idx) == "table" then
    methods = idx
  elseif type(idx) == "function" and debug and debug.getupvalue then
    local _, up = debug.getupvalue(idx, 2)
    if type(up) == "table" then methods = up end
  end
  if methods then
    for _, k in ipairs(sorted_keys(methods)) do
      if type(methods[k]) == "function" and k:sub(1, 1) ~= "_" then
        list[#list + 1] = { name = k, fn = methods[k] }
      end
    end
  end
  for _, k in ipairs(METAMETHODS) do
    if type(rawget(mt, k)) == "function" then list[#list + 1] = { name = k, fn = rawget(mt, k) } end
  end
  return list
end

-- loom.* metatables in the registry: every object type loom can make.
local function registry_types()
  local names = {}
  for k, v in pairs(debug.getregistry()) do
    if type(k) == "string" and k:match("^loom%.") and type(v) == "table" then
      names[#names + 1] = k
    end
  end
  table.sort(names)
  return names
end

local function all_type_names()
  local seen, names = {}, {}
  for _, n in ipairs(registry_types()) do
    if not seen[n] then seen[n] = true; names[#names + 1] = n end
  end
  for n in pairs(TYPES) do
    if not seen[n] then seen[n] = true; names[#names + 1] = n end
  end
  table.sort(names)
  return names
end

------------------------------------------------------------------------
-- One call.

local reports = {}
local KNOWN_CODES = { EKILLED = true, ECANCELED = true, ETIMEDOUT = true, EALREADY = true,
  EDEADLK = true }

local ncall = 0
local start_at = 1

local function finding(kind, desc, detail)
  emit("FIND", ncall, kind, desc, "::", detail)
end

local function clear_error(e, spec, typ)
  if type(e) == "string" then
    if e:find("bad argument", 1, true) or e:find("on bad self", 1, true) then return true end
    if e:find("cannot block", 1, true) then return true end
    for _, list in ipairs({ spec.allow or {}, typ and typ.allow or {} }) do
      for _, p in ipairs(list) do
        if e:find(p, 1, true) then return true end
      end
    end
    return false
  end
  if type(e) == "table" and getmetatable(e) and type(rawget(e, "code")) == "string" then
    if KNOWN_CODES[e.code] then return true end
    for _, p in ipairs(spec.allow or {}) do
      if e.code == p then return true end
    end
  end
  return false
end

local function live_count()
  return #loom.tasklets()
end

-- Runs one call in a tasklet with a deadline and judges it.
-- c = { desc, fn, args, n, spec, typ, label, secs = bool }
local function exec(c)
  ncall = ncall + 1
  if ncall < start_at then return end
  emit("CALL", ncall, c.desc)
  local spec = c.spec
  local base_live = live_count()
  local base_reports = #reports
  local saved = spec.before and spec.before()
  local res
  local fn, args, n = c.fn, c.args, c.n
  local t = loom.spawn(function()
    res = pack(pcall(fn, unpack(args, 1, n)))
  end)
  t.name = "badinput call"
  local deadline = spec.deadline or (c.typ and c.typ.deadline) or DEADLINE
  local ok, e, code = t:join(deadline)
  if ok == nil and code == "ETIMEDOUT" then
    t:kill("badinput deadline")
    local ok2 = t:join(2)
    if ok2 == nil then
      finding("KILL", c.desc, "blocked past the deadline and kill() did not end it in 2 s ("
        .. text(t) .. ")")
    end
    if not spec.blocking then
      finding("HANG", c.desc, ("no return within %g s"):format(deadline))
    end
    res = nil
  elseif ok == false then
    finding("ESCAPE", c.desc, "an error escaped pcall: " .. text(e))
    res = nil
  end
  if res then
    if not res[1] and c.label == "valid" and not spec.raises then
      -- the valid example itself must work: else the table here is wrong,
      -- or the function is broken
      finding("VALID", c.desc, "the valid call raised " .. type(res[2]) .. ": " .. text(res[2]))
    elseif not res[1] then
      local err = res[2]
      if c.meta_self then
        -- A metamethod called by hand on something that is not its object:
        -- Lua itself answers such calls with "attempt to index ..."; only
        -- crashes, hangs and leaks count here.
        if not clear_error(err, spec, c.typ) then
          emit("NOTE", c.desc .. " raised " .. text(err))
        end
      elseif not (spec.raises or clear_error(err, spec, c.typ)) then
        finding("UNCLEAR", c.desc, "raised " .. type(err) .. ": " .. text(err))
      elseif c.secs and SECS_ACCEPT[c.label] then
        finding("REJECTED", c.desc, "seconds above 1e9 are clamped (docs/api.md), but it raised: "
          .. text(err))
      end
    else
      if c.secs and SECS_REJECT[c.label] and c.label ~= "nil" then
        finding("ACCEPTED", c.desc, "seconds must be a number >= 0 (docs/api.md), but it returned "
          .. text(res[2]) .. (res[3] ~= nil and (", " .. text(res[3])) or ""))
      end
      for i = 2, res.n do release(res[i]) end
    end
  end
  if c.cleanup then pcall(c.cleanup) end
  if spec.after then pcall(spec.after, res, args, saved) end
  -- Tasklets the call started should end (killed ones unwind at once).
  local wait_until = loom.now() + 1
  while live_count() > base_live and loom.now() < wait_until do
    loom.sleep(0.005)
  end
  if live_count() > base_live then
    local names = {}
    for _, x in ipairs(loom.tasklets()) do
      if x ~= loom.current() and x.name ~= "tcp serve" then names[#names + 1] = text(x) end
    end
    if #names > 0 then
      finding("LEAK", c.desc, "tasklets left alive: " .. table.concat(names, ", "))
    end
    for _, x in ipairs(loom.tasklets()) do
      if x ~= loom.current() and not x.name or x.name == "badinput call" then pcall(x.kill, x) end
    end
  end
  if #reports > base_reports and not spec.reports and not (c.typ and c.typ.reports) then
    finding("REPORTED", c.desc, "an error was reported (loom.on_error) instead of raised: "
      .. reports[#reports])
  end
end

-- All the calls of one function or method, from valid examples.
-- path: its name; fn; spec (may be nil: all-bad sweep); typ: object type or nil.
local function sweep(path, fn, spec, typ)
  local values = bad_values()
  if not spec then
    emit("NOTE", "no valid example for " .. path .. ": all-bad sweep of positions 1..3")
    for pos = 1, 3 do
      for _, v in ipairs(values) do
        local args = {}
        args[pos] = v[2](typ)
        exec({ desc = ("%s(#%d = %s)"):format(path, pos, v[1]), fn = fn, args = args, n = pos,
          spec = { blocking = true }, typ = typ, label = v[1] })
      end
    end
    return
  end
  local function valid_args()
    local a, n
    if type(spec.args) == "function" then a, n = spec.args() else a = copy(spec.args or {}) end
    return a, n or #a
  end
  local secs = {}
  for _, p in ipairs(spec.secs or {}) do secs[p] = true end
  -- the valid call itself: it must work
  do
    local a, n = valid_args()
    if typ then table.insert(a, 1, typ.obj()); n = n + 1 end
    if spec.setup then spec.setup(a) end
    exec({ desc = path .. "(valid)", fn = fn, args = a, n = n, spec = spec, typ = typ,
      label = "valid", cleanup = typ and typ.cleanup })
  end
  local _, nvalid = valid_args()
  local npos = nvalid + (typ and 1 or 0) + (spec.extra or 0)
  for pos = 1, npos do
    for _, v in ipairs(values) do
      local a, n = valid_args()
      if typ then table.insert(a, 1, typ.obj()); n = n + 1 end
      if spec.setup then spec.setup(a) end
      local is_self = typ and pos == 1
      a[pos] = v[2](is_self and typ or nil)
      local apos = typ and pos - 1 or pos -- the position as the docs count it
      local desc = is_self and ("%s(self = %s)"):format(path, v[1])
        or ("%s(#%d = %s)"):format(path, apos, v[1])
      exec({ desc = desc, fn = fn, args = a, n = n, spec = spec, typ = typ, label = v[1],
        secs = secs[pos] or false, cleanup = typ and typ.cleanup,
        meta_self = pos == 1 and path:match("[.:]__%w+$") ~= nil })
    end
  end
  -- option tables: each field with each value
  if spec.opts then
    local o = spec.opts
    for _, field in ipairs(o.fields) do
      for _, v in ipairs(values) do
        local a, n = valid_args()
        if typ then table.insert(a, 1, typ.obj()); n = n + 1 end
        local p = o.pos + (typ and 1 or 0)
        local t = type(a[p]) == "table" and copy(a[p]) or {}
        t[field] = v[2](nil)
        a[p] = t
        if n < p then n = p end
        exec({ desc = ("%s(#%d.%s = %s)"):format(path, o.pos, field, v[1]), fn = fn, args = a,
          n = n, spec = spec, typ = typ, label = v[1],
          secs = o.secs and o.secs[field] or false, cleanup = typ and typ.cleanup })
      end
    end
  end
end

local function fd_count()
  local n = 0
  local p = io.popen("ls /proc/" .. tostring(ctx.pid) .. "/fd")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- After a function's sweep: nothing may stay behind.
local function check_leaks(path, base)
  collectgarbage()
  collectgarbage()
  local deadline = loom.now() + 2
  local fds, timers
  repeat
    loom.sleep(0.01)
    collectgarbage()
    fds, timers = fd_count(), core.stats().timers
  until (fds <= base.fds and timers <= base.timers) or loom.now() > deadline
  if fds > base.fds then
    emit("FIND", ncall, "LEAK", path, "::", ("%d file descriptor(s) left open after the sweep")
      :format(fds - base.fds))
  end
  if timers > base.timers then
    emit("FIND", ncall, "LEAK", path, "::", ("%d timer(s) left armed after the sweep")
      :format(timers - base.timers))
  end
end

local function base_counts()
  collectgarbage()
  collectgarbage()
  loom.sleep(0.01)
  return { fds = fd_count(), timers = core.stats().timers }
end

local function stray_check()
  -- A path argument cut at an embedded NUL would create "a" in the
  -- current directory.
  for _, name in ipairs({ "a", "b" }) do
    local f = io.open(name, "r")
    if f then
      f:close()
      emit("FIND", ncall, "NUL", "a path with an embedded NUL", "::",
        "'" .. name .. "' appeared in the current directory (an \"a\\0b\" path was cut at the NUL)")
      os.remove(name)
      sh("rmdir " .. name .. " 2>/dev/null")
    end
  end
end

local function worker(target, first, progress)
  start_at = first
  out = assert(io.open(progress, "a"))
  do
    local f = assert(io.open("/proc/self/stat"))
    ctx.pid = tonumber(f:read("l"):match("^(%d+)"))
    f:close()
  end
  local function handler(err, where)
    reports[#reports + 1] = text(where) .. ": " .. text(err)
  end
  on_error_restore = function() loom.on_error(handler) end
  loom.on_error(handler)
  setup_ctx()
  local kind, name = target:match("^(%w+):(.*)$")
  if kind == "mod" then
    local targets = module_targets()
    local tname = name:match("^loom%.(.*)$")
    for _, f in ipairs(targets[name] or {}) do
      if SKIP[f.path] then
        emit("NOTE", "skipped " .. f.path .. ": " .. SKIP[f.path])
      else
        local base = base_counts()
        local key = f.path:match("([^.]+)$")
        sweep(f.path, f.fn, valid_for(f.path, tname, key), nil)
        check_leaks(f.path, base)
        stray_check()
      end
    end
  elseif kind == "type" then
    local typ = TYPES[name]
    if not typ then
      emit("FIND", 0, "NOFACTORY", name, "::", "an object type without a factory in this spec")
    else
      typ.name = name
      local current, cleanup
      typ.obj = function()
        current, cleanup = typ.make()
        return current
      end
      typ.cleanup = function()
        if cleanup then cleanup() end
        current, cleanup = nil, nil
      end
      local sample, sample_cleanup = typ.make()
      local methods = methods_of(sample)
      if sample_cleanup then sample_cleanup() end
      if typ.singleton then
        table.sort(methods, function(x, y)
          local cx, cy = x.name == "close", y.name == "close"
          if cx ~= cy then return cy end
          return x.name < y.name
        end)
      end
      for _, m in ipairs(methods) do
        local base = base_counts()
        local path = name .. ":" .. m.name
        local spec = typ.methods[m.name]
        if not spec and m.name:sub(1, 2) == "__" then
          -- a metamethod: self, then two more positions of hostile values
          spec = { args = {}, extra = 2 }
        end
        if spec then
          spec = copy(spec)
          spec.deadline = spec.deadline or typ.deadline
        end
        sweep(path, m.fn, spec, typ)
        check_leaks(path, base)
      end
    end
  end
  -- the fixtures
  if ctx.server then ctx.server:close() end
  if ctx.udp then ctx.udp:close() end
  sh("rm -rf " .. ctx.tmp)
  emit("DONE", ncall)
  out:close()
end

if not IS_SPEC then
  if arg and arg[1] == "worker" then
    worker(arg[2], tonumber(arg[3]) or 1, arg[4])
  elseif arg and arg[1] == "list" then
    local _, order = module_targets()
    for _, n in ipairs(order) do print("mod:" .. n) end
    for _, n in ipairs(all_type_names()) do print("type:" .. n) end
  end
  return
end

------------------------------------------------------------------------
-- The spec: one test per target, each swept by a child process.

local clean = require "spec.support.clean"

local function cwd()
  local p = io.popen("pwd")
  local d = p:read("l")
  p:close()
  return d
end
local function absolute(path)
  return path:sub(1, 1) == "/" and path or (cwd() .. "/" .. path)
end
local SELF = absolute((debug.getinfo(1, "S").source:gsub("^@", "")))
local BIN = absolute(os.getenv("LOOM_BIN") or (arg and arg[-1]) or "build/loom")
local ONLY = os.getenv("LOOM_BADINPUT_ONLY")

local function read_file(p)
  local f = io.open(p, "r")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Sweeps one target; returns the findings (lines), notes and the call count.
local function sweep_target(target)
  local progress = os.tmpname()
  local errfile = os.tmpname()
  local findings, notes = {}, {}
  local first, restarts, calls = 1, 0, 0
  -- The worker runs in a private directory: paths like 0 or "" are valid
  -- file names, and some calls create them.
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  while true do
    local f = io.open(progress, "w"); f:close()
    local cmd = ("cd %s && timeout -k 5 900 %s %s worker '%s' %d %s </dev/null >/dev/null 2>%s")
      :format(dir, BIN, SELF, target, first, progress, errfile)
    local ok, how, status = os.execute(cmd)
    local last, done
    for line in io.lines(progress) do
      local n = line:match("^CALL (%d+) ")
      if n then last = tonumber(n); calls = math.max(calls, last) end
      if line:match("^FIND ") then findings[#findings + 1] = line:sub(6) end
      if line:match("^NOTE ") then notes[#notes + 1] = line:sub(6) end
      if line:match("^DONE ") then done = tonumber(line:match("^DONE (%d+)")) end
    end
    if done then
      calls = math.max(calls, done)
      -- Sanitizer reports that did not stop the worker, or a failed exit
      -- (LeakSanitizer at exit) still count.
      local err = read_file(errfile)
      local san = err:match("[^\n]*ERROR: %w+Sanitizer[^\n]*") or err:match("[^\n]*runtime error:[^\n]*")
      if san or not ok then
        findings[#findings + 1] = ("%d EXIT the worker finished but %s: %s"):format(done,
          ok and "the sanitizer reported" or ("exited with " .. tostring(how) .. " " .. tostring(status)),
          san or err:sub(1, 400))
      end
      break
    end
    -- The worker died (or hung as a whole): the last call started is the culprit.
    local err = read_file(errfile)
    local head = {}
    for l in err:gmatch("[^\n]+") do
      if l:match("ERROR") or l:match("runtime error") or l:match("SUMMARY") or l:match("^%s+#[0-3] ")
        or l:match("panic") or l:match("assert") or l:match("lua") then
        head[#head + 1] = l
      end
      if #head >= 8 then break end
    end
    local lastdesc = "?"
    for line in io.lines(progress) do
      local n, d = line:match("^CALL (%d+) (.*)$")
      if n and tonumber(n) == last then lastdesc = d end
    end
    findings[#findings + 1] = ("%s CRASH %s :: the worker died (%s %s) during this call; %s")
      :format(last or 0, lastdesc, tostring(how), tostring(status),
        #head > 0 and table.concat(head, " | ") or err:sub(1, 400))
    if not last or restarts >= 15 then break end
    restarts = restarts + 1
    first = last + 1
  end
  os.remove(progress)
  os.remove(errfile)
  os.execute("rm -rf " .. dir)
  return findings, notes, calls
end

local function targets()
  local p = io.popen(("%s %s list 2>&1"):format(BIN, SELF))
  local list = {}
  for line in p:lines() do
    if line:match("^%w+:") then list[#list + 1] = line end
  end
  p:close()
  return list
end

describe("the bad-input matrix", function()
  local snap
  setup(function() snap = clean.snapshot() end)
  teardown(function() clean.assert_clean(snap) end)

  local list = targets()
  it("finds the modules and object types", function()
    assert.is_true(#list > 10, "targets: " .. table.concat(list, " "))
  end)

  for _, target in ipairs(list) do
    local tname = target:match("^type:(.*)$")
    if tname and SKIP_TYPES[tname] then
      pending(target .. ": " .. SKIP_TYPES[tname])
    elseif not ONLY or target:find(ONLY, 1, true) then
      it("survives hostile arguments: " .. target, function()
        local findings, notes, calls = sweep_target(target)
        if os.getenv("LOOM_BADINPUT_VERBOSE") then
          io.stderr:write(("%s: %d calls\n"):format(target, calls))
          for _, n in ipairs(notes) do io.stderr:write("  note: ", n, "\n") end
        end
        assert(#findings == 0, ("%s: %d finding(s) in %d calls:\n  %s"):format(target,
          #findings, calls, table.concat(findings, "\n  ")))
      end)
    end
  end
end)
