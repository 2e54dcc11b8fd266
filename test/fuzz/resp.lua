-- test/fuzz/resp.lua - fuzz driver for the RESP parser of
-- examples/redis_server.lua (M.parse, M.process, M.execute). Oracles:
--   * nothing raises;
--   * parse() answers in one of its documented shapes, positions in range;
--   * a parsed command re-encoded as a multibulk parses back the same;
--   * process() over the whole input gives the same replies as over the
--     input cut into pieces (the server's incremental path), the cuts
--     chosen by the first input byte.
local M = dofile(FUZZ_ROOT .. "/examples/redis_server.lua")
if type(M) ~= "table" or type(M.parse) ~= "function" then
  error("examples/redis_server.lua did not return its parser")
end

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

local function encode(argv, n)
  local out = { "*" .. n .. "\r\n" }
  for i = 1, n do
    out[#out + 1] = "$" .. #argv[i] .. "\r\n" .. argv[i] .. "\r\n"
  end
  return table.concat(out)
end

local function check_parse(buf)
  local pos = 1
  for _ = 1, 10000 do
    local a, b, n = M.parse(buf, pos)
    if a == nil then
      check(b == nil or (math.type(b) == "integer" and b > 0), "need %s", tostring(b))
      return
    elseif a == false then
      check(type(b) == "string" and #b > 0, "error message %s", tostring(b))
      return
    end
    check(type(a) == "table", "argv is a %s", type(a))
    check(math.type(b) == "integer" and b > pos and b <= #buf + 1,
      "next_pos %s after pos %d of %d", tostring(b), pos, #buf)
    check(math.type(n) == "integer" and n >= 0, "n = %s", tostring(n))
    for i = 1, n do check(type(a[i]) == "string", "argv[%d] is a %s", i, type(a[i])) end
    if n > 0 then
      local again, nxt, n2 = M.parse(encode(a, n), 1)
      check(again and n2 == n, "round trip of %d words gave %s", n, tostring(n2))
      for i = 1, n do check(again[i] == a[i], "round trip changed word %d", i) end
      check(nxt == #encode(a, n) + 1, "round trip stopped early")
    end
    pos = b
  end
end

-- The replies to buf fed at once, and fed in pieces the way handle() does.
local function replies_whole(buf)
  local db = M.new_db()
  local replies, _, close = M.process(db, buf, 1)
  return (replies or ""), close
end

local function replies_pieces(buf, cut)
  local db = M.new_db()
  local out, pending, i = {}, "", 1
  while i <= #buf do
    local j = math.min(#buf, i + cut(i) - 1)
    pending = pending .. buf:sub(i, j)
    i = j + 1
    local replies, nxt, close = M.process(db, pending, 1)
    if replies then out[#out + 1] = replies end
    pending = pending:sub(nxt)
    if close then return table.concat(out), true end
  end
  return table.concat(out), false
end

return function(data)
  if #data > 1 << 16 then return end
  local mode = data:byte(1) or 0
  local buf = data:sub(2)
  check_parse(buf)
  local whole, c1 = replies_whole(buf)
  local size = mode % 7 + 1
  local pieces, c2 = replies_pieces(buf, function(i) return (i * (mode + 1)) % size + 1 end)
  -- commands with side effects on time (none here) would make this flaky;
  -- every reply depends on the input alone.
  check(whole == pieces and c1 == c2,
    "incremental replies differ (cut size pattern %d):\n whole  %q\n pieces %q", mode,
    whole:sub(1, 200), pieces:sub(1, 200))
end
