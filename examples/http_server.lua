-- examples/http_server.lua - a small HTTP/1.1 server, a tasklet per
-- connection, written in blocking style.
--
--   loom examples/http_server.lua [port]    (default 8080; 0 picks a free
--                                            port; listens on 127.0.0.1)
--   curl http://127.0.0.1:8080/                      -> Hello, World!
--   curl http://127.0.0.1:8080/hello/loom            -> Hello, loom!
--   curl --data 'some text' http://127.0.0.1:8080/echo
--   wrk -t1 -c64 -d5s http://127.0.0.1:8080/
--
-- It prints "http server listening on 127.0.0.1:PORT" once it listens and
-- runs until killed (SIGINT or SIGTERM end the loom CLI).
--
-- What it does: request line and header parsing with limits (a head over
-- 64 KiB gets 431, a malformed one 400, a body over 1 MiB 413, a
-- Transfer-Encoding 501, HTTP/2+ 505); Content-Length bodies (with
-- "Expect: 100-continue"); keep-alive (the HTTP/1.1 default, ended by
-- "Connection: close"; HTTP/1.0 only with "Connection: keep-alive");
-- pipelined requests answered in order, one write for all the answers to
-- what arrived together; a client silent for 30 s is dropped.
-- Routes: GET / -> "Hello, World!"; GET /hello/<name> -> "Hello, <name>!";
-- POST /echo -> the request body; HEAD for the GET routes; 405 for another
-- method on a known path; 404 for the rest.
--
-- Loaded with dofile()/require() instead of run as a script, the file
-- returns its functions, so that specs can use them. The protocol part is
-- pure (no I/O):
--   M.parse_request(buf [, pos [, limits]])
--       -> req, next_pos            a complete request, body included
--       -> nil, need, head          incomplete; need: the bytes from pos the
--                                   request needs in all, once its head is
--                                   complete (head is then the request
--                                   without its body)
--       -> false, status, reason    malformed: answer status and close
--   M.route(req) -> status, body, content_type [, extra_headers]
--   M.response(req, status, body, content_type [, extra]) -> text, close
--   M.answer(buf [, pos [, opts]]) -> answers (array), next_pos, close, need, head
-- and the server part:
--   M.handle(conn [, opts]), M.start(host, port [, opts]) -> server | fail
local loom = require "loom"
require "loom.tcp" -- adds loom.tcp.serve (harmless once the facade loads it)

local byte, find, sub, lower, match, gsub, format =
  string.byte, string.find, string.sub, string.lower, string.match, string.gsub, string.format
local concat, tonumber = table.concat, tonumber

local M = {}

M.MAX_HEAD = 64 * 1024 -- request line and headers, with their line ends
M.MAX_BODY = 1024 * 1024
M.TIMEOUT = 30 -- seconds a connection may stay silent

M.REASONS = {
  [100] = "Continue", [200] = "OK", [400] = "Bad Request", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [413] = "Content Too Large",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [505] = "HTTP Version Not Supported",
}

---------------------------------------------------------------- parsing

-- RFC 9110 tokens (method, header names): "tchar"s.
local TOKEN = "^[%w!#%$%%&'%*%+%-%.%^_`|~]+$"

-- Header names and methods seen before, already checked (and lower-cased,
-- for names): clients send the same few again and again, and checking a
-- token with a pattern costs per byte. At most 1,000 short ones are kept,
-- so the caches stay small whatever clients send.
local NAMES, METHODS, known = {}, {}, 0
local function remember(cache, raw, value)
  if known < 1000 and #raw <= 64 then
    cache[raw] = value
    known = known + 1
  end
  return value
end

local function header_name(raw)
  local name = NAMES[raw]
  if name == nil then
    name = remember(NAMES, raw, find(raw, TOKEN) ~= nil and lower(raw))
  end
  return name
end

local function method_ok(raw)
  local ok = METHODS[raw]
  if ok == nil then
    ok = remember(METHODS, raw, find(raw, TOKEN) ~= nil)
  end
  return ok
