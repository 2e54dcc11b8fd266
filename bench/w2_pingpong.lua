-- W2 ping-pong (../shared/bench/README.md): two tasklets, N round trips over
-- two rendezvous channels.
local loom = require "loom"
local N = tonumber(arg and arg[1]) or 1000000

local function pass(n)
  local ping, pong = loom.channel(), loom.channel()
  local sum = 0
  local t0 = loom.now()
  local b = loom.spawn(function()
    for _ = 1, n do
      pong:send(ping:receive())
    end
  end)
  local a = loom.spawn(function()
    for i = 1, n do
      ping:send(i)
      sum = sum + pong:receive()
    end
  end)
  a:join()
  b:join()
  local elapsed = loom.now() - t0
  assert(sum == n * (n + 1) // 2, "wrong sum")
  return elapsed
end

pass(N // 10)
collectgarbage()
local elapsed = pass(N)
print(("RESULT elapsed=%.6f count=%d"):format(elapsed, N))
