-- Specs for the loom command (SPEC section 7): a drop-in for lua5.4 whose
-- script runs as the main tasklet.
-- Run: build/loom /usr/bin/busted spec/15-cli_spec.lua
-- The binary under test is $LOOM_BIN (default build/loom), relative to the
-- repository root the specs run from. Every run goes through a shell with
-- a `timeout`, so a hang fails one example instead of the suite.
local H = require "spec.helper"

local clean = H.clean
local q = H.q
local BIN = H.bin

-- Runs `loom <cmdline>` through the shell; returns code, stdout, stderr.
local function loom_cmd(cmdline, opts)
  return H.sh(q(BIN) .. " " .. cmdline, opts)
end

-- A temporary script file, removed after the example.
local function script(src)
  local path = H.tmpname(".lua")
  H.write_file(path, src)
  H.on_cleanup(function() os.remove(path) end)
  return path
end

-- Starts `loom <args>` in the background, waits until the script has
-- written its ready file, sends `sig` (once, or `times` times with a pause),
-- waits for the exit. Returns code, stdout, stderr, seconds from the signal
-- to the exit.
local function signal_run(src, sig, opts)
  opts = opts or {}
  local ready = H.tmpname(".ready")
  local path = script(("local READY = %q\n"):format(ready) .. src)
  local times = opts.times or 1
  local sh = ([[
%s %s %s &
P=$!
i=0
while [ ! -s %s ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
t0=$(date +%%s%%N)
n=0
while [ $n -lt %d ]; do kill -%s $P; n=$((n+1)); sleep 0.2; done
wait $P
rc=$?
t1=$(date +%%s%%N)
echo "@@rc=$rc elapsed_ns=$((t1-t0))"
]]):format(q(BIN), opts.flags or "", q(path), q(ready), times, sig)
  local _, out, err = H.sh(sh, { timeout = opts.timeout or 20 })
  os.remove(path)
  os.remove(ready)
  local rc, ns = out:match("@@rc=(%d+) elapsed_ns=(%d+)")
  out = out:gsub("@@rc=[^\n]*\n?", "")
  return tonumber(rc), out, err, ns and tonumber(ns) / 1e9 - 0.2 * (times - 1)
end

-- The line a script writes when it is ready for the signal.
local SIGNAL_READY = [[
local function ready() local f = io.open(READY, "w"); f:write("ready"); f:close() end
]]

describe("the loom CLI, as lua5.4 does", function()
  it("-e runs a statement; several run in order", clean(function()
    local code, out, err = loom_cmd([[-e 'io.write("a")' -e 'io.write("b")' -e 'print("c")']])
    assert.are.equal(0, code, err)
    assert.are.equal("abc\n", out)
  end))

  it("-e code runs in the main tasklet: it may block", clean(function()
    local code, out, err = loom_cmd([[-e 'loom.sleep(0.01); print(loom.current().name or loom.current().id)']])
    assert.are.equal(0, code, err)
    assert.is_true(#out > 1, out)
  end))

  it("-l mod requires a module into a global; -l g=mod names the global", clean(function()
    local dir = H.tmpdir({ ["specmod.lua"] = "return { answer = 42 }" })
    local env = { env = "LUA_PATH=" .. q(dir .. "/?.lua;;") }
    local code, out, err = loom_cmd([[-l specmod -e 'print(type(specmod), specmod.answer)']], env)
    assert.are.equal(0, code, err)
    assert.are.equal("table\t42\n", out)
    code, out, err = loom_cmd([[-l g=specmod -e 'print(type(g), g == require "specmod")']], env)
    assert.are.equal(0, code, err)
    assert.are.equal("table\ttrue\n", out)
    code, out, err = loom_cmd([[-lspecmod -e 'print(specmod.answer)']], env)
    assert.are.equal(0, code, err)
    assert.are.equal("42\n", out)
  end))

  it("-v prints the version and exits 0 without a script", clean(function()
    local code, out, err = loom_cmd("-v")
    assert.are.equal(0, code, err)
    assert.is_true(H.has(out, "Lua 5.4"), out)
    code, out = loom_cmd([[-v -e 'print("ran")']])
    assert.are.equal(0, code)
    assert.is_true(H.has(out, "ran"), out)
  end))

  it("- runs the script from stdin, with its arguments", clean(function()
    local stdin = H.tmpname(".in")
    H.on_cleanup(function() os.remove(stdin) end)
    H.write_file(stdin, 'loom.sleep(0.001) print("from stdin", ...)\n')
    local code, out, err = loom_cmd("- a b", { stdin = stdin })
    assert.are.equal(0, code, err)
    assert.are.equal("from stdin\ta\tb\n", out)
    -- no script and stdin not a terminal: stdin is the script
    code, out = loom_cmd("", { stdin = stdin })
    assert.are.equal(0, code)
    assert.are.equal("from stdin\n", out)
  end))

  it("-i reads statements from stdin after the script; they run in the main tasklet",
    clean(function()
      local stdin = H.tmpname(".in")
      H.on_cleanup(function() os.remove(stdin) end)
      H.write_file(stdin, 'x = 20 + 1\nprint("x", x)\nloom.sleep(0.01) print("slept")\nreturn x * 2\n')
      local code, out, err = loom_cmd([[-i -e 'print("before")']], { stdin = stdin })
      assert.are.equal(0, code, err)
      assert.is_true(H.has(out, "before"), out)
      assert.is_true(H.has(out, "x\t21"), out)
      assert.is_true(H.has(out, "42"), out)
      assert.is_true(H.has(out, "slept"), "a blocking call in the REPL failed: " .. err)
      assert.is_false(H.has(err, "cannot block"), err)
    end))

  it("-- stops option handling", clean(function()
    local path = script('print(...)')
    local code, out, err = loom_cmd("-- " .. q(path) .. " -e x")
    assert.are.equal(0, code, err)
    assert.are.equal("-e\tx\n", out)
  end))

  it("builds the arg table exactly like lua5.4 (negative indices, arg[0])", clean(function()
    local path = script([[
local keys = {}
for k in pairs(arg) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
  local v = arg[k]
  if k == keys[1] then v = "<interpreter>" end
  io.write(k, "=", v, ";")
end
print("", select("#", ...), ...)
]])
    local args = "-e 'x=1' -W " .. q(path) .. " one 'two words' ''"
    local code, out, err = loom_cmd(args)
    local code2, expected = H.sh("lua5.4 " .. args)
    assert.are.equal(0, code, err)
    assert.are.equal(0, code2)
    assert.are.equal(expected, out)
    assert.is_true(H.has(out, "0=" .. path), out)
    assert.is_true(H.has(out, "1=one;2=two words;"), out)
  end))

  it("passes the script arguments as ...", clean(function()
    local path = script('print(select("#", ...), ...)')
    local code, out = loom_cmd(q(path) .. " 1 '' x")
    assert.are.equal(0, code)
    assert.are.equal("3\t1\t\tx\n", out)
  end))

  it("runs LUA_INIT first; LUA_INIT_5_4 wins; the @file form loads a file", clean(function()
    local code, out = loom_cmd([[-e 'print("script")']], { env = "LUA_INIT='print(\"init\")'" })
    assert.are.equal(0, code)
    assert.are.equal("init\nscript\n", out)
    code, out = loom_cmd([[-e '']], { env = "LUA_INIT='print(1)' LUA_INIT_5_4='print(54)'" })
    assert.are.equal(0, code)
    assert.are.equal("54\n", out)
    local init = script('print("from file", loom ~= nil)')
    code, out = loom_cmd([[-e '']], { env = "LUA_INIT=@" .. q(init) })
    assert.are.equal(0, code)
    assert.are.equal("from file\ttrue\n", out)
  end))

  it("an error in LUA_INIT is an error of the script", clean(function()
    local code, out, err = loom_cmd([[-e 'print("no")']], { env = "LUA_INIT='error(\"bad init\")'" })
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.is_true(H.has(err, "bad init"), err)
  end))

  it("-E ignores LUA_INIT and LUA_PATH", clean(function()
    local env = "LUA_INIT='print(\"init\")' LUA_PATH='/nowhere/?.lua'"
    local code, out, err = loom_cmd([[-E -e 'print(package.path:find("/nowhere", 1, true) == nil)']],
      { env = env })
    assert.are.equal(0, code, err)
    assert.are.equal("true\n", out)
    code, out = loom_cmd([[-e 'print(package.path)']], { env = env })
    assert.are.equal(0, code)
    assert.are.equal("init\n/nowhere/?.lua\n", out)
  end))

  it("honours LUA_PATH for require", clean(function()
    local dir = H.tmpdir({ ["specmod.lua"] = "return { answer = 42 }" })
    local code, out, err = loom_cmd([[-e 'print(require("specmod").answer)']],
      { env = "LUA_PATH=" .. q(dir .. "/?.lua") })
    assert.are.equal(0, code, err)
    assert.are.equal("42\n", out)
  end))

  it("-W turns warnings on", clean(function()
    local code, _, err = loom_cmd([[-W -e 'warn("spec warning")']])
    local code2, _, expected = H.sh([[lua5.4 -W -e 'warn("spec warning")']])
    assert.are.equal(code2, code)
    assert.are.equal(0, code)
    assert.is_true(H.has(expected, "spec warning"))
    assert.is_true(H.has(err, "spec warning"), "no warning printed: " .. err)
  end))
end)

describe("the script as the main tasklet", function()
  it("may block and spawn; the CLI exits when no work is left", clean(function()
    local code, out, err = H.run_loom([[
loom.spawn(function() loom.sleep(0.03) print("late tasklet") end)
loom.sleep(0.01)
print("main end")
]])
    assert.are.equal(0, code, err)
    assert.are.equal("main end\nlate tasklet\n", out)
  end))

  it("the main tasklet is named 'main'", clean(function()
    local code, out = loom_cmd([[-e 'print(loom.current().name)']])
    assert.are.equal(0, code)
    assert.are.equal("main\n", out)
  end))
end)

describe("the exit status", function()
  it("is 0 after a clean run", clean(function()
    local code = loom_cmd([[-e 'loom.sleep(0.001)']])
    assert.are.equal(0, code)
  end))

  it("is 1 after an error in the script, reported like lua5.4", clean(function()
    local path = script('local x = 1\nerror("script failed")\n')
    local code, _, err = loom_cmd(q(path))
    assert.are.equal(1, code)
    assert.is_true(H.has(err, path .. ":2: script failed"), err)
    assert.is_true(H.has(err, "stack traceback"), err)
  end))

  it("an error in the script ends the program at once; other tasklets are unwound",
    clean(function()
      local code, out, err, secs = H.run_loom([[
loom.spawn(function()
  local _ <close> = setmetatable({}, { __close = function() print("sleeper closed") end })
  loom.sleep(5)
  print("sleeper finished")
end)
loom.sleep(0.01)
error("script failed early")
]])
      assert.are.equal(1, code)
      assert.is_true(H.has(err, "script failed early"), err)
      assert.is_true(secs < 2, ("the CLI waited %.2f s for the other tasklets"):format(secs))
      assert.is_true(H.has(out, "sleeper closed"), out)
      assert.is_false(H.has(out, "sleeper finished"), out)
      assert.is_false(H.has(err, "error in tasklet"), err) -- the kill is not reported
    end))

  it("is 1 after an error object with __tostring, a syntax error, a missing file", clean(function()
    local code, _, err = loom_cmd([[-e 'error(setmetatable({}, {__tostring = function() return "custom" end}))']])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "custom"), err)
    code, _, err = loom_cmd([[-e 'this is not lua']])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "syntax error") or H.has(err, "near"), err)
    code, _, err = loom_cmd("/nonexistent/script.lua")
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "cannot open /nonexistent/script.lua"), err)
  end))

  it("is 1 after an unhandled tasklet error", clean(function()
    local code, out, err = loom_cmd([[-e 'loom.spawn(error, "tasklet failed") print("ok")']])
    assert.are.equal(1, code)
    assert.are.equal("ok\n", out)
    assert.is_true(H.has(err, "tasklet failed"), err)
  end))

  it("is 1 after a deadlock", clean(function()
    local code, _, err = loom_cmd([[-e 'loom.channel():receive()']])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "all tasklets are asleep"), err)
  end))

  it("is 1, with usage, for an unknown option or a missing argument", clean(function()
    local code, _, err = loom_cmd("-x")
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "unrecognized option '-x'"), err)
    assert.is_true(H.has(err, "usage:"), err)
    code, _, err = loom_cmd("-e")
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "'-e' needs argument"), err)
  end))
