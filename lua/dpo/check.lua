-- dpo.check: what the Lua modules share to check their arguments (internal).
--
--   check.raise(source, msg)   raise msg at the first caller outside the file
--                              `source` (the module's debug.getinfo(1,
--                              "S").source), so the error points at the
--                              user's line, however deep the check was made
--   check.path(prefix, p, what, level)
--                              p must be a string without a zero byte (the
--                              system would cut the path there and act on
--                              another file); else "prefix: what ..." is
--                              raised at `level` as error() counts it for the
--                              caller of check.path
local check = {}

local format = string.format
local HERE = debug.getinfo(1, "S").source

function check.raise(source, msg)
   local level = 2
   while true do
      local info = debug.getinfo(level, "S")
      if not info or (info.source ~= source and info.source ~= HERE) then break end
      level = level + 1
   end
   error(msg, level)
end

function check.path(prefix, p, what, level)
   if type(p) ~= "string" then
      error(format("%s: %s must be a path (a string), got %s", prefix, what, type(p)), level + 1)
   end
   if p:find("\0", 1, true) then
      error(format("%s: %s %q holds a zero byte", prefix, what, p), level + 1)
   end
end

return check
