-- test/fuzz/http.lua - fuzz driver for the HTTP/1.1 request parser of
-- examples/http_server.lua, which returns its pure functions when loaded
-- with dofile():
--   M.parse_request(buf [, pos [, limits]]) -> req, next_pos
--                                           | nil, need, head | false, status, reason
--   M.answer(buf [, pos [, opts]]) -> answers, next_pos, close, need, head
-- Oracles: nothing raises (a route error is reported, not raised);
-- parse_request answers in one of its shapes with positions in range and a
-- status among the example's; answering the input at once gives the same
-- responses (Date headers aside) as answering it cut into pieces the way
-- M.handle receives it, the piece size chosen by the first input byte.
-- While examples/http_server.lua does not exist, the target says so and
-- fuzzes nothing (test/fuzz/run.sh reports it as skipped).
local path = FUZZ_ROOT .. "/examples/http_server.lua"
local f = io.open(path, "r")
if not f then
  io.stderr:write("fuzz http: ", path, " does not exist yet: nothing to fuzz\n")
  HTTP_MISSING = true
  return function() end
end
f:close()

-- The example may start a server when run as a script: it is loaded with an
-- `arg` that does not name it.
local saved_arg = arg
arg = nil
local M = dofile(path)
arg = saved_arg
if type(M) ~= "table" then error("examples/http_server.lua did not return a table") end

local parse, answer = M.parse_request, M.answer
if type(parse) ~= "function" or type(answer) ~= "function" then
  error("examples/http_server.lua exports no parse_request/answer")
end

local routed_errors = 0
loom_reports = loom_reports or {}
require("loom").on_error(function(err, where)
  routed_errors = routed_errors + 1
  loom_reports[#loom_reports + 1] = tostring(where) .. ": " .. tostring(err)
end)

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

local function check_parse(buf)
  local pos = 1
  for _ = 1, 1000 do
    local req, a, b = parse(buf, pos)
    if req == nil then
      check(a == nil or (math.type(a) == "integer" and a > 0), "need = %s", tostring(a))
      check(b == nil or type(b) == "table", "head is a %s", type(b))
      return
    elseif req == false then
      check(M.REASONS[a] ~= nil, "status %s is not one the example knows", tostring(a))
      check(type(b) == "string", "reason is a %s", type(b))
      return
    end
    check(type(req) == "table" and type(req.method) == "string" and type(req.path) == "string"
      and type(req.headers) == "table" and type(req.body) == "string",
      "a request without its fields")
    check(math.type(a) == "integer" and a > pos and a <= #buf + 1,
      "next_pos %s after %d of %d", tostring(a), pos, #buf)
    pos = a
  end
end

local function undated(list)
  local out = {}
  for i, text in ipairs(list) do
    out[i] = (text:gsub("\r\n[Dd]ate: [^\r\n]*", ""))
  end
  return table.concat(out, "\0")
end

local function whole(buf)
  local answers, nxt, close = answer(buf, 1)
  check(type(answers) == "table", "answers is a %s", type(answers))
  check(math.type(nxt) == "integer" and nxt >= 1 and nxt <= #buf + 1, "next_pos %s", tostring(nxt))
  return undated(answers), close and true or false
end

local function pieces(buf, size)
  local out, pending, i = {}, "", 1
  while i <= #buf do
    pending = pending .. buf:sub(i, i + size - 1)
    i = i + size
    local answers, nxt, close = answer(pending, 1)
    for _, a in ipairs(answers) do out[#out + 1] = a end
    check(math.type(nxt) == "integer" and nxt >= 1 and nxt <= #pending + 1,
      "next_pos %s of %d", tostring(nxt), #pending)
    pending = pending:sub(nxt)
    if close then return undated(out), true end
  end
  return undated(out), false
end

return function(data)
  if #data > 1 << 16 then return end
  local size = (data:byte(1) or 0) % 13 + 1
  local buf = data:sub(2)
  local before = routed_errors
  check_parse(buf)
  local a, c1 = whole(buf)
  local b, c2 = pieces(buf, size)
  check(a == b and c1 == c2, "incremental answers differ (piece size %d):\n %q\n %q", size,
    a:sub(1, 300), b:sub(1, 300))
  check(routed_errors == before, "a route raised: %s", tostring(loom_reports[#loom_reports]))
end
