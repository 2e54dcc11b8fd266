-- test/fuzz/ops.lua - fuzz driver that turns bytes into programs of
-- scheduler operations: spawn, channels (send/receive/select/close),
-- timers (sleep, call_later, looping_call, loom.timeout), kill/throw/join,
-- events, semaphores, groups, Deferreds (fire, cancel, block_on), GC steps.
-- Each input runs as loom.run(program); every wait is bounded (a few ms)
-- or may deadlock, which loom must detect. Oracles:
--   * loom.run returns, or raises only a Deadlock, a TaskletExit or an
--     error the program raised on purpose ("fuzz: ...");
--   * afterwards no tasklet is alive, no timer is armed, nothing is blocked;
--   * no error reported through loom.on_error comes from inside loom
--     ("attempt to ...", "bad argument": the interpreter never misuses the
--     API on purpose).
local loom = require "loom"

local reports = {}
loom.on_error(function(err, where)
  reports[#reports + 1] = tostring(where) .. ": " .. (type(err) == "string" and err or type(err))
end)

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

local function run_program(data)
  local pos = 1
  local function byte()
    local b = data:byte(pos)
    pos = pos + 1
    return b
  end
  local tasklets, chans, events, sems, defs, groups = {}, {}, {}, {}, {}, {}
  local function pick(list)
    if #list == 0 then return nil end
    return list[(byte() or 0) % #list + 1]
  end
  local function ms() return ((byte() or 0) % 4) / 1000 end
  -- a timeout: nil (none) for 1 in 8, else 0..3 ms
  local function timeout()
    local b = byte() or 0
    if b % 8 == 0 then return nil end
    return (b % 4) / 1000
  end

  local exec -- exec(n, depth): runs up to n operations

  local function sub(depth)
    local n = (byte() or 0) % 8 + 1
    return function() exec(n, depth + 1) end
  end

  local ops = {
    -- 0 spawn a tasklet running the next few operations
    function(depth)
      if depth < 3 then tasklets[#tasklets + 1] = loom.spawn(sub(depth)) end
    end,
    -- 1 a channel
    function() chans[#chans + 1] = loom.channel((byte() or 0) % 4) end,
    -- 2 send
    function()
      local ch = pick(chans)
      if ch then ch:send(pos, timeout()) end
    end,
    -- 3 receive
    function()
      local ch = pick(chans)
      if ch then ch:receive(timeout()) end
    end,
    -- 4 select over up to three channels
    function()
      if #chans == 0 then return end
      local cases = {}
      for i = 1, (byte() or 0) % 3 + 1 do
        local ch = pick(chans)
        if (byte() or 0) % 2 == 0 then cases[i] = { "receive", ch }
        else cases[i] = { "send", ch, i } end
      end
      loom.select(cases, timeout())
    end,
    -- 5 close a channel
    function()
      local ch = pick(chans)
      if ch then ch:close() end
    end,
    -- 6 kill a tasklet (maybe the caller itself)
    function()
      local t = pick(tasklets)
      if t then t:kill("fuzz kill") end
    end,
    -- 7 throw into a tasklet
    function()
      local t = pick(tasklets)
      if t and t:alive() then t:throw("fuzz: thrown") end
    end,
    -- 8 sleep
    function() loom.sleep(ms()) end,
    -- 9 yield
    function() loom.yield() end,
    -- 10 call_later doing one thing in reactor context
    function()
      local what = (byte() or 0) % 4
      local ch, ev, d = pick(chans), pick(events), pick(defs)
      loom.call_later(ms(), function()
        if what == 0 and ch and not ch.closed and #ch < (ch.capacity or 0) then ch:send(1)
        elseif what == 1 and ev then ev:set()
        elseif what == 2 and d and not d.called then d:callback(1)
        else loom.spawn(function() loom.yield() end) end
      end)
    end,
    -- 11 events
    function()
      local b = byte() or 0
      if b % 4 == 0 or #events == 0 then events[#events + 1] = loom.event() return end
      local ev = pick(events)
      if b % 4 == 1 then ev:set() elseif b % 4 == 2 then ev:clear() else ev:wait(timeout()) end
    end,
    -- 12 semaphores
    function()
      local b = byte() or 0
      if b % 3 == 0 or #sems == 0 then sems[#sems + 1] = loom.semaphore(b % 3) return end
      local s = pick(sems)
      if b % 3 == 1 then s:acquire(timeout()) else s:release() end
    end,
    -- 13 join
    function()
      local t = pick(tasklets)
      if t and t ~= loom.current() then t:join(timeout()) end
    end,
    -- 14 Deferreds
    function()
      local b = byte() or 0
      if b % 5 == 0 or #defs == 0 then
        local d = loom.deferred()
        d:add_errback(function() end) -- failures are handled
        defs[#defs + 1] = d
        return
      end
      local d = pick(defs)
      if b % 5 == 1 then if not d.called then d:callback(b) end
      elseif b % 5 == 2 then if not d.called then d:errback("fuzz: errback") end
      elseif b % 5 == 3 then d:cancel()
      else
        local t = timeout() or 0.003
        loom.timeout(t, loom.block_on, d)
      end
    end,
    -- 15 loom.timeout around a few operations
    function(depth)
      if depth < 3 then loom.timeout(ms(), sub(depth)) end
    end,
    -- 16 groups
    function(depth)
      local b = byte() or 0
      if b % 4 == 0 or #groups == 0 then groups[#groups + 1] = loom.group() return end
      local g = pick(groups)
      if b % 4 == 1 and depth < 3 then
        if not g.cancelled then tasklets[#tasklets + 1] = g:spawn(sub(depth)) end
      elseif b % 4 == 2 then g:cancel()
      else g:wait(timeout()) end
    end,
    -- 17 a GC step
    function() collectgarbage("step", (byte() or 0) % 16) end,
    -- 18 introspection
    function()
      local t = pick(tasklets)
      if t then t.name = "t" .. pos; local _ = tostring(t) .. t.status end
      local _, _ = loom.dump(), loom.stats()
    end,
    -- 19 raise on purpose
    function() if (byte() or 0) % 4 == 0 then error("fuzz: raised", 0) end end,
    -- 20 a looping call that stops itself after a few ticks
    function()
      local n = (byte() or 0) % 3 + 1
      local lc
      lc = loom.looping_call(ms(), function()
        n = n - 1
        if n <= 0 then lc:stop() end
      end)
    end,
  }

  exec = function(n, depth)
    for _ = 1, n do
      local b = byte()
      if not b then return end
      ops[b % #ops + 1](depth)
    end
  end

  return function() exec(#data, 0) end
end

local EXPECTED = { "^fuzz: ", "EDEADLK", "EKILLED", "all tasklets are asleep", "fuzz kill" }

local function expected_error(e)
  local s = type(e) == "string" and e or (type(e) == "table" and e.code) or nil
  if loom.Deadlock:is(e) or loom.TaskletExit:is(e) then return true end
  if type(s) ~= "string" then return false end
  for _, p in ipairs(EXPECTED) do
    if s:find(p) then return true end
  end
  return false
end

return function(data)
  if #data > 4096 then return end
  local nrep = #reports
  local ok, err = pcall(loom.run, run_program(data))
  if not ok then
    check(expected_error(err), "loom.run raised %s: %s", type(err), tostring(err))
  end
  -- A deadlock kills the waiting tasklets; nothing else may be left.
  local st = loom.stats()
  check(#loom.tasklets() == 0, "%d tasklet(s) alive after loom.run:\n%s", #loom.tasklets(),
    loom.dump())
  check(st.blocked == 0 and st.ready == 0, "blocked %d, ready %d", st.blocked, st.ready)
  check(st.timers == 0, "%d timer(s) armed after loom.run", st.timers)
  for i = nrep + 1, #reports do
    local r = reports[i]
    check(not r:find("attempt to", 1, true) and not r:find("bad argument", 1, true),
      "loom reported an internal error: %s", r)
  end
  if #reports > 10000 then
    for i = 1, #reports do reports[i] = nil end
  end
end
