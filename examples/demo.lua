-- demo.lua - loom in one screen: tasklets, channels, select, timeouts.
--
-- A concurrent prime sieve (one tasklet per prime, chained by channels, as
-- in the classic CSP example) feeds a pool of worker tasklets that check
-- each prime against a slow "service" with a deadline, while a ticker
-- tasklet reports progress. Everything is plain sequential code; only the
-- calling tasklet waits. Run: build/loom examples/demo.lua [count]
local loom = require "loom"

local COUNT = tonumber(arg and arg[1]) or 200

-- The sieve: generate 2, 3, 4, ... and filter them through one tasklet per prime.
local function generate(out)
  local i = 2
  while out:send(i) do i = i + 1 end
end

local function filter(input, out, prime)
  for n in input:iter() do
    if n % prime ~= 0 then
      if not out:send(n) then break end
    end
  end
  input:close()
end

local function primes(count, out)
  local ch = loom.channel()
  local stages = { loom.spawn(generate, ch) }
  for _ = 1, count do
    local prime = ch:receive()
    out:send(prime)
    local next_ch = loom.channel()
    stages[#stages + 1] = loom.spawn(filter, ch, next_ch, prime)
    ch = next_ch
  end
  ch:close() -- ends the chain: each stage sees its input close
  out:close()
end

-- A "service" with unpredictable latency; callers give it a deadline.
local function slow_service(n)
  loom.sleep((n % 7) * 0.004)
  return n % 10 == 3
end

local found = loom.channel(16)
local results = loom.channel(16)
local checked, ends_in_3, timed_out = 0, 0, 0

loom.spawn(primes, COUNT, found)

-- Four workers share the stream of primes.
local workers = loom.group()
for w = 1, 4 do
  workers:spawn(function()
    for p in found:iter() do
      local ok, err = loom.timeout(0.02, slow_service, p)
      results:send({ worker = w, prime = p, hit = ok, late = ok == nil and err })
    end
  end)
end
loom.spawn(function()
  workers:wait()
  results:close()
end)

-- A ticker reports while the work goes on; select waits on both.
local tick = loom.channel()
local ticker = loom.spawn(function()
  while true do
    loom.sleep(0.1)
    tick:send(true)
  end
end)

local t0 = loom.now()
while true do
  local i, r = loom.select({ { "receive", results }, { "receive", tick } })
  if i == 1 then
    if r == nil then break end -- results closed: all workers are done
    checked = checked + 1
    if r.hit then ends_in_3 = ends_in_3 + 1 end
    if r.late then timed_out = timed_out + 1 end
  else
    print(("  ... %d primes checked so far"):format(checked))
  end
end
ticker:kill()

print(("%d primes found and checked by 4 workers in %.2f s"):format(checked, loom.now() - t0))
print(("%d of them end in 3; %d service calls timed out"):format(ends_in_3, timed_out))
print(("scheduler: %d switches"):format(loom.stats().switches))
