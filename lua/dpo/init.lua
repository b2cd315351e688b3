-- dpo: the module a user sees (`dpo` is preloaded as a global by dpolua).
--
-- The C core (`dpo.core`) provides tensors, kernels and the generator; this
-- file gathers them into one table. Every tensor method is also a function
-- here, so `dpo.exp(t)` is `t:exp()` and `dpo.mm(a, b)` is `a:mm(b)`.
local core = require "dpo.core"

local dpo = {}

for name, fn in pairs(core) do
   if name ~= "sgemm_direct" then dpo[name] = fn end
end
for name, fn in pairs(core.Tensor) do
   if dpo[name] == nil then dpo[name] = fn end
end

dpo.gradcheck = require("dpo.gradcheck").gradcheck

dpo.nn = require "dpo.nn"
dpo.gpt = require "dpo.gpt"
dpo.model = require "dpo.model"
dpo.lora = require "dpo.lora"

dpo.float32 = "float32"
dpo.int32 = "int32"
dpo.optim = require "dpo.optim"
dpo.jinja = require "dpo.jinja"
dpo.tokenizer = require "dpo.tokenizer"
dpo.data = require "dpo.data"
dpo.filters = require "dpo.filters"

dpo.losses = require "dpo.losses"
dpo.schedules = require "dpo.schedules"
dpo.log = require "dpo.log"
dpo.eval = require "dpo.eval"
dpo.train = require "dpo.train"
dpo.report = require "dpo.report"
dpo.cli = require "dpo.cli"
dpo.dist = require "dpo.dist"

return dpo