end

local VERSIONS = { [" HTTP/1.1"] = "1.1", [" HTTP/1.0"] = "1.0" }

-- Does the comma-separated header value list hold the token (any case)?
local function has_token(value, token)
  if not value then
    return false
  end
  for item in (lower(value) .. ","):gmatch("[ \t]*([^,]-)[ \t]*,") do
    if item == token then
      return true
    end
  end
  return false
end

local function bad(status, reason)
  return false, status, reason
end

--- M.parse_request(buf [, pos [, limits]]): the request that starts at pos
-- (default 1). limits: max_head (M.MAX_HEAD), max_body (M.MAX_BODY). See
-- the top of the file for the results. req has method, target, path,
-- query (or nil), version ("1.0" or "1.1"), headers (lower-case name ->
-- value; repeated fields joined with ", "), body, keep_alive and
-- expect_continue.
function M.parse_request(buf, pos, limits)
  pos = pos or 1
  local max_head = limits and limits.max_head or M.MAX_HEAD
  local max_body = limits and limits.max_body or M.MAX_BODY
  -- Empty lines before a request are ignored (RFC 9112, 2.2).
  while byte(buf, pos) == 13 and byte(buf, pos + 1) == 10 do
    pos = pos + 2
  end
  local hend = find(buf, "\r\n\r\n", pos, true)
  if not hend then
    if #buf - pos + 1 > max_head then
      return bad(431, "request head too large")
    end
    return nil
  end
  if hend + 3 - pos + 1 > max_head then
    return bad(431, "request head too large")
  end
  -- The request line: METHOD SP target SP HTTP/x.y
  local lend = find(buf, "\r\n", pos, true) -- <= hend
  local sp = find(buf, " ", pos, true)
  if not sp or sp >= lend - 10 or not method_ok(sub(buf, pos, sp - 1)) then
    return bad(400, "malformed request line")
  end
  local method = sub(buf, pos, sp - 1)
  local version = VERSIONS[sub(buf, lend - 9, lend - 1)]
  if not version then
    local major, minor = match(sub(buf, lend - 9, lend - 1), "^ HTTP/(%d)%.(%d)$")
    if not major or major == "1" then
      return bad(400, "malformed request line")
    end
    return bad(505, "HTTP/" .. major .. "." .. minor .. " is not supported")
  end
  local target = sub(buf, sp + 1, lend - 10)
  if find(target, "[%s%c]") then
    return bad(400, "malformed request line")
  end
  -- Header lines: Name: value, white space around the value dropped.
  local headers = {}
  local p = lend + 2
  while p <= hend do
    local e = find(buf, "\r\n", p, true)
    local colon = find(buf, ":", p, true)
    local name = colon and colon < e and header_name(sub(buf, p, colon - 1))
    if not name then
      return bad(400, "malformed header line")
    end
    -- Greedy, then back to the last non-blank: a lazy ".-" would retry
    -- the rest of the pattern at every byte.
    local value, stop = match(buf, "^[ \t]*([^\r\n]*[^ \t\r\n])[ \t]*()", colon + 1)
    if not value then
      value, stop = "", find(buf, "[^ \t]", colon + 1)
    end
    if stop ~= e or find(value, "\0", 1, true) then
      return bad(400, "malformed header line") -- a bare CR or LF, or NUL
    end
    local old = headers[name]
    if old then
      if name == "content-length" and old ~= value then
        return bad(400, "conflicting Content-Length")
      end
      if name ~= "content-length" then
        headers[name] = old .. ", " .. value
      end
    else
      headers[name] = value
    end
    p = e + 2
  end
  if version ~= "1.0" and not headers.host then
    return bad(400, "Host header missing") -- required since HTTP/1.1
  end
  if headers["transfer-encoding"] then
    return bad(501, "Transfer-Encoding is not supported; send Content-Length")
  end
  local length = 0
  local cl = headers["content-length"]
  if cl then
    if not find(cl, "^%d+$") or #cl > 15 then
      return bad(400, "malformed Content-Length")
    end
    length = tonumber(cl)
    if length > max_body then
      return bad(413, "body larger than " .. max_body .. " bytes")
    end
  end
  local path, query = target, nil
  if byte(target, 1) ~= 47 then -- not "/...": the absolute form (to a proxy)?
    local rest = match(target, "^%a[%w+.-]*://[^/?#]*(.*)$")
    if rest then
      path = rest ~= "" and rest or "/"
    end
  end
  local q = find(path, "?", 1, true)
  if q then
    path, query = sub(path, 1, q - 1), sub(path, q + 1)
  end
  local req = {
    method = method,
    target = target,
    path = path,
    query = query ~= "" and query or nil,
    version = version,
    headers = headers,
    keep_alive = version ~= "1.0",
    expect_continue = false,
  }
  local connection = headers.connection
  if connection then
    if version == "1.0" then
      req.keep_alive = has_token(connection, "keep-alive")
    else
      req.keep_alive = not has_token(connection, "close")
    end
  end
  if headers.expect and version ~= "1.0" then
    req.expect_continue = lower(headers.expect) == "100-continue"
  end
  local body_at = hend + 4
  local stop = body_at + length -- the first byte after the request
  if stop - 1 > #buf then
    return nil, stop - pos, req
  end
  req.body = sub(buf, body_at, stop - 1)
  return req, stop
