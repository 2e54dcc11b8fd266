-- loom.process policy: run() on top of the C core's spawn() (src/process.c).
-- Requiring this module adds `run` to the core's process table, which the
-- facade shares as loom.process.
local core = require "loom.core"

local process = core.process
local spawn, now = process.spawn, core.now

local function argerror(n, msg)
  error(("bad argument #%d to 'run' (%s)"):format(n, msg), 3)
end

-- The helpers run as tasklets, so that both pipes drain at once: a child
-- that fills its stderr while we wait on its stdout cannot deadlock.
local function collect(stream)
  return stream:read_all()
end

local function feed(stream, input)
  -- A child that exits without reading all its input makes this fail
  -- (EPIPE, ECONNRESET); like Python's communicate(), that is no error.
  -- write() returns once the data is queued; shutdown() waits until it is
  -- written and then signals EOF (close() alone would drop the queue).
  if stream:write(input) then
    stream:shutdown()
  end
  stream:close()
end

local function left(deadline)
  if not deadline then
    return nil
  end
  local s = deadline - now()
  return s > 0 and s or 0
end

-- Waits for helper t; returns its first result, or nil, err, code.
local function join(t, deadline)
  local ok, a, b, c = t:join(left(deadline))
  if ok == nil then
    return nil, a, b -- ETIMEDOUT
  end
  if not ok then
    error(a, 0)
  end
  return a, b, c
end

-- Ends what is still running, without waiting: the child is killed (libuv
-- reaps it when it is gone), the pipes close, the helpers are killed.
local function abandon(p, helpers)
  p:kill("SIGKILL")
  p:close()
  for _, t in pairs(helpers) do
    if t:alive() then
      t:kill()
    end
  end
end

local function timed_out(p, helpers, timeout)
  -- SIGKILL cannot be ignored: the wait is short, and no zombie is left.
  p:kill("SIGKILL")
  p:wait()
  p:close()
  for _, t in pairs(helpers) do
    t:join()
  end
  return nil, ("ETIMEDOUT: the command did not finish within %g s"):format(timeout), "ETIMEDOUT"
end

local function supervise(p, helpers, timeout)
  local deadline = timeout and now() + timeout
  local status, signal, code = p:wait(timeout)
  if status == nil then
    if code == "ETIMEDOUT" then
      return timed_out(p, helpers, timeout)
    end
    return nil, signal, code
  end
  -- The child is gone: input nobody reads any more is dropped.
  if p.stdin then
    p.stdin:close()
  end
  if helpers.input then
    helpers.input:join()
  end
  local res = { status = status, signal = signal }
  for _, name in ipairs({ "stdout", "stderr" }) do
    if helpers[name] then
      -- A grandchild may still hold the pipe open: the deadline bounds this.
      local data, err, ecode = join(helpers[name], deadline)
      if data == nil then
        if ecode == "ETIMEDOUT" then
          return timed_out(p, helpers, timeout)
        end
        p:close()
        for _, t in pairs(helpers) do
          t:join()
        end
        return nil, err, ecode
      end
      res[name] = data
    end
  end
  p:close()
  return res
end

--- loom.process.run(cmd, args [, opts]) -> { status=, signal=, stdout=, stderr= }
-- or nil, "CODE: msg", "CODE". opts: those of spawn(), plus input (a string
-- written to the child's stdin, which is then closed) and timeout (seconds:
-- the child is killed and ETIMEDOUT returned). stdout and stderr default to
-- "pipe" (captured), stdin to "ignore" (/dev/null) unless input is given.
function process.run(cmd, args, opts)
  local sopts, input, timeout = {}, nil, nil
  if opts ~= nil then
    if type(opts) ~= "table" then
      argerror(3, "table expected, got " .. type(opts))
    end
    for k, v in pairs(opts) do
      if k == "input" then
        input = v
      elseif k == "timeout" then
        timeout = v
      else
        sopts[k] = v
      end
    end
  end
  if input ~= nil and type(input) ~= "string" then
    argerror(3, "option 'input' must be a string")
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    argerror(3, "option 'timeout' must be a number >= 0")
  end
  if input ~= nil then
    if sopts.stdin ~= nil and sopts.stdin ~= "pipe" then
      argerror(3, "option 'input' needs stdin = \"pipe\"")
    end
    sopts.stdin = "pipe"
  elseif sopts.stdin == nil then
    sopts.stdin = "ignore"
  end
  sopts.stdout = sopts.stdout or "pipe"
  sopts.stderr = sopts.stderr or "pipe"

  local ok, p, err, code = pcall(spawn, cmd, args, sopts)
  if not ok then
    -- spawn's own argument errors, as errors of run
    error((tostring(p):gsub("to '[^']*'", "to 'run'", 1)), 2)
  end
  if not p then
    return nil, err, code
  end
  if input == nil and p.stdin then
    p.stdin:close() -- stdin = "pipe" without input: the child reads EOF
  end
  local helpers = {}
  if p.stdout then
    helpers.stdout = core.spawn(collect, p.stdout)
  end
  if p.stderr then
    helpers.stderr = core.spawn(collect, p.stderr)
  end
  if input ~= nil then
    helpers.input = core.spawn(feed, p.stdin, input)
  end
  local r = table.pack(pcall(supervise, p, helpers, timeout))
  if not r[1] then
    -- Killed, or an error: leave nothing running behind.
    abandon(p, helpers)
    error(r[2], 0)
  end
  return table.unpack(r, 2, r.n)
end

return process
