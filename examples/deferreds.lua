-- One small task in loom's three styles: add up the prices of a basket,
-- asking a slow price service (simulated with timers) for each item.
-- Run: loom examples/deferreds.lua   (or lua5.4 with loom installed)
local loom = require "loom"

-- The price service: a callback-style API that returns a Deferred, as a
-- network client would. Each answer takes a while; unknown items fail.
local PRICES = { apple = 3, bread = 5, cheese = 12 }

local function fetch_price(item)
  local timer
  -- The canceller stops the pending timer, so a cancelled or timed-out
  -- request leaves nothing behind.
  local d = loom.deferred(function() timer:cancel() end)
  timer = loom.call_later(0.01 * #item, function()
    if PRICES[item] then
      d:callback(PRICES[item])
    else
      d:errback("no price for " .. item)
    end
  end)
  return d
end

local function sum(values)
  local total = 0
  for i = 1, values.n do total = total + values[i] end
  return total
end

-- 1. Callbacks: start every request at once, gather them, add up. The
--    result is a Deferred; errors travel down the errback chain.
local function basket_total_callbacks(items)
  local requests = {}
  for i, item in ipairs(items) do requests[i] = fetch_price(item) end
  return loom.gather(requests):add_callback(sum)
end

-- 2. deferred_tasklet: the body is plain sequential code that waits with
--    block_on, yet callers get a Deferred, like the callback version.
local basket_total_tasklet = loom.deferred_tasklet(function(items)
  local total = 0
  for _, item in ipairs(items) do
    total = total + loom.block_on(fetch_price(item))
  end
  return total
end)

-- 3. Blocking code: a function that simply returns the total or raises.
--    blocking_tasklet runs it in a tasklet of its own and waits, so a
--    caller's kill or loom.timeout stops the whole request.
local basket_total_blocking = loom.blocking_tasklet(function(items)
  return loom.block_on(basket_total_callbacks(items))
end)

local basket = { "apple", "bread", "cheese" }
local t0 = loom.now()

-- Callback style: consume the Deferred with callbacks.
local done = loom.event()
basket_total_callbacks(basket):add_callbacks(function(total)
  print(("callbacks:        total %d (%.0f ms, requests in parallel)"):format(total,
    (loom.now() - t0) * 1000))
  done:set()
end, function(failure)
  print("callbacks:        failed: " .. tostring(failure))
  done:set()
end)
done:wait()

-- deferred_tasklet: the same Deferred interface, written sequentially.
t0 = loom.now()
local total = loom.block_on(basket_total_tasklet(basket))
print(("deferred_tasklet: total %d (%.0f ms, one request after another)"):format(total,
  (loom.now() - t0) * 1000))

-- Blocking: an ordinary call.
t0 = loom.now()
print(("blocking:         total %d (%.0f ms)"):format(basket_total_blocking(basket),
  (loom.now() - t0) * 1000))

-- Errors: a failure in any style reaches the caller in that style's way.
local ok, err = pcall(basket_total_blocking, { "apple", "caviar" })
print("blocking, unknown item:  " .. tostring(ok) .. ", " .. tostring(err))

local failure
basket_total_tasklet({ "caviar" }):add_errback(function(f) failure = f end)
loom.sleep(0.1)
print("tasklet, unknown item:   " .. tostring(failure) .. " (failure:check('no price') = "
  .. tostring(failure:check("no price")) .. ")")

-- Timeouts: add_timeout cancels the Deferred, and for a deferred_tasklet
-- that kills the tasklet; loom.timeout interrupts blocking code.
local slow = basket_total_tasklet({ "apple", "bread", "cheese", "watermelon" })
slow:add_timeout(0.05)
ok, err = pcall(loom.block_on, slow)
print("tasklet, add_timeout:    " .. tostring(ok) .. ", " .. tostring(err))

local r, msg = loom.timeout(0.02, basket_total_blocking, basket)
print("blocking, loom.timeout:  " .. tostring(r) .. ", " .. tostring(msg))