end

---------------------------------------------------------------- routing

-- "%41" -> "A"; malformed escapes stay as they are.
local function unescape(s)
  return (gsub(s, "%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

--- M.route(req) -> status, body, content_type [, extra_headers]
-- extra_headers: an array of "Name: value" strings.
function M.route(req)
  local method, path = req.method, req.path
  local get = method == "GET" or method == "HEAD"
  if path == "/" then
    if get then
      return 200, "Hello, World!", "text/plain"
    end
    return 405, "Method Not Allowed\n", "text/plain", { "Allow: GET, HEAD" }
  end
  local name = match(path, "^/hello/([^/]+)$")
  if name then
    if get then
      return 200, "Hello, " .. unescape(name) .. "!", "text/plain; charset=utf-8"
    end
    return 405, "Method Not Allowed\n", "text/plain", { "Allow: GET, HEAD" }
  end
  if path == "/echo" then
    if method == "POST" then
      return 200, req.body, req.headers["content-type"] or "application/octet-stream"
    end
    return 405, "Method Not Allowed\n", "text/plain", { "Allow: POST" }
  end
  return 404, "Not Found\n", "text/plain"
end

---------------------------------------------------------------- answers

local STATUS_LINES = {}
local function status_line(status)
  local line = STATUS_LINES[status]
  if not line then
    line = format("HTTP/1.1 %d %s\r\n", status, M.REASONS[status] or "Unknown")
    STATUS_LINES[status] = line
  end
  return line
end

-- The Date header changes once a second; build it once a second.
local date_at, date_line = nil, nil
local function date()
  local now = os.time()
  if now ~= date_at then
    date_at, date_line = now, os.date("!Date: %a, %d %b %Y %H:%M:%S GMT\r\n", now)
  end
  return date_line
end

--- M.response(req, status, body, content_type [, extra]) -> text, close
-- The whole response as one string, and whether the connection ends after
-- it (req.keep_alive false, or no req: the answer to a malformed request).
-- A HEAD request gets the headers only.
function M.response(req, status, body, content_type, extra)
  local close = not (req and req.keep_alive)
  local connection = ""
  if close then
    connection = "Connection: close\r\n"
  elseif req.version == "1.0" then
    connection = "Connection: keep-alive\r\n"
  end
  if extra then
    connection = concat(extra, "\r\n") .. "\r\n" .. connection
  end
  if req and req.method == "HEAD" then
    body, content_type = "", content_type .. "\r\nContent-Length: " .. #body
  else
    content_type = content_type .. "\r\nContent-Length: " .. #body
  end
  -- One concatenation builds the whole text in one buffer.
  return status_line(status) .. date() .. "Content-Type: " .. content_type .. "\r\n" ..
    connection .. "\r\n" .. body, close
end

local parse_request = M.parse_request

--- M.answer(buf [, pos [, opts]]) -> answers, next_pos, close, need, head
-- Answers every complete request in buf from pos (default 1), in order:
-- answers is an array of response strings (maybe empty), next_pos the
-- first byte not consumed, close whether the connection must end after
-- them, need and head what parse_request said about the incomplete
-- request at next_pos. opts: route (default M.route), max_head, max_body.
function M.answer(buf, pos, opts)
  pos = pos or 1
  local route = opts and opts.route or M.route
  local answers = {}
  while true do
    local req, a, b = parse_request(buf, pos, opts)
    if req then
      local ok, status, body, ctype, extra = pcall(route, req)
      if not ok then
        loom.report_error(status, "http route")
        status, body, ctype, extra = 500, "Internal Server Error\n", "text/plain", nil
      end
      local text, close = M.response(req, status, body, ctype, extra)
      answers[#answers + 1] = text
      pos = a
      if close then
        return answers, pos, true
      end
    elseif req == false then
      answers[#answers + 1] = M.response(nil, a, b .. "\n", "text/plain")
      return answers, pos, true
    else
      return answers, pos, false, a, b
    end
  end
end

---------------------------------------------------------------- serving

local answer = M.answer

-- After an answer that ends the connection: stop sending, then read and
-- drop what the client still sends for a moment, so that closing with
-- unread input does not reset the connection (and lose the answer) while
-- the client is still sending a request we refused.
local function lingering_close(conn)
  if not conn:shutdown() then
    return
  end
  conn:settimeout(1)
  local dropped = 0
  while dropped < 256 * 1024 do
    local data = conn:read()
    if not data then
      return
    end
    dropped = dropped + #data
  end
end

--- M.handle(conn [, opts]): serves one client until it leaves, asks to
-- close, breaks the protocol or stays silent for opts.timeout seconds
-- (M.TIMEOUT). opts as for M.answer.
function M.handle(conn, opts)
  conn:settimeout(opts and opts.timeout or M.TIMEOUT)
  local buf = ""
  local continued = false -- "100 Continue" sent for the request at buf's start
  while true do
    local data = conn:read()
    if not data then
      return -- EOF, a reset or the timeout; serve() closes the conn
    end
    buf = buf == "" and data or buf .. data
    local answers, pos, close, _, head = answer(buf, 1, opts)
    if pos > 1 then
      continued = false
    end
    if head and head.expect_continue and not continued then
      answers[#answers + 1] = "HTTP/1.1 100 Continue\r\n\r\n"
      continued = true
    end
    -- One write for all the answers: a pipelining client gets them in
    -- as few packets as possible.
    if answers[1] and not conn:write(answers) then
      return
    end
    if close then
      return lingering_close(conn)
    end
    buf = sub(buf, pos)
  end
end

--- M.start(host, port [, opts]) -> server | fail
-- opts: those of M.handle, plus loom.tcp.listen's (backlog, ...).
function M.start(host, port, opts)
  opts = opts or {}
  local listen_opts = {}
  for _, k in ipairs({ "backlog", "nodelay", "high_water" }) do
    listen_opts[k] = opts[k]
  end
  return loom.tcp.serve(host, port, function(conn)
    M.handle(conn, opts)
  end, listen_opts)
end

if arg and arg[0] and arg[0]:match("http_server%.lua$") then
  local port = math.tointeger(tonumber(arg[1] or 8080))
  if not port then
    io.stderr:write("usage: loom examples/http_server.lua [port]\n")
    os.exit(2)
  end
  local srv = assert(M.start("127.0.0.1", port, { backlog = 1024 }))
  -- Flushed at once: a parent reading our stdout through a pipe (a spec
  -- started with port 0) learns the port from this line.
  io.stdout:write(("http server listening on %s:%d\n"):format(srv:sockname()))
  io.stdout:flush()
else
  return M
end
