-- Every public function of the loom module, and of its submodules and
-- object classes reachable from it, must appear in docs/api.md.
local loom = require "loom"

local function read(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

describe("docs/api.md", function()
  local doc = read("docs/api.md")

  local function documented(name)
    -- a name counts as documented when it appears as `name` or name( in code
    return doc:find(name, 1, true) ~= nil
  end

  it("mentions every public function of the loom module", function()
    local missing = {}
    for k, v in pairs(loom) do
      if type(k) == "string" and not k:match("^_") then
        if type(v) == "function" and not documented("loom." .. k) then
          missing[#missing + 1] = "loom." .. k
        elseif type(v) == "table" then
          for k2, v2 in pairs(v) do
            if type(k2) == "string" and type(v2) == "function" and not k2:match("^_")
              and not k:match("^%u") -- error classes: documented as a group
              and not documented("loom." .. k .. "." .. k2) then
              missing[#missing + 1] = "loom." .. k .. "." .. k2
            end
          end
        end
      end
    end
    table.sort(missing)
    assert.same({}, missing)
  end)
end)
