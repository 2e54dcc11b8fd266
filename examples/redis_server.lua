-- examples/redis_server.lua - a small Redis-protocol (RESP2) server: enough
-- of Redis for redis-cli and redis-benchmark, one tasklet per connection.
--
--   loom examples/redis_server.lua [port]    (default 6380; 0 picks a free
--                                             port; listens on 127.0.0.1)
--   redis-cli -p 6380 set greeting hello
--   redis-benchmark -p 6380 -t ping,set,get -n 100000 -q [-P 16]
--
-- It prints "redis server listening on 127.0.0.1:PORT" once it listens and
-- runs until killed (SIGINT or SIGTERM end the loom CLI).
--
-- Commands: PING [msg], ECHO msg, SET key value, GET key, DEL key..,
-- EXISTS key.., INCR key, DECR key, DBSIZE, CONFIG GET param.., COMMAND
-- (an empty list), QUIT. Requests come inline ("SET k v\r\n", with Redis's
-- quoting rules) or as multibulk arrays (what clients send); pipelined
-- requests are answered in order, with one write per batch that arrived.
--
-- Loaded with dofile()/require() instead of run as a script, the file
-- returns its functions, so that specs and bench/w6_redis.lua use the same
-- code. The protocol part is pure (no I/O):
--   M.parse(buf [, pos [, argv]])
--       -> argv, next_pos, n        one complete command: argv[1..n]
--       -> nil [, need]             incomplete (need: the bytes from pos the
--                                   command needs in all, once known)
--       -> false, message           protocol error: the server answers
--                                   "-ERR message" and closes the connection
--   M.execute(db, argv [, n]) -> reply [, "close"]     a RESP reply string
--   M.process(db, buf [, pos [, scratch]]) -> replies, next_pos, close, need
--                                   every complete command in buf, answered
-- and the server part:
--   M.new_db() -> db       M.handle(conn, db)
--   M.start(host, port [, opts]) -> server, db | fail
local loom = require "loom"
require "loom.tcp" -- adds loom.tcp.serve (harmless once the facade loads it)

local byte, char, find, sub, upper, lower, gsub =
  string.byte, string.char, string.find, string.sub, string.upper, string.lower, string.gsub
local concat, mtype, tonumber, tostring = table.concat, math.type, tonumber, tostring

local M = {}

-- Limits, as in Redis: an inline request or a "*n" / "$n" line may not grow
-- past MAX_INLINE without its line end; n is bounded for arrays and bulks.
M.MAX_INLINE = 64 * 1024
M.MAX_MULTIBULK = 1024 * 1024
M.MAX_BULK = 512 * 1024 * 1024

---------------------------------------------------------------- parsing

local SPACE = "[ \t\n\v\f\r]"
local ESCAPES = { n = "\n", r = "\r", t = "\t", b = "\b", a = "\a" }

