-- W6 Redis protocol for the bench harness (/work/shared/bench/README.md):
--   loom bench/w6_redis.lua PORT
-- The server is examples/redis_server.lua itself (RESP2 inline and
-- multibulk, PING, SET, GET, CONFIG GET, ...; a tasklet per connection,
-- one write per batch of pipelined commands), loaded from the examples
-- folder next to this one, so that the benchmark measures the example
-- users read. Works from any working directory (the harness runs in its
-- own bench/ with OURS_DIR pointing here). Listens on 127.0.0.1 only and
-- runs until killed (the CLI exits on SIGTERM).
local port = math.tointeger(tonumber(arg and arg[1]))
if not port then
  io.stderr:write("usage: loom w6_redis.lua PORT\n")
  os.exit(2)
end

local here = arg[0]:match("^(.*)/[^/]*$") or "."
local path = here .. "/../examples/redis_server.lua"
local chunk, err = loadfile(path)
if not chunk then
  io.stderr:write(("w6_redis: cannot load the example server (%s)\n"):format(err))
  os.exit(1)
end
local redis = chunk() -- as a module: arg[0] is not redis_server.lua

local srv = assert(redis.start("127.0.0.1", port, { backlog = 1024 }))
io.stdout:write(("w6_redis listening on %s:%d\n"):format(srv:sockname()))
io.stdout:flush()
