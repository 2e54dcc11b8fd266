-- Specs for loom.dns (SPEC section 6). They work offline: "localhost",
-- numeric addresses, and names under ".invalid" (RFC 6761: never resolve).
-- Every example ends with no live tasklet, no active handle and no extra
-- descriptor.
-- Run: build/loom /usr/bin/busted spec/51-dns_spec.lua
local loom = require "loom"
local lfs = require "lfs"

local dns = loom.dns
local POOL = tonumber(os.getenv("UV_THREADPOOL_SIZE")) or 4

local function fd_count()
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do
    n = n + 1
  end
  return n
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.matches(pattern, tostring(err), 1, true)
end

-- A name lookup failure: the code is one of libuv's EAI_* names.
local function is_eai(a, msg, code)
  assert.is_nil(a)
  assert.is_string(msg)
  assert.matches("^EAI_%u+$", code)
  assert.equal(code, msg:match("^([%u_]+):"))
end

local function has(list, address, family)
  for _, e in ipairs(list) do
    if e.address == address and e.family == family then return true end
  end
  return false
end

-- Occupies every thread of libuv's pool (getaddrinfo runs there too) with
-- an open() of a FIFO; the returned function releases them.
local function block_pool()
  local fifo = assert(loom.fs.mkdtemp("/tmp/loom-dns-spec-XXXXXX")) .. "/fifo"
  assert(os.execute("mkfifo " .. fifo))
  local ts = {}
  for i = 1, POOL do
    ts[i] = loom.spawn(function()
      local f = loom.fs.open(fifo, "r")
      if f then f:close() end
    end)
  end
  loom.sleep(0.05)
  return function()
    -- Keep the writing end open until every reader is through.
    local w = assert(io.open(fifo, "w"))
    for _, t in ipairs(ts) do assert.is_true((t:join(5))) end
    w:close()
    os.execute("rm -rf '" .. fifo:gsub("/fifo$", "") .. "'")
  end
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
  -- The resolver may load NSS modules (and their descriptors) once.
  dns.resolve("localhost")
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