end)

describe("loom's own options", function()
  it("--help prints the usage with the extra options and exits 0", clean(function()
    local code, out, err = loom_cmd("--help")
    assert.are.equal(0, code, err)
    for _, word in ipairs({ "usage:", "-e", "-l", "-v", "-E", "--slice", "--help", "--version",
                            "SIGINT", "SIGQUIT", "SIGTERM" }) do
      assert.is_true(H.has(out, word), word .. " not in --help")
    end
  end))

  it("--version prints the loom and Lua versions and exits 0", clean(function()
    local code, out = loom_cmd("--version")
    assert.are.equal(0, code)
    assert.matches("^loom %d+%.%d+%.%d+", out)
    assert.is_true(H.has(out, "Lua 5.4"), out)
  end))

  it("--slice S sets the preemption slice; the default is documented", clean(function()
    local code, out, err = loom_cmd([[--slice 0.01 -e 'print(loom.config().slice)']])
    assert.are.equal(0, code, err)
    assert.are.equal(0.01, tonumber(out))
    local _, help = loom_cmd("--help")
    local _, dflt = loom_cmd([[-e 'print(loom.config().slice)']])
    assert.is_true(tonumber(dflt) == 0 and H.has(help, "default 0") or
      H.has(help, "default " .. dflt:gsub("\n", "")), help)
  end))

  it("--slice lets a ticker tick while the script spins", clean(function()
    local code, out, err = H.run_loom([[
local ticks, stop = 0, false
local ticker = loom.spawn(function()
  while not stop do loom.sleep(0.005); ticks = ticks + 1 end
end)
local t0 = loom.now()
while loom.now() - t0 < 0.2 do end
stop = true
ticker:join()
print(ticks)
]], { flags = "--slice 0.01" })
    assert.are.equal(0, code, err)
    assert.is_true(tonumber(out) >= 5, "ticks: " .. out)
  end))

  it("--cpu-limit S kills a runaway tasklet", clean(function()
    local code, out, err = H.run_loom([[
local t = loom.spawn(function() local t0 = loom.now() while loom.now() - t0 < 2 do end end)
print(t:join())
]], { flags = "--cpu-limit 0.05" })
    assert.are.equal(0, code, err)
    assert.is_true(H.has(out, "false\tEKILLED"), out)
  end))

  it("rejects a bad --slice", clean(function()
    local code, _, err = loom_cmd([[--slice -1 -e '']])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "--slice"), err)
    code = loom_cmd([[--slice abc -e '']])
    assert.are.equal(1, code)
  end))
