-- W3 timers (../shared/bench/README.md): N tasklets, task k sleeps d_k ms
-- (Park-Miller sequence from 42, d = x mod 1001) and ends; counts early wakes.
local loom = require "loom"
local N = tonumber(arg and arg[1]) or 100000

local delays, x, maxd = {}, 42, 0
for k = 1, N do
  x = (x * 48271) % 2147483647
  delays[k] = x % 1001
  if delays[k] > maxd then maxd = delays[k] end
end

local early, done = 0, 0
local all = loom.event()
local now, sleep = loom.now, loom.sleep
local function task(d)
  local t = now()
  sleep(d / 1000)
  if (now() - t) * 1000 < d - 1 then early = early + 1 end
  done = done + 1
  if done == N then all:set() end
end

local t0 = now()
for k = 1, N do
  loom.spawn(task, delays[k])
end
all:wait()
local elapsed = now() - t0
assert(done == N)
print(("RESULT elapsed=%.6f count=%d maxdelay_ms=%d early=%d"):format(elapsed, N, maxd, early))
