-- test/fuzz/addr.lua - fuzz driver for loom's address parsing and option
-- tables: loom.tcp.connect / listen / serve, loom.udp.bind / send and
-- loom.dns.resolve with hosts, ports and option tables made from the input.
-- Oracles: every call returns an object or a fail triple
-- `nil, "CODE: msg", "CODE"`, or raises a "bad argument" error; nothing
-- else raises, nothing crashes, every call returns within its deadline;
-- after each input no tasklet is alive and (checked every 256 inputs) no
-- file descriptor has leaked.
--
-- Loopback only. A host that the resolver would send to the network is
-- never used: the input's host bytes are used as they are only when they
-- contain a NUL byte (which loom must refuse before any lookup); otherwise
-- the input picks and varies a loopback form (127.x.y.z, ::1, ::ffff:127..,
-- 0.0.0.0, localhost). Valid ports become a port nobody listens on (connect)
-- or 0 (listen, bind); invalid ones (out of range, fractions, strings,
-- other types) are passed as they are.
local loom = require "loom"

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

local refused_port
do
  local s = assert(loom.tcp.listen("127.0.0.1", 0))
  local _, p = s:sockname()
  s:close()
  refused_port = p
end

local function reader(data)
  local pos = 1
  local r = {}
  function r.byte()
    local b = data:byte(pos)
    pos = pos + 1
    return b or 0
  end
  function r.bytes(n)
    local s = data:sub(pos, pos + n - 1)
    pos = pos + n
    return s
  end
  return r
end

local function loopback_host(r)
  local b = r.byte()
  local k = b % 9
  if k == 0 then return ("127.%d.%d.%d"):format(r.byte(), r.byte(), r.byte() % 255 + 1)
  elseif k == 1 then return "::1"
  elseif k == 2 then return ("::ffff:127.%d.%d.%d"):format(r.byte(), r.byte(), r.byte())
  elseif k == 3 then return "0.0.0.0"
  elseif k == 4 then return "localhost"
  elseif k == 5 then return "LOCALHOST"
  elseif k == 6 then return "0:0:0:0:0:0:0:1"
  elseif k == 7 then return "::1%lo"
  else return "127.0.0.1" end
end

local function host_of(r)
  local b = r.byte()
  if b % 3 == 0 then
    -- raw bytes, with a NUL forced in: loom must refuse it
    local raw = r.bytes(b % 40)
    local cut = b % (#raw + 1)
    return raw:sub(1, cut) .. "\0" .. raw:sub(cut + 1)
  end
  return loopback_host(r)
end

local WEIRD = { 0 / 0, 1 / 0, -1 / 0, 2 ^ 53, math.mininteger, math.maxinteger, -1, 65536,
  0.5, "80", "", "x", {}, true, print }

-- port: valid -> `valid` (the refused port or 0), else a weird value
local function port_of(r, valid)
  local b = r.byte()
  if b % 4 ~= 0 then return valid end
  return WEIRD[r.byte() % #WEIRD + 1]
end

local KEYS = { "timeout", "nodelay", "high_water", "backlog", "family", "exclusive", "reuseaddr",
  "ipv6only", 1, "" }
local VALUES = { 0, 0.001, 1, -1, 0 / 0, 1 / 0, 2 ^ 53, math.mininteger, "", "inet", "inet6",
  "x\0y", true, false, {}, print, 65535, 65536 }

local function opts_of(r)
  local b = r.byte()
  if b % 4 == 0 then return nil end
  if b % 4 == 1 then return WEIRD[r.byte() % #WEIRD + 1] end
  local t = {}
  for _ = 1, r.byte() % 5 do
    t[KEYS[r.byte() % #KEYS + 1]] = VALUES[r.byte() % #VALUES + 1]
  end
  -- an unbounded wait would only slow the fuzzer down
  if t.timeout == nil or t.timeout ~= t.timeout or (type(t.timeout) == "number" and t.timeout > 0.5) then
    t.timeout = 0.2
  end
  return t
end

-- Judges one call's outcome; closes what it returned.
local function judge(what, ok, a, b, c)
  if not ok then
    local msg = type(a) == "string" and a or tostring(a)
    check(msg:find("bad argument", 1, true) or msg:find("cannot block", 1, true),
      "%s raised: %s", what, msg)
    return
  end
  if a == nil then
    check(type(b) == "string" and type(c) == "string" and b:sub(1, #c + 1) == c .. ":",
      "%s returned nil without a fail triple: %s, %s", what, tostring(b), tostring(c))
    return
  end
  if type(a) == "userdata" and a.close then a:close() end
end

local OPS = {
  function(r)
    local h, p, o = host_of(r), port_of(r, refused_port), opts_of(r)
    judge("tcp.connect", pcall(loom.tcp.connect, h, p, o))
  end,
  function(r)
    local h, p, o = host_of(r), port_of(r, 0), opts_of(r)
    judge("tcp.listen", pcall(loom.tcp.listen, h, p, o))
  end,
  function(r)
    local h, p, o = host_of(r), port_of(r, 0), opts_of(r)
    judge("tcp.serve", pcall(loom.tcp.serve, h, p, function() end, o))
  end,
  function(r)
    local h, p = host_of(r), port_of(r, 0)
    judge("udp.bind", pcall(loom.udp.bind, h, p))
  end,
  function(r)
    local u = assert(loom.udp.open())
    local h, p = host_of(r), port_of(r, refused_port)
    judge("udp:send", pcall(u.send, u, r.bytes(r.byte() % 16), h, p))
    u:close()
  end,
  function(r)
    local h, o = host_of(r), opts_of(r)
    judge("dns.resolve", pcall(loom.dns.resolve, h, o))
  end,
}

local count, base_fds = 0, nil
local function fd_count()
  local list = loom.fs and loom.fs.readdir("/proc/self/fd")
  return type(list) == "table" and #list or 0
end

local function program(data)
  return function()
    local r = reader(data)
    for _ = 1, 8 do
      if r.byte() == 0 and #data < 2 then break end
      local op = OPS[r.byte() % #OPS + 1]
      local a, b, c = loom.timeout(2, op, r)
      check(not (a == nil and c == "ETIMEDOUT"), "a call took longer than 2 s: %s", tostring(b))
    end
  end
end

return function(data)
  if #data > 1024 then return end
  local ok, err = pcall(loom.run, program(data))
  check(ok, "loom.run raised: %s", tostring(err))
  check(#loom.tasklets() == 0, "%d tasklet(s) alive:\n%s", #loom.tasklets(), loom.dump())
  count = count + 1
  if count % 256 == 1 then
    local n
    loom.run(function()
      collectgarbage()
      collectgarbage()
      loom.sleep(0.01)
      n = fd_count()
    end)
    base_fds = base_fds or n
    check(n <= base_fds + 4, "file descriptors: %d at the start, %d now", base_fds, n)
  end
end
