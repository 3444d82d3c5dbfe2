-- host.json.select: the exact JSON text of a part of a document, where
-- lua-cjson would turn [] into {} and round numbers to 14 digits.
local host = require "host"
local cjson = require "cjson"

local select = host.json.select

describe("host.json.select", function()
  local doc = '[{"id": "a", "splitConfig": {"phantoms": [], "extends": ' ..
    '"base_config.json", "freq": 0.1234567890123456, "nested": {"l": [[], {}]},' ..
    ' "text": "caf\\u00e9 \\"q\\"\\n", "n": 3}}, {"id": "b"}]'

  it("keeps an empty array an array, and an empty object an object", function()
    local text = assert(select(doc, 1, "splitConfig"))
    assert.matches('"phantoms":%[%]', text)
    assert.matches('"l":%[%[%],{}%]', text)
    -- what lua-cjson alone makes of it (the reason for this call)
    assert.matches('"phantoms":{}', cjson.encode(cjson.decode(doc)[1].splitConfig))
  end)

  it("keeps the members in their order and numbers to their last digit",
    function()
      local text = assert(select(doc, 1, "splitConfig"))
      assert.equals(1, text:find('"phantoms"', 1, true) and 1)
      assert.is_true(text:find('"phantoms"', 1, true) < text:find('"n"', 1, true))
      -- the same double, whatever digits print it
      assert.equals(0.1234567890123456,
        tonumber(text:match('"freq":([-%d.eE+]+)')))
      local back = cjson.decode(text)
      assert.equals("café \"q\"\n", back.text)
      assert.equals(3, back.n)
    end)

  it("walks arrays from 1 and objects by member name", function()
    assert.equals('"b"', select(doc, 2, "id"))
    assert.equals("[]", select(doc, 1, "splitConfig", "phantoms"))
    assert.equals("b", cjson.decode((select(doc)))[2].id)
  end)

  it("answers nil, message, ENOENT where nothing is", function()
    for _, path in ipairs { { 3 }, { 0 }, { 1, "nope" }, { 1, 1 }, { "id" } } do
      local v, msg, code = select(doc, table.unpack(path))
      assert.is_nil(v)
      assert.is_string(msg)
      assert.equals("ENOENT", code)
    end
  end)

  it("answers nil, message, EINVAL for text that is not JSON", function()
    for _, bad in ipairs { "", "[1, 2", '{"a": }', "<html>", "[1] 2" } do
      local v, msg, code = select(bad)
      assert.is_nil(v, bad)
      assert.matches("not valid JSON", msg)
      assert.equals("EINVAL", code)
    end
  end)

  it("raises on a key that is neither a string nor an integer", function()
    assert.has_error(function() select(doc, 1.5) end)
    assert.has_error(function() select(doc, {}) end)
    assert.has_error(function() select(nil) end)
  end)
end)

describe("host.json.set_string", function()
  local set = host.json.set_string
  local doc = '{"machineId": "203.0.113.5", "message": {"type": "log_batch", ' ..
    '"logs": [], "x": {}}, "timestamp": 1764979200.123456789}'

  it("replaces the member's value and keeps the rest exactly", function()
    local out = assert(set(doc, "machineId", "10.0.0.7"))
    assert.equals("10.0.0.7", cjson.decode(out).machineId)
    assert.matches('"logs":%[%]', out) -- lua-cjson would print {}
    assert.matches('"x":{}', out)
    assert.equals(1764979200.123456789,
      tonumber(out:match('"timestamp":([-%d.eE+]+)')))
    -- in its place: the members keep their order
    assert.equals(2, out:find('"machineId"', 1, true))
    assert.is_true(out:find('"message"', 1, true) < out:find('"timestamp"', 1,
      true))
  end)

  it("sets text that needs escaping as a JSON string", function()
    local out = assert(set(doc, "machineId", 'a"b\\c\n'))
    assert.equals('a"b\\c\n', cjson.decode(out).machineId)
  end)

  it("answers nil, message, ENOENT when the object has no such member",
    function()
      local v, msg, code = set(doc, "hostname", "x")
      assert.is_nil(v)
      assert.matches("no member hostname", msg)
      assert.equals("ENOENT", code)
    end)

  it("answers nil, message, EINVAL for what is not a JSON object", function()
    for _, bad in ipairs { "", "[1, 2]", '"s"', "{", '{"a": 1} x' } do
      local v, msg, code = set(bad, "a", "x")
      assert.is_nil(v, bad)
      assert.is_string(msg)
      assert.equals("EINVAL", code)
    end
  end)
end)
