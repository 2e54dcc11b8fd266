-- bench/soak.lua - load and soak scenarios for loom (issue 7). Not part of
-- the test run; every scenario is bounded in time and count. Loopback only.
--
--   loom bench/soak.lua [scenario ...] [key=value ...]
--
-- scenarios (default: all, with the small defaults below):
--   echo      N concurrent TCP echo connections for T seconds; RSS and fd
--             counts sampled every `every` seconds (server in this process,
--             clients in `procs` child processes so that each stays under
--             its fd limit)             conns=200 seconds=10 procs=2 size=64
--             ramp=s spreads the connects over s seconds
--   cycles    M connect/close cycles, `par` at a time   cycles=20000 par=50
--   timers    call_later timers that must fire exactly once, in order
--                                                       timers=1000000
--   parked    tasklets parked at once on an event, then woken
--                                                       tasklets=100000
-- The issue's full sizes: echo conns=10000 seconds=600, cycles=1000000,
-- timers=1000000, tasklets=100000.
-- Prints the figures; exits 1 if a scenario's own checks fail.
local loom = require "loom"

local opts = { conns = 200, seconds = 10, procs = 2, size = 64, every = 1, cycles = 20000,
  par = 50, timers = 1000000, tasklets = 100000 }
local chosen = {}
local role
for i = 1, #arg do
  local k, v = arg[i]:match("^(%w+)=(.*)$")
  if k then
    opts[k] = tonumber(v) or v
  elseif arg[i] == "--client" then
    role = "client"
  else
    chosen[#chosen + 1] = arg[i]
  end
end

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local function fd_count()
  local list = loom.fs and loom.fs.readdir("/proc/self/fd")
  return type(list) == "table" and #list or -1
end

local function mb(kb) return ("%.1f MB"):format(kb / 1024) end

local failures = 0
local function fail(fmt, ...)
  failures = failures + 1
  print("FAIL: " .. fmt:format(...))
end

------------------------------------------------------------------------ echo

-- A client process: `conns` connections to port, each writing `size` bytes
-- and reading them back until `seconds` pass. Prints "CLIENT ok errors".
local function echo_client()
  local port, conns, seconds, size = opts.port, opts.conns, opts.seconds, opts.size
  local msg = string.rep("e", size - 1) .. "\n"
  local ok, errors, connected = 0, 0, 0
  local kinds = {}
  local deadline = loom.now() + seconds
  local g = loom.group()
  for i = 1, conns do
    g:spawn(function()
      -- ramp=s spreads the connects over s seconds (a burst of thousands
      -- of SYNs overflows the listen backlog of some network stacks)
      if (opts.ramp or 0) > 0 then loom.sleep(opts.ramp * i / conns) end
      local c, err
      for _ = 1, 50 do
        c, err = loom.tcp.connect("127.0.0.1", port, { timeout = 10 })
        if c then break end
        loom.sleep(0.05)
      end
      if not c then
        errors = errors + 1
        io.stderr:write("connect: ", tostring(err), "\n")
        return
      end
      connected = connected + 1
      -- wait for everyone to connect, so that all run at once
      while connected < conns and loom.now() < deadline do loom.sleep(0.05) end
      while loom.now() < deadline do
        local w, werr = c:write(msg)
        local back, rerr = nil, werr
        if w then back, rerr = c:read_exactly(size) end
        if back == msg then
          ok = ok + 1
        else
          errors = errors + 1
          kinds[tostring(rerr)] = (kinds[tostring(rerr)] or 0) + 1
          break
        end
      end
      c:close()
    end)
  end
  g:wait()
  for k, n in pairs(kinds) do io.stderr:write(("client error x%d: %s\n"):format(n, k)) end
  print(("CLIENT %d %d %d"):format(ok, errors, connected))
end

local function echo()
  local conns, seconds, procs = opts.conns, opts.seconds, math.max(1, opts.procs)
  print(("== echo: %d connections, %d s, %d client processes, %d-byte messages")
    :format(conns, seconds, procs, opts.size))
  local live = 0
  local srv = assert(loom.tcp.serve("127.0.0.1", 0, function(c)
    live = live + 1
    while true do
      local line = c:read_line({ keep_newline = true, max = 1 << 20 })
      if not line or not c:write(line) then break end
    end
    live = live - 1
  end, { backlog = 4096 }))
  local _, port = srv:sockname()
  local self = debug.getinfo(1, "S").source:gsub("^@", "")
  local bin = arg[-1] or "loom"
  local children = {}
  local per = conns // procs
  for i = 1, procs do
    local n = (i == procs) and (conns - per * (procs - 1)) or per
    children[i] = assert(loom.process.spawn(bin, { self, "--client", "port=" .. port,
      "conns=" .. n, "seconds=" .. seconds, "size=" .. opts.size, "ramp=" .. (opts.ramp or 0) },
      { stdin = "ignore", stdout = "pipe", stderr = "inherit" }))
  end
  local t0 = loom.now()
  local rss0, fd0 = rss_kb(), fd_count()
  print(("%6s %8s %8s %10s"):format("t(s)", "conns", "fds", "RSS"))
  local samples = {}
  local sampler = loom.spawn(function()
    while true do
      loom.sleep(opts.every)
      local s = { t = loom.now() - t0, live = live, fds = fd_count(), rss = rss_kb() }
      samples[#samples + 1] = s
      print(("%6.1f %8d %8d %10s"):format(s.t, s.live, s.fds, mb(s.rss)))
    end
  end)
  local total_ok, total_err, total_conn = 0, 0, 0
  for _, p in ipairs(children) do
    local out = p.stdout:read_all() or ""
    p:wait()
    local a, b, c = out:match("CLIENT (%d+) (%d+) (%d+)")
    total_ok = total_ok + (tonumber(a) or 0)
    total_err = total_err + (tonumber(b) or 1)
    total_conn = total_conn + (tonumber(c) or 0)
    p:close()
  end
  sampler:kill()
  loom.sleep(0.2)
  local elapsed = loom.now() - t0
  srv:close()
  loom.sleep(0.2)
  collectgarbage()
  collectgarbage()
  loom.sleep(0.1)
  local fd_end = fd_count()
  -- "flat": over the second half of the run, RSS may not grow by more than
  -- 10% (plus 8 MB for allocator noise) while the connections are steady
  local half = samples[math.max(1, #samples // 2)]
  local last = samples[#samples] or half
  local peak_conns, peak_fds = 0, 0
  for _, s in ipairs(samples) do
    peak_conns = math.max(peak_conns, s.live)
    peak_fds = math.max(peak_fds, s.fds)
  end
  print(("echo: %d round trips (%.0f/s), %d errors, %d/%d connected, peak %d server conns")
    :format(total_ok, total_ok / elapsed, total_err, total_conn, conns, peak_conns))
  print(("echo: RSS %s at start, %s at mid-run, %s at the end of the load; fds %d -> peak %d -> %d")
    :format(mb(rss0), mb(half and half.rss or 0), mb(last and last.rss or 0), fd0, peak_fds,
      fd_end))
  if total_err > 0 then fail("echo: %d errors", total_err) end
  if total_conn < conns then fail("echo: only %d of %d connected", total_conn, conns) end
  if half and last and last.rss > half.rss * 1.1 + 8192 then
    fail("echo: RSS grew from %s to %s in the second half", mb(half.rss), mb(last.rss))
  end
  if fd_end > fd0 + 2 then fail("echo: %d fds at the start, %d at the end", fd0, fd_end) end
end

------------------------------------------------------------------------ cycles

local function cycles()
  local total, par = opts.cycles, opts.par
  print(("== cycles: %d connect/close cycles, %d at a time"):format(total, par))
  local accepted = 0
  local srv = assert(loom.tcp.serve("127.0.0.1", 0, function(c)
    accepted = accepted + 1
    c:read() -- until the client closes
  end, { backlog = 4096 }))
  local _, port = srv:sockname()
  local rss0, fd0 = rss_kb(), fd_count()
  local done, errors = 0, {}
  local t0 = loom.now()
  local g = loom.group()
  local next_i = 0
  local progress_at = 0
  for _ = 1, par do
    g:spawn(function()
      while next_i < total do
        next_i = next_i + 1
        local c, _, code = loom.tcp.connect("127.0.0.1", port, { timeout = 10 })
        if c then
          c:close()
          done = done + 1
        else
          errors[code] = (errors[code] or 0) + 1
          loom.sleep(0.01)
        end
        if done >= progress_at then
          progress_at = progress_at + math.max(1, total // 10)
          print(("  %8d cycles  %7.1f s  RSS %s  fds %d"):format(done, loom.now() - t0,
            mb(rss_kb()), fd_count()))
        end
      end
    end)
  end
  g:wait()
  local elapsed = loom.now() - t0
  loom.sleep(0.3)
  srv:close()
  loom.sleep(0.2)
  collectgarbage()
  collectgarbage()
  loom.sleep(0.1)
  local fd_end = fd_count()
  local errs = {}
  for k, v in pairs(errors) do errs[#errs + 1] = k .. "=" .. v end
  print(("cycles: %d in %.1f s (%.0f/s), errors: %s; server accepted %d")
    :format(done, elapsed, done / elapsed, #errs > 0 and table.concat(errs, " ") or "none",
      accepted))
  print(("cycles: RSS %s -> %s; fds %d -> %d"):format(mb(rss0), mb(rss_kb()), fd0, fd_end))
  if fd_end > fd0 + 2 then fail("cycles: fds %d -> %d", fd0, fd_end) end
  if done < total * 0.99 then fail("cycles: only %d of %d completed", done, total) end
end

------------------------------------------------------------------------ timers

local function timers()
  local n = opts.timers
  print(("== timers: %d call_later timers, delays 0..1 s, each must fire once, in order"):format(n))
  local fired = {}
  local order_ok, last = true, 0
  local count = 0
  local rss0 = rss_kb()
  local t0 = loom.now()
  local function fire(i)
    count = count + 1
    if fired[i] then order_ok = false end
    fired[i] = true
    if i < last then order_ok = false end
    last = i
  end
  -- non-decreasing delays: equal delays must keep start order too
  for i = 1, n do
    loom.call_later((i // 1000) / (n // 1000 + 1), fire, i)
  end
  local armed_at = loom.now() - t0
  local rss_armed = rss_kb()
  while count < n and loom.now() - t0 < 60 do loom.sleep(0.05) end
  local elapsed = loom.now() - t0
  loom.sleep(0.1)
  local missing = 0
  for i = 1, n do if not fired[i] then missing = missing + 1 end end
  print(("timers: armed in %.2f s, all fired %.2f s after the start; %d fired, %d missing, order %s")
    :format(armed_at, elapsed, count, missing, order_ok and "kept" or "BROKEN"))
  print(("timers: RSS %s before, %s armed (%.0f bytes/timer), %s after")
    :format(mb(rss0), mb(rss_armed), (rss_armed - rss0) * 1024 / n, mb(rss_kb())))
  if count ~= n or missing > 0 or not order_ok then
    fail("timers: %d fired of %d, %d missing, order %s", count, n, missing, tostring(order_ok))
  end
  if loom.stats().timers ~= 0 then fail("timers: %d still armed", loom.stats().timers) end
end

------------------------------------------------------------------------ parked

local function parked()
  local n = opts.tasklets
  print(("== parked: %d tasklets parked at once on one event, then woken"):format(n))
  collectgarbage()
  local rss0, mem0 = rss_kb(), collectgarbage("count")
  local ev = loom.event()
  local woke = 0
  local t0 = loom.now()
  for _ = 1, n do
    loom.spawn(function()
      ev:wait()
      woke = woke + 1
    end)
  end
  local spawned = loom.now() - t0
  loom.yield() -- let them all start and park
  while loom.stats().blocked < n and loom.now() - t0 < 60 do loom.yield() end
  local parked_at = loom.now() - t0
  local st = loom.stats()
  local rss1, mem1 = rss_kb(), collectgarbage("count")
  local t1 = loom.now()
  ev:set()
  while woke < n and loom.now() - t1 < 60 do loom.sleep(0.01) end
  local woken_in = loom.now() - t1
  loom.sleep(0.05)
  collectgarbage()
  collectgarbage()
  print(("parked: spawned in %.2f s, %d blocked after %.2f s; woken and finished in %.2f s")
    :format(spawned, st.blocked, parked_at, woken_in))
  print(("parked: Lua heap %.1f MB -> %.1f MB (%.0f bytes/tasklet); RSS %s -> %s; after: %s, %d live")
    :format(mem0 / 1024, mem1 / 1024, (mem1 - mem0) * 1024 / n, mb(rss0), mb(rss1),
      mb(rss_kb()), #loom.tasklets() - 1))
  if woke ~= n then fail("parked: %d of %d woke", woke, n) end
  if st.blocked < n then fail("parked: only %d blocked at once", st.blocked) end
end

------------------------------------------------------------------------ main

if role == "client" then
  echo_client()
  return
end

local SCENARIOS = { echo = echo, cycles = cycles, timers = timers, parked = parked }
local ORDER = { "timers", "parked", "cycles", "echo" }
if #chosen == 0 then chosen = ORDER end
local params = {}
for k, v in pairs(opts) do params[#params + 1] = k .. "=" .. tostring(v) end
table.sort(params)
print(("loom %s soak, %s: %s"):format(loom.version, os.date("!%Y-%m-%dT%H:%M:%SZ"),
  table.concat(params, " ")))
for _, name in ipairs(chosen) do
  local fn = SCENARIOS[name]
  if not fn then
    print("unknown scenario " .. name)
    failures = failures + 1
  else
    local t = loom.now()
    fn()
    print(("-- %s took %.1f s, %d live tasklets after it"):format(name, loom.now() - t,
      #loom.tasklets() - 1))
  end
end
if failures > 0 then
  print(("soak: %d check(s) failed"):format(failures))
  os.exit(1)
end
print("soak: all checks passed")