end)

describe("signals", function()
  it("SIGINT interrupts the sleeping main tasklet: exit 1, 'interrupted'", clean(function()
    local rc, _, err, secs = signal_run(SIGNAL_READY .. [[
ready()
loom.sleep(3)
print("not interrupted")
]], "INT")
    assert.are.equal(1, rc, err)
    assert.is_true(H.has(err, "interrupted"), err)
    assert.is_true(secs < 2, ("exit took %.2f s after SIGINT"):format(secs or -1))
  end))

  it("SIGINT interrupts a spinning main tasklet", clean(function()
    local rc, _, err, secs = signal_run(SIGNAL_READY .. [[
ready()
local t0 = loom.now()
while loom.now() - t0 < 3 do end
]], "INT")
    assert.are.equal(1, rc, err)
    assert.is_true(H.has(err, "interrupted"), err)
    assert.is_true(secs < 2)
  end))

  it("SIGINT interrupts a main tasklet waiting on a channel while others sleep", clean(function()
    local rc, _, err, secs = signal_run(SIGNAL_READY .. [[
local ch = loom.channel()
loom.spawn(function() loom.sleep(3); ch:send(1) end)
ready()
ch:receive()
]], "INT")
    assert.are.equal(1, rc, err)
    assert.is_true(H.has(err, "interrupted"), err)
    assert.is_true(secs < 2, ("exit took %.2f s after SIGINT"):format(secs or -1))
  end))

  it("SIGINT after the script ended stops the remaining tasklets: exit 1", clean(function()
    local rc, out, err, secs = signal_run(SIGNAL_READY .. [[
loom.spawn(function()
  local c <close> = setmetatable({}, { __close = function() print("closed") end })
  ready()
  loom.sleep(3)
  print("not interrupted")
end)
]], "INT")
    assert.are.equal(1, rc, err)
    assert.is_true(secs < 2, ("exit took %.2f s after SIGINT"):format(secs or -1))
    assert.is_false(H.has(out, "not interrupted"), out)
    assert.is_true(H.has(out, "closed"), out)
  end))

  it("a second SIGINT exits at once", clean(function()
    local rc, _, err, secs = signal_run(SIGNAL_READY .. [[
ready()
for _ = 1, 3 do
  pcall(loom.sleep, 2) -- swallows an interrupt
end
]], "INT", { times = 2 })
    assert.is_true(rc ~= nil and rc ~= 0, err)
    assert.is_true(secs < 2, ("exit took %.2f s after the second SIGINT"):format(secs or -1))
  end))

  it("SIGQUIT prints loom.dump() to stderr and the script goes on", clean(function()
    local rc, out, err = signal_run(SIGNAL_READY .. [[
local t = loom.spawn(function() loom.sleep(0.6) end)
t.name = "quit-sleeper"
ready()
loom.sleep(0.5)
print("finished")
]], "QUIT")
    assert.are.equal(0, rc, err)
    assert.are.equal("finished\n", out)
    assert.is_true(H.has(err, "tasklet(s)"), "no dump on stderr: " .. err)
    assert.is_true(H.has(err, "'quit-sleeper'"), err)
    assert.is_true(H.has(err, "waits on sleep"), err)
  end))

  it("SIGQUIT prints the dump while a tasklet spins (a stuck program is what it is for)",
    clean(function()
      local rc, _, err = signal_run(SIGNAL_READY .. [[
ready()
local t0 = loom.now()
while loom.now() - t0 < 1.5 do end
io.stderr:write("spin done\n")
]], "QUIT")
      assert.are.equal(0, rc, err)
      local dump_at = err:find("tasklet(s)", 1, true)
      local done_at = err:find("spin done", 1, true)
      assert.is_not_nil(dump_at, "no dump on stderr: " .. err)
      assert.is_true(dump_at < done_at, "the dump waited for the spinning tasklet:\n" .. err)
      assert.is_true(H.has(err, "[running]"), err)
    end))

  it("SIGTERM exits promptly with status 1, closing everything", clean(function()
    local rc, out, err, secs = signal_run(SIGNAL_READY .. [[
loom.spawn(function()
  local _ <close> = setmetatable({}, { __close = function() print("tasklet closed") end })
  loom.sleep(3)
end)
ready()
loom.sleep(3)
]], "TERM")
    assert.are.equal(1, rc, err)
    assert.is_true(secs < 2, ("exit took %.2f s after SIGTERM"):format(secs or -1))
    assert.is_true(H.has(out, "tasklet closed"), out)
    assert.is_false(H.has(err, "error in tasklet"), err)
  end))

  it("SIGTERM ends a spinning program promptly", clean(function()
    local rc, _, err, secs = signal_run(SIGNAL_READY .. [[
ready()
local t0 = loom.now()
while loom.now() - t0 < 3 do end
]], "TERM")
    assert.are.equal(1, rc, err)
    assert.is_true(secs < 2, ("exit took %.2f s after SIGTERM"):format(secs or -1))
  end))
end)