-- Redis's sdssplitargs: words separated by white space; "double quotes"
-- with \n \r \t \b \a \xHH and \<any> escapes; 'single quotes' with \'.
-- A closing quote must be followed by white space or the end of the line.
-- Returns the words, or nil for unbalanced quotes.
local function split_quoted(line)
  local argv, i, n = {}, 1, #line
  while true do
    i = find(line, "[^ \t\n\v\f\r]", i)
    if not i then
      return argv
    end
    local word, quote = {}, nil
    while true do
      local c = sub(line, i, i)
      if quote == '"' then
        if c == "" then
          return nil
        elseif c == "\\" and find(line, "^x%x%x", i + 1) then
          word[#word + 1] = char(tonumber(sub(line, i + 2, i + 3), 16))
          i = i + 3
        elseif c == "\\" and i < n then
          local e = sub(line, i + 1, i + 1)
          word[#word + 1] = ESCAPES[e] or e
          i = i + 1
        elseif c == '"' then
          if i < n and not find(sub(line, i + 1, i + 1), SPACE) then
            return nil
          end
          i = i + 1
          break
        else
          word[#word + 1] = c
        end
      elseif quote == "'" then
        if c == "" then
          return nil
        elseif c == "\\" and sub(line, i + 1, i + 1) == "'" then
          word[#word + 1] = "'"
          i = i + 1
        elseif c == "'" then
          if i < n and not find(sub(line, i + 1, i + 1), SPACE) then
            return nil
          end
          i = i + 1
          break
        else
          word[#word + 1] = c
        end
      elseif c == "" or find(c, SPACE) then
        break
      elseif c == '"' or c == "'" then
        quote = c
      else
        word[#word + 1] = c
      end
      i = i + 1
    end
    argv[#argv + 1] = concat(word)
  end
end

-- An inline command: one line, words split by white space (or quoted).
local function parse_inline(buf, pos, argv)
  -- A single plain word ("PING\r\n"), the common case, in one call.
  local _, e, word = find(buf, "^([^%s\"']+)\r?\n", pos)
  if e then
    argv[1] = word
    return argv, e + 1, 1
  end
  local nl = find(buf, "\n", pos, true)
  if not nl then
    if #buf - pos + 1 > M.MAX_INLINE then
      return false, "Protocol error: too big inline request"
    end
    return nil
  end
  local stop = nl - 1
  if stop >= pos and byte(buf, stop) == 13 then
    stop = stop - 1
  end
  local words = split_quoted(sub(buf, pos, stop))
  if not words then
    return false, "Protocol error: unbalanced quotes in request"
  end
  for i = 1, #words do
    argv[i] = words[i]
  end
  return argv, nl + 1, #words
end

-- Why the "*n" or "$n" line at pos (after its "*" or "$") could not be
-- read: incomplete (nil) or an error (false, message).
local function bad_count(buf, pos, what)
  if not find(buf, "\r\n", pos, true) then
    if #buf - pos + 1 > M.MAX_INLINE then
      return false, "Protocol error: too big " .. what .. " count string"
    end
    return nil
  end
  return false, "Protocol error: invalid " .. what .. " length"
end

-- The decimal number in buf[i, j] (followed by "\r"), or nil unless it is
-- one: an optional "-" and at most 18 digits.
local function decimal(buf, i, j)
  if j < i or j - i > 18 or not find(buf, "^%-?%d+\r", i) then
    return nil
  end
  return tonumber(sub(buf, i, j))
end

-- The "*" or "$" line at p the slow way: its number and the position after
-- its "\r\n", or nil (incomplete) / false, message (error) as parse().
local function count_line(buf, p, what, max)
  local e = find(buf, "\r\n", p + 1, true)
  if not e then
    return bad_count(buf, p + 1, what)
  end
  local n = decimal(buf, p + 1, e - 1)
  if not n or n > max or (what == "bulk" and n < 0) then
    return false, "Protocol error: invalid " .. what .. " length"
  end
  return n, e + 2
end

local function expected(c)
  return false, ("Protocol error: expected '$', got '%s'"):format(char(c))
end

--- M.parse(buf [, pos [, argv]]) -> argv, next_pos, n | nil [, need] |
-- false, message: the command that starts at pos (default 1), see the top
-- of the file. The words go to argv[1..n] (a new table unless one is given
-- for reuse; entries past n are then left as they were). n == 0 means
-- "nothing to do" (an empty inline line, "*0" or "*-1"): skip it.
--
-- Written for speed in plain Lua 5.4, where calling a string function
-- costs as much as dozens of VM instructions and a pattern costs per
-- byte: one byte() call reads the "\r\n" that ended the previous line
-- together with the next "$<len>\r\n" (up to 3 digits), one sub() takes
-- the data. Longer numbers and all errors go the slow way (count_line).
function M.parse(buf, pos, argv)
  pos = pos or 1
  argv = argv or {}
  local c, c1, c2, c3, c4 = byte(buf, pos, pos + 4)
  if c ~= 42 then -- not "*": inline (or nothing yet)
    if not c then
      return nil
    end
    return parse_inline(buf, pos, argv)
  end
  local count, p -- p: the "$" of the next bulk
  if c2 == 13 and c3 == 10 and c1 >= 48 and c1 <= 57 then
    count, p = c1 - 48, pos + 4
  else
    count, p = count_line(buf, pos, "multibulk", M.MAX_MULTIBULK)
    if not count then
      return count, p
    end
  end
  local last = #buf
  for i = 1, count do
    local cr, lf, dollar, d1, d2, d3, d4, d5 = byte(buf, p - 2, p + 5)
    if cr ~= 13 or lf ~= 10 then
      return false, "Protocol error: expected CRLF after bulk data"
    elseif dollar ~= 36 then
      if not dollar then
        return nil
      end
      return expected(dollar)
    end
    local len, s
    if d2 == 13 and d3 == 10 and d1 >= 48 and d1 <= 57 then
      len, s = d1 - 48, p + 4
    elseif d3 == 13 and d4 == 10 and d1 >= 48 and d1 <= 57 and d2 >= 48 and d2 <= 57 then
      len, s = d1 * 10 + d2 - 528, p + 5 -- 528 = 48 * 11
    elseif d4 == 13 and d5 == 10 and d1 >= 48 and d1 <= 57 and d2 >= 48 and d2 <= 57
      and d3 >= 48 and d3 <= 57 then
      len, s = d1 * 100 + d2 * 10 + d3 - 5328, p + 6 -- 5328 = 48 * 111
    else
      len, s = count_line(buf, p, "bulk", M.MAX_BULK)
      if not len then
        return len, s
      end
    end
    p = s + len + 2 -- after the data and its "\r\n"
    if p - 1 > last then
      return nil, p - pos
    end
    argv[i] = sub(buf, s, p - 3)
  end
  if count > 0 then
    local cr, lf = byte(buf, p - 2, p - 1)
    if cr ~= 13 or lf ~= 10 then
      return false, "Protocol error: expected CRLF after bulk data"
    end
    return argv, p, count
  end
  return argv, p, 0
end

---------------------------------------------------------------- replies

local OK, PONG, NIL = "+OK\r\n", "+PONG\r\n", "$-1\r\n"
local NOT_INTEGER = "-ERR value is not an integer or out of range\r\n"
local OVERFLOW = "-ERR increment or decrement would overflow\r\n"

-- "$<len>\r\n" by length: turning the integer into text costs more than
-- the rest of a GET, so short lengths are kept.
local BULK_PREFIX = setmetatable({}, {
  __index = function(t, len)
    local p = "$" .. len .. "\r\n"
    if len < 4096 then
      t[len] = p
    end
    return p
  end,
})

local function bulk(s)
  return BULK_PREFIX[#s] .. s .. "\r\n"
end

local function int(n)
  return ":" .. n .. "\r\n"
end

local function array(items)
  local out = { "*" .. #items .. "\r\n" }
  for i = 1, #items do
    out[i + 1] = bulk(items[i])
  end
  return concat(out)
end

-- Error text may not hold line ends (it is one RESP line).
local function err(msg)
  return "-" .. gsub(msg, "[\r\n]", " ") .. "\r\n"
end

local function wrong_args(name)
  return err(("ERR wrong number of arguments for '%s' command"):format(name))
end

-- Redis's own wording, e.g. "ERR unknown command 'foo', with args
-- beginning with: 'a' 'b' " (each argument shown up to 128 bytes).
local function unknown_command(argv, n)
  local args = {}
  for i = 2, n do
    args[#args + 1] = "'" .. sub(argv[i], 1, 128) .. "' "
  end
  return err(("ERR unknown command '%s', with args beginning with: %s")
    :format(sub(argv[1], 1, 128), concat(args)))
end

-- Strict integers as Redis reads them (string2ll): an optional "-", no
-- leading zeros, no "+", no spaces, within 64 bits.
local function to_int(s)
  if not (find(s, "^%-?[1-9]%d*$") or s == "0") or #s > 20 then
    return nil
  end
  local n = tonumber(s)
  return mtype(n) == "integer" and n or nil -- overflow reads as a float
end

---------------------------------------------------------------- commands

-- The keyspace: plain strings by key. Tasklets run one at a time and a
-- command never waits, so every command is atomic without locks.
function M.new_db()
  return { data = {} }
end

-- What CONFIG GET reports: enough for redis-benchmark, which asks for save
-- and appendonly before it starts.
local CONFIG = { { "save", "" }, { "appendonly", "no" } }

-- A glob as CONFIG GET takes it ("*", "?"; the rest literally), anchored.
local function glob_pattern(glob)
  return "^" .. gsub(lower(glob), "[%^%$%(%)%%%.%[%]%*%+%-%?]", function(c)
    return c == "*" and ".*" or c == "?" and "." or "%" .. c
  end) .. "$"
end

local function incr_by(db, argv, n, delta, name)
  if n ~= 2 then
    return wrong_args(name)
  end
  local key, v = argv[2], 0
  local old = db.data[key]
  if old then
    v = to_int(old)
    if not v then
      return NOT_INTEGER
    end
  end
  if (delta > 0 and v > math.maxinteger - delta) or (delta < 0 and v < math.mininteger - delta) then
    return OVERFLOW
  end
  v = v + delta
  db.data[key] = tostring(v)
  return int(v)
end

-- Each takes (db, argv, #argv) and returns the reply, plus "close" to end
-- the connection after it. Keys are the upper-case command names.
local commands = {
  PING = function(_, argv, n)
    if n == 1 then
      return PONG
    elseif n == 2 then
      return bulk(argv[2])
    end
    return wrong_args("ping")
  end,
  ECHO = function(_, argv, n)
    if n ~= 2 then
      return wrong_args("echo")
    end
    return bulk(argv[2])
  end,
  SET = function(db, argv, n)
    if n == 3 then
      db.data[argv[2]] = argv[3]
      return OK
    elseif n < 3 then
      return wrong_args("set")
    end
    return err("ERR syntax error") -- no EX/PX/NX/XX options here
  end,
  GET = function(db, argv, n)
    if n ~= 2 then
      return wrong_args("get")
    end
    local v = db.data[argv[2]]
    if v then
      return BULK_PREFIX[#v] .. v .. "\r\n"
    end
    return NIL
  end,
  DEL = function(db, argv, n)
    if n < 2 then
      return wrong_args("del")
    end
    local data, count = db.data, 0
    for i = 2, n do
      if data[argv[i]] then
        data[argv[i]] = nil
        count = count + 1
      end
    end
    return int(count)
  end,
  EXISTS = function(db, argv, n)
    if n < 2 then
      return wrong_args("exists")
    end
    local count = 0
    for i = 2, n do
      if db.data[argv[i]] then
        count = count + 1
      end
    end
    return int(count)
  end,
  INCR = function(db, argv, n)
    return incr_by(db, argv, n, 1, "incr")
  end,
  DECR = function(db, argv, n)
    return incr_by(db, argv, n, -1, "decr")
  end,
  DBSIZE = function(db, _, n)
    if n ~= 1 then
      return wrong_args("dbsize")
    end
    local count = 0
    for _ in pairs(db.data) do
      count = count + 1
    end
    return int(count)
  end,
  CONFIG = function(_, argv, n)
    if n < 2 then
      return wrong_args("config")
    end
    local sub_cmd = lower(argv[2])
    if sub_cmd ~= "get" then
      if sub_cmd == "set" or sub_cmd == "resetstat" or sub_cmd == "rewrite" then
        return err("ERR CONFIG " .. upper(sub_cmd) .. " is not supported by this server")
      end
      return err(("ERR unknown subcommand '%s'. Try CONFIG HELP."):format(sub(argv[2], 1, 128)))
    end
    if n < 3 then
      return wrong_args("config|get")
    end
    local items, seen = {}, {}
    for i = 3, n do
      local want = argv[i]
      local exact = not find(want, "[*?]")
      local pat = glob_pattern(want)
      for _, kv in ipairs(CONFIG) do
        if not seen[kv[1]] and find(kv[1], pat) then
          seen[kv[1]] = true
          items[#items + 1] = exact and want or kv[1] -- Redis echoes exact names
          items[#items + 1] = kv[2]
        end
      end
    end
    return array(items)
  end,
  COMMAND = function()
    return "*0\r\n" -- no command table: clients then just go without hints
  end,
  QUIT = function()
    return OK, "close"
  end,
}

--- M.execute(db, argv [, n]) -> reply [, "close"]: runs one parsed command
-- (its words are argv[1..n], n defaults to #argv).
function M.execute(db, argv, n)
  n = n or #argv
  local name = argv[1]
  local cmd = commands[name] or commands[upper(name)]
  if not cmd then
    return unknown_command(argv, n)
  end
  return cmd(db, argv, n)
end

local parse, execute = M.parse, M.execute

--- M.process(db, buf [, pos [, scratch]]) -> replies, next_pos, close, need
-- Runs every complete command in buf from pos (default 1): replies is the
-- concatenation of their answers (nil if none), next_pos the first byte not
-- consumed, close true when the connection must end after the replies (QUIT
-- or a protocol error, whose "-ERR" reply is included), need what parse()
-- said about the incomplete command at next_pos. scratch = { argv = {},
-- out = {} } lends tables to reuse from one call to the next.
function M.process(db, buf, pos, scratch)
  pos = pos or 1
  local argv, out
  if scratch then
    argv, out = scratch.argv, scratch.out
  else
    argv, out = {}, {}
  end
  local nout, last = 0, #buf
  while true do
    if pos > last then -- all consumed: the usual end of a batch
      if nout <= 1 then
        return out[nout], pos, false -- out[0] is nil
      end
      return concat(out, "", 1, nout), pos, false
    end
    local ok, nxt, n = parse(buf, pos, argv)
    if not ok then
      if ok == false then
        nout = nout + 1
        out[nout] = "-ERR " .. nxt .. "\r\n"
        return concat(out, "", 1, nout), pos, true
      end
      if nout <= 1 then
        return out[nout], pos, false, nxt -- out[0] is nil
      end
      return concat(out, "", 1, nout), pos, false, nxt
    end
    pos = nxt
    if n > 0 then
      local reply, close = execute(db, argv, n)
      nout = nout + 1
      out[nout] = reply
      if close then
        return concat(out, "", 1, nout), pos, true
      end
    end
  end
end

---------------------------------------------------------------- serving

local process = M.process

--- M.handle(conn, db): serves one client until it leaves, sends QUIT or
-- breaks the protocol. Everything that arrives in one read is answered with
-- one write, so pipelined commands cost one system call per batch.
function M.handle(conn, db)
  local buf = ""
  local scratch = { argv = {}, out = {} }
  local parts, have, want -- a large command still arriving, kept in pieces
  while true do
    local data = conn:read()
    if not data then
      return -- EOF or a reset; serve() closes the conn
    end
    if parts then
      -- Concatenating every time would copy a large value over and over.
      parts[#parts + 1] = data
      have = have + #data
      if have >= want then
        buf, parts = concat(parts), nil
      end
    elseif buf == "" then
      buf = data
    else
      buf = buf .. data
    end
    if not parts then
      local out, pos, close, need = process(db, buf, 1, scratch)
      if out and not conn:write(out) then
        return
      end
      if close then
        return
      end
      if pos > #buf then
        buf = ""
      elseif pos > 1 then
        buf = sub(buf, pos)
      end
      if need and need > #buf + 65536 then
        parts, have, want = { buf }, #buf, need
      end
    end
  end
end

--- M.start(host, port [, opts]) -> server, db | fail
-- opts: db (a table from M.new_db, to share or inspect the keyspace) and
-- loom.tcp.listen's options. server:close() stops accepting; clients
-- already connected keep their tasklets until they leave.
function M.start(host, port, opts)
  opts = opts or {}
  local db = opts.db or M.new_db()
  local listen_opts = {}
  for k, v in pairs(opts) do
    if k ~= "db" then
      listen_opts[k] = v
    end
  end
  local srv, msg, code = loom.tcp.serve(host, port, function(conn)
    M.handle(conn, db)
  end, listen_opts)
  if not srv then
    return nil, msg, code
  end
  return srv, db
end

if arg and arg[0] and arg[0]:match("redis_server%.lua$") then
  local port = math.tointeger(tonumber(arg[1] or 6380))
  if not port then
    io.stderr:write("usage: loom examples/redis_server.lua [port]\n")
    os.exit(2)
  end
  local srv = assert(M.start("127.0.0.1", port, { backlog = 1024 }))
  -- Flushed at once: a parent reading our stdout through a pipe (a spec
  -- started with port 0) learns the port from this line.
  io.stdout:write(("redis server listening on %s:%d\n"):format(srv:sockname()))
  io.stdout:flush()
  -- The main chunk ends here; the accepting tasklet keeps the program alive.
else
  return M
end