describe("loom.dns", function()
  describe("resolve()", function()
    it("resolves localhost", function()
      local list = assert(dns.resolve("localhost"))
      assert.is_true(#list >= 1)
      assert.is_true(has(list, "127.0.0.1", "inet") or has(list, "::1", "inet6"))
      for _, e in ipairs(list) do
        assert.is_string(e.address)
        assert.is_true(e.family == "inet" or e.family == "inet6")
      end
    end)

    it("lists each address once", function()
      local seen = {}
      for _, e in ipairs(assert(dns.resolve("localhost"))) do
        assert.is_nil(seen[e.address])
        seen[e.address] = true
      end
    end)

    it("passes numeric addresses through", function()
      assert.same({ { address = "127.0.0.1", family = "inet" } }, dns.resolve("127.0.0.1"))
      assert.same({ { address = "::1", family = "inet6" } }, dns.resolve("::1"))
    end)

    it("filters by family", function()
      assert.same({ { address = "::1", family = "inet6" } }, dns.resolve("::1", { family = "inet6" }))
      local list = assert(dns.resolve("localhost", { family = "inet" }))
      for _, e in ipairs(list) do assert.equal("inet", e.family) end
      is_eai(dns.resolve("127.0.0.1", { family = "inet6" }))
    end)

    it("fails for a name that cannot resolve and names it", function()
      local a, msg, code = dns.resolve("no-such-host.invalid")
      is_eai(a, msg, code)
      assert.matches("no-such-host.invalid", msg, 1, true)
    end)

    it("rejects an empty name", function()
      raises("host name must not be empty", dns.resolve, "")
      raises("address must not be empty", dns.reverse, "")
    end)

    it("runs many lookups at once", function()
      local ts = {}
      for i = 1, 20 do
        ts[i] = loom.spawn(function()
          return dns.resolve(i % 2 == 0 and "localhost" or "::1")
        end)
      end
      for _, t in ipairs(ts) do
        local ok, list = t:join(5)
        assert.is_true(ok)
        assert.is_table(list)
      end
    end)

    it("times out with ETIMEDOUT while the pool is busy", function()
      local release = block_pool()
      local t0 = loom.now()
      local a, msg, code = dns.resolve("localhost", { timeout = 0.05 })
      release()
      assert.is_nil(a)
      assert.equal("ETIMEDOUT", code)
      assert.matches("^ETIMEDOUT:", msg)
      assert.is_true(loom.now() - t0 >= 0.05)
      assert.is_table(dns.resolve("localhost", { timeout = 5 }))
    end)

    it("is cancelled when its tasklet is killed or times out", function()
      local release = block_pool()
      local t = loom.spawn(function() return dns.resolve("localhost") end)
      loom.sleep(0.01)
      assert.equal("blocked", t.status)
      t:kill()
      assert.is_false((t:join(1)))
      local r, _, code = loom.timeout(0.02, dns.resolve, "localhost")
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      release()
    end)

    it("killed while running leaves nothing behind", function()
      for _ = 1, 10 do
        local ts = {}
        for i = 1, 8 do
          ts[i] = loom.spawn(function() return dns.resolve("localhost") end)
        end
        loom.yield()
        for _, t in ipairs(ts) do t:kill() end
        for _, t in ipairs(ts) do t:join(5) end
      end
      assert.is_table(dns.resolve("localhost"))
    end)

    it("rejects bad arguments", function()
      raises("host name contains a NUL byte", dns.resolve, "localhost\0.evil")
      raises("bad argument #1", dns.resolve, nil)
      raises("bad argument #1", dns.resolve, {})
      raises("bad argument #2", dns.resolve, "localhost", "inet")
      raises("opts.family must be", dns.resolve, "localhost", { family = "ipx" })
      raises("opts.timeout must be a number >= 0", dns.resolve, "localhost", { timeout = -1 })
      raises("opts.timeout must be a number >= 0", dns.resolve, "localhost", { timeout = 0 / 0 })
      raises("opts.timeout must be a number >= 0", dns.resolve, "localhost", { timeout = "1" .. "s" })
    end)

    it("cannot block in the reactor", function()
      local r
      loom.call_later(0, function() r = table.pack(pcall(dns.resolve, "localhost")) end)
      loom.sleep(0.02)
      assert.is_false(r[1])
      assert.matches("cannot block in the reactor", r[2], 1, true)
    end)
  end)

  describe("the main thread of a plain lua5.4", function()
    it("resolves", function()
      local out = run_lua54([[
        local dns = require("loom").dns
        print(dns.resolve("127.0.0.1")[1].address, select(3, dns.resolve("x.invalid")))
      ]])
      if out then assert.matches("^127%.0%.0%.1\tEAI_%u+\n$", out) end
    end)
  end)

  describe("reverse()", function()
    it("finds the name of 127.0.0.1", function()
      local name = assert(dns.reverse("127.0.0.1"))
      assert.is_string(name)
      assert.is_true(#name > 0)
    end)

    it("fails for an address without a name", function()
      -- 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no name anywhere.
      local a, msg, code = dns.reverse("192.0.2.1")
      is_eai(a, msg, code)
      assert.matches("192.0.2.1", msg, 1, true)
    end)

    it("takes a timeout", function()
      local release = block_pool()
      local a, _, code = dns.reverse("127.0.0.1", { timeout = 0.02 })
      release()
      assert.is_nil(a)
      assert.equal("ETIMEDOUT", code)
    end)

    it("is cancelled when its tasklet is killed", function()
      local release = block_pool()
      local t = loom.spawn(function() return dns.reverse("127.0.0.1") end)
      loom.sleep(0.01)
      t:kill()
      assert.is_false((t:join(1)))
      release()
    end)

    it("rejects names and malformed addresses", function()
      raises("numeric IPv4 or IPv6 address expected", dns.reverse, "localhost")
      raises("numeric IPv4 or IPv6 address expected", dns.reverse, "300.1.1.1")
      raises("address contains a NUL byte", dns.reverse, "127.0.0.1\0")
      raises("bad argument #1", dns.reverse, nil)
      raises("opts.timeout must be a number >= 0", dns.reverse, "127.0.0.1", { timeout = -0.5 })
    end)
  end)
end)
