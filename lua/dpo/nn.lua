-- dpo.nn: neural-network modules over dpo tensors and autograd.
--
-- Modules in the spirit of torch/nn with PyTorch's math: each is a small class
-- (a metatable) whose forward is built from tensor ops, so autograd computes
-- the backward. This file owns the module protocol; the numbers stay in C.
--
--   local nn = dpo.nn
--   local net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
--   local y = net(x)                  -- same as net:forward(x)
--   for _, p in ipairs(net:named_parameters()) do print(p[1], p[2]:shape()) end
--
-- Every module has:
--   m:forward(x), m(x)        the output for input x
--   m:parameters()            list of parameter tensors (they require grad),
--                             in named_parameters order, each tensor once
--   m:named_parameters()      list of {name, tensor} pairs in a stable order:
--                             a module's own parameters in the order it made
--                             them, then each child's, recursively; names are
--                             dotted paths ("layers.1.weight"). A second
--                             result maps name -> tensor.
--   m:train(), m:eval()       set m.training on m and every child; return m
--   m.training                true (the default) or false
--   m:state_dict()            name -> clone of each parameter (no graph)
--   m:load_state_dict(sd, {strict = true})
--                             copy values in place; returns missing, unexpected
--   m:zero_grad()             zero the .grad of every parameter; returns m
--   m:num_parameters()        total number of elements in the parameters
--   m:children()              list of {name, module} of the direct children
--   m:apply(fn)               fn(module) on every child, then on m; returns m
--   tostring(m)               "dpo.nn.Linear(10 -> 5)"; containers list their
--                             children on indented lines
--
-- A new module: `local M = nn.class("MyModule")`, then in `M:__init(...)`
-- call `self:register_parameter(name, tensor)` and
-- `self:register_module(name, child)`, and write `M:forward(x)`.
local core = require "dpo.core"

local nn = {}

-- ---- helpers ------------------------------------------------------------------

local function shape_str(t)
   local s = t:shape()
   if #s == 0 then return "scalar" end
   return table.concat(s, "x")
end

local function is_posint(v)
   return math.type(v) == "integer" and v > 0
end

local construct -- the constructor all classes share (defined below)

-- An argument error attributed to the code that called the constructor.
local function argerror(cls, what, got)
   local level = 2
   for k = 2, 20 do
      local info = debug.getinfo(k, "f")
      if not info then break end
      if info.func == construct then
         level = k + 1
         break
      end
   end
   error(("%s: %s (got %s)"):format(cls, what, tostring(got)), level)
end

local function check_posint(cls, name, v)
   if not is_posint(v) then
      argerror(cls, name .. " must be a positive integer", v)
   end
end

-- The options table of a constructor: nil or a table whose keys are among
-- `known` (a misspelt option is an error, not a default).
local function check_opts(cls, opts, known)
   if opts ~= nil and type(opts) ~= "table" then
      argerror(cls, "options must be a table", type(opts))
   end
   for k in pairs(opts or {}) do
      if not known[k] then
         local names = {}
         for n in pairs(known) do names[#names + 1] = n end
         table.sort(names)
         argerror(cls, ("unknown option '%s' (options: %s)"):format(tostring(k),
            table.concat(names, ", ")), tostring(k))
      end
   end
   return opts or {}
end

local function check_bool(cls, name, v)
   if v ~= nil and type(v) ~= "boolean" then
      argerror(cls, name .. " must be a boolean", v)
   end
end

local function check_seed(cls, name, v)
   if v ~= nil and math.type(v) ~= "integer" then
      argerror(cls, name .. " must be an integer", v)
   end
end

local function check_tensor(self, x)
   local mt = getmetatable(self)
   if type(self) ~= "table" or type(mt) ~= "table" or type(mt.__name) ~= "string" then
      error(("dpo.nn: forward must be called on a module, as m:forward(x) or m(x) (got %s)")
         :format(type(self)), 3)
   end
   if not core.is_tensor(x) then
      error(("%s: input must be a tensor (got %s)"):format(tostring(self), type(x)), 3)
   end
end

-- Run fn with the generator in `state`; returns fn's result and the state
-- after it, and puts the global generator back as it was.
local function with_rng(state, fn)
   local saved = core.rng_state()
   core.set_rng_state(state)
   local ok, res = pcall(fn)
   local after = core.rng_state()
   core.set_rng_state(saved)
   if not ok then error(res, 0) end
   return res, after
end

local function seed_state(seed)
   local saved = core.rng_state()
   core.manual_seed(seed)
   local state = core.rng_state()
   core.set_rng_state(saved)
   return state
end

-- Uniform in [-bound, bound), a leaf that requires grad.
local function uniform(bound, ...)
   return (core.rand(...) * (2 * bound) - bound):requires_grad()
end

-- ---- Module: the base class ---------------------------------------------------

local Module = {}
Module.__index = Module
Module.__name = "dpo.nn.Module"
nn.Module = Module

function construct(cls, ...)
   local self = setmetatable({}, cls)
   self.training = true
   self._params = {}      -- ordered parameter names; tensors in self[name]
   self._children = {}    -- ordered child names
   self._modules = {}     -- name -> child module
   self:__init(...)
   return self
end

--[[
nn.class(name [, parent]): a new module class.
ARGS    name    the type name, e.g. "MyModule" (shown as dpo.nn.MyModule)
        parent  the class to inherit from (default nn.Module)
RETURNS the class; calling it, `Cls(...)`, makes an instance through
        Cls:__init(...)
]]
function nn.class(name, parent)
   if type(name) ~= "string" or name:find(".", 1, true) then
      error(("dpo.nn.class: name must be a string without dots (got %s)"):format(tostring(name)), 2)
   end
   parent = parent or Module
   if type(parent) ~= "table" or type(parent.__init) ~= "function" or type(parent.forward) ~= "function" then
      error(("dpo.nn.class: parent must be a module class such as dpo.nn.Module (got %s)")
         :format(type(parent)), 2)
   end
   local cls = {}
   for k, v in pairs(parent) do
      if type(k) == "string" and k:sub(1, 2) == "__" then cls[k] = v end
   end
   cls.__index = cls
   cls.__name = "dpo.nn." .. name
   return setmetatable(cls, { __index = parent, __call = construct })
end

function Module:__init() end

-- __call and __tostring are copied into every class by nn.class.
function Module:__call(...)
   return self:forward(...)
end

function Module:__tostring()
   local head = self:__repr()
   if #self._children == 0 then return head end
   local lines = { head .. " {" }
   for _, name in ipairs(self._children) do
      local child = tostring(self._modules[name]):gsub("\n", "\n  ")
      lines[#lines + 1] = ("  (%s): %s"):format(name, child)
   end
   lines[#lines + 1] = "}"
   return table.concat(lines, "\n")
end

-- The one-line description of the module itself (without children).
function Module:__repr()
   return getmetatable(self).__name
end

function Module:forward()
   error(getmetatable(self).__name .. ": forward is not implemented", 2)
end

--[[
m:register_parameter(name, tensor): make tensor a parameter of m, stored as
m[name]; it is set to require grad.
ARGS    name    a string without dots; tensor a float32 leaf tensor
RETURNS the tensor
]]
function Module:register_parameter(name, t)
   if type(name) ~= "string" or name:find(".", 1, true) then
      error(("%s:register_parameter: name must be a string without dots (got %s)")
         :format(getmetatable(self).__name, tostring(name)), 2)
   end
   if not core.is_tensor(t) or t:dtype() ~= "float32" or not t:is_leaf() then
      error(("%s:register_parameter: '%s' must be a float32 leaf tensor (got %s)")
         :format(getmetatable(self).__name, name,
                 core.is_tensor(t) and (t:dtype() .. (t:is_leaf() and "" or ", not a leaf"))
                 or type(t)), 2)
   end
   if rawget(self, name) == nil then self._params[#self._params + 1] = name end
   self[name] = t:requires_grad()
   return t
end

--[[
m:register_module(name, child): make child a submodule of m. Identifier-like
names are also stored as m[name].
ARGS    name    a string without dots (or an integer, as Sequential uses)
        child   a module
RETURNS child
]]
function Module:register_module(name, child)
   local who = getmetatable(self).__name .. ":register_module"
   if math.type(name) == "integer" then name = tostring(name) end
   if type(name) ~= "string" or name:find(".", 1, true) then
      error(("%s: name must be a string without dots or an integer (got %s)")
         :format(who, tostring(name)), 2)
   end
   if type(child) ~= "table" or type(child.forward) ~= "function" or child._params == nil then
      error(("%s: '%s' must be a module (got %s)"):format(who, name, type(child)), 2)
   end
   if self._modules[name] == nil then self._children[#self._children + 1] = name end
   self._modules[name] = child
   if name:match("^[%a_][%w_]*$") then self[name] = child end
   return child
end

--[[
m:children() -> list of {name, module} of the direct children, in order.
]]
function Module:children()
   local out = {}
   for _, name in ipairs(self._children) do
      out[#out + 1] = { name, self._modules[name] }
   end
   return out
end

--[[
m:apply(fn): call fn(module) on every descendant (children first), then m.
RETURNS m
]]
function Module:apply(fn)
   if type(fn) ~= "function" then
      error(("%s:apply: expected a function (got %s)"):format(getmetatable(self).__name, type(fn)), 2)
   end
   for _, name in ipairs(self._children) do
      self._modules[name]:apply(fn)
   end
   fn(self)
   return self
end

--[[
m:named_parameters([prefix]) -> list, map
RETURNS list  { {name, tensor}, ... }: own parameters first (in the order they
              were registered), then each child's, depth first; names dotted
        map   name -> tensor
A tensor shared by two modules is listed once, under its first name.
]]
function Module:named_parameters(prefix)
   if prefix ~= nil and type(prefix) ~= "string" then
      error(("%s:named_parameters: prefix must be a string (got %s)")
         :format(getmetatable(self).__name, type(prefix)), 2)
   end
   local list, map, seen = {}, {}, {}
   local function walk(m, pre)
      for _, name in ipairs(m._params) do
         local t = m[name]
         if not seen[t] then
            seen[t] = true
            list[#list + 1] = { pre .. name, t }
            map[pre .. name] = t
         end
      end
      for _, name in ipairs(m._children) do
         walk(m._modules[name], pre .. name .. ".")
      end
   end
   walk(self, prefix and (prefix .. ".") or "")
   return list, map
end

--[[
m:parameters() -> list of tensors, in named_parameters order
]]
function Module:parameters()
   local out = {}
   for i, p in ipairs(self:named_parameters()) do out[i] = p[2] end
   return out
end

--[[
m:num_parameters() -> the total number of elements in m's parameters
]]
function Module:num_parameters()
   local n = 0
   for _, p in ipairs(self:parameters()) do n = n + p:numel() end
   return n
end

--[[
m:train([mode=true]) and m:eval(): set .training on m and all its children.
RETURNS m
]]
function Module:train(mode)
   if mode == nil then mode = true end
   return self:apply(function(m) m.training = mode and true or false end)
end

function Module:eval()
   return self:train(false)
end

--[[
m:zero_grad(): zero the gradient of every parameter (those that have one).
RETURNS m
]]
function Module:zero_grad()
   for _, p in ipairs(self:parameters()) do p:zero_grad() end
   return self
end

--[[
m:state_dict() -> table name -> tensor, each a clone outside any graph
]]
function Module:state_dict()
   local sd = {}
   core.no_grad(function()
      for _, p in ipairs(self:named_parameters()) do sd[p[1]] = p[2]:detach():clone() end
   end)
   return sd
end

--[[
m:load_state_dict(sd [, opts]): copy the tensors of sd into m's parameters,
in place (the parameter tensors stay the same objects, so an optimizer that
holds them keeps working).
ARGS    sd      table name -> tensor, as state_dict() returns
        opts    { strict = true }  when strict, a key of m missing from sd, or
                                   a key of sd that m lacks, is an error
RETURNS missing, unexpected: lists of keys (empty when strict)
A shape mismatch is always an error naming the key and both shapes.
]]
function Module:load_state_dict(sd, opts)
   local who = getmetatable(self).__name .. ":load_state_dict"
   if type(sd) ~= "table" then
      error(("%s: state_dict must be a table (got %s)"):format(who, type(sd)), 2)
   end
   if opts ~= nil and type(opts) ~= "table" then
      error(("%s: options must be a table (got %s)"):format(who, type(opts)), 2)
   end
   opts = opts or {}
   local strict = opts.strict ~= false
   local list, map = self:named_parameters()
   local missing, unexpected = {}, {}
   for _, p in ipairs(list) do
      if sd[p[1]] == nil then missing[#missing + 1] = p[1] end
   end
   for k in pairs(sd) do
      if map[k] == nil then unexpected[#unexpected + 1] = tostring(k) end
   end
   table.sort(unexpected)
   if strict and #missing > 0 then
      error(("%s: missing key%s %s"):format(who, #missing > 1 and "s" or "",
         "'" .. table.concat(missing, "', '") .. "'"), 2)
   end
   if strict and #unexpected > 0 then
      error(("%s: unexpected key%s %s"):format(who, #unexpected > 1 and "s" or "",
         "'" .. table.concat(unexpected, "', '") .. "'"), 2)
   end
   for _, p in ipairs(list) do
      local name, dst, src = p[1], p[2], sd[p[1]]
      if src ~= nil then
         if not core.is_tensor(src) then
            error(("%s: value of '%s' is not a tensor (got %s)"):format(who, name, type(src)), 2)
         end
         if shape_str(src) ~= shape_str(dst) then
            error(("%s: size mismatch for '%s': the module has %s, the state_dict has %s")
               :format(who, name, shape_str(dst), shape_str(src)), 2)
         end
      end
   end
   core.no_grad(function()
      for _, p in ipairs(list) do
         local src = sd[p[1]]
         if src ~= nil then p[2]:copy(src) end
      end
   end)
   return missing, unexpected
end

-- ---- Linear -------------------------------------------------------------------

--[[
nn.Linear(in_features, out_features [, opts]): y = x W^T + b
ARGS    in_features, out_features  positive integers
        opts  { bias = true }
RETURNS a module with weight [out, in] and bias [out], both uniform in
        [-1/sqrt(in), 1/sqrt(in)] (PyTorch's default); forward takes x of
        shape [..., in] and returns [..., out]
]]
local Linear = nn.class("Linear")
nn.Linear = Linear

function Linear:__init(in_features, out_features, opts)
   check_posint("dpo.nn.Linear", "in_features", in_features)
   check_posint("dpo.nn.Linear", "out_features", out_features)
   opts = check_opts("dpo.nn.Linear", opts, { bias = true })
   check_bool("dpo.nn.Linear", "bias", opts.bias)
   self.in_features, self.out_features = in_features, out_features
   local bound = 1 / math.sqrt(in_features)
   self:register_parameter("weight", uniform(bound, out_features, in_features))
   if opts.bias ~= false then
      self:register_parameter("bias", uniform(bound, out_features))
   end
end

function Linear:__repr()
   return ("dpo.nn.Linear(%d -> %d)%s"):format(self.in_features, self.out_features,
      self.bias and "" or " without bias")
end

function Linear:forward(x)
   check_tensor(self, x)
   if x:dim() == 0 or x:size(x:dim()) ~= self.in_features then
      error(("%s: input of size %s, expected the last dim to be %d")
         :format(self:__repr(), shape_str(x), self.in_features), 2)
   end
   local y = x:matmul(self.weight:t())
   if self.bias then y = y + self.bias end
   return y
end

-- ---- Embedding ----------------------------------------------------------------

--[[
nn.Embedding(num_embeddings, embedding_dim): a lookup table.
ARGS    num_embeddings, embedding_dim  positive integers
RETURNS a module with weight [n, d] ~ N(0, 1); forward takes an int32 tensor
        (or a Lua list) of 1-based ids of any shape [...] and returns the rows,
        [..., d]; only the rows used receive gradient
]]
local Embedding = nn.class("Embedding")
nn.Embedding = Embedding

function Embedding:__init(n, d)
   check_posint("dpo.nn.Embedding", "num_embeddings", n)
   check_posint("dpo.nn.Embedding", "embedding_dim", d)
   self.num_embeddings, self.embedding_dim = n, d
   self:register_parameter("weight", core.randn(n, d))
end

function Embedding:__repr()
   return ("dpo.nn.Embedding(%d, %d)"):format(self.num_embeddings, self.embedding_dim)
end

function Embedding:forward(ids)
   if type(ids) == "table" then
      for i = 1, #ids do
         if math.type(ids[i]) ~= "integer" then
            error(("%s: id %d is %s, not an integer"):format(self:__repr(), i, tostring(ids[i])), 2)
         end
      end
      ids = core.tensor(ids, "int32")
   end
   check_tensor(self, ids)
   if ids:dtype() ~= "int32" then
      error(("%s: ids must be an int32 tensor (got %s)"):format(self:__repr(), ids:dtype()), 2)
   end
   local shape = ids:shape()
   local flat = ids:reshape(-1)
   if flat:numel() > 0 then
      local lo, hi = flat:min():item(), flat:max():item()
      if lo < 1 or hi > self.num_embeddings then
         error(("%s: id %d out of range 1..%d"):format(self:__repr(),
            lo < 1 and lo or hi, self.num_embeddings), 2)
      end
   end
   shape[#shape + 1] = self.embedding_dim
   return self.weight:index_select(1, flat):reshape(shape)
end

-- ---- LayerNorm ----------------------------------------------------------------

--[[
nn.LayerNorm(d [, opts]): normalise over the last dim.
ARGS    d     the size of the last dim (a positive integer)
        opts  { eps = 1e-5, elementwise_affine = true }
RETURNS a module: y = (x - mean) / sqrt(var + eps) * weight + bias, with the
        biased variance over the last dim; weight [d] ones, bias [d] zeros
]]
local LayerNorm = nn.class("LayerNorm")
nn.LayerNorm = LayerNorm

function LayerNorm:__init(d, opts)
   check_posint("dpo.nn.LayerNorm", "normalized_shape", d)
   opts = check_opts("dpo.nn.LayerNorm", opts, { eps = true, elementwise_affine = true })
   local eps = opts.eps or 1e-5
   if type(eps) ~= "number" or not (eps >= 0 and eps < math.huge) then
      argerror("dpo.nn.LayerNorm", "eps must be a finite non-negative number", eps)
   end
   check_bool("dpo.nn.LayerNorm", "elementwise_affine", opts.elementwise_affine)
   self.normalized_shape, self.eps = d, eps
   if opts.elementwise_affine ~= false then
      self:register_parameter("weight", core.ones(d))
      self:register_parameter("bias", core.zeros(d))
   end
end

function LayerNorm:__repr()
   return ("dpo.nn.LayerNorm(%d, eps=%g)"):format(self.normalized_shape, self.eps)
end

function LayerNorm:forward(x)
   check_tensor(self, x)
   if x:dim() == 0 or x:size(x:dim()) ~= self.normalized_shape then
      error(("%s: input of size %s, expected the last dim to be %d")
         :format(self:__repr(), shape_str(x), self.normalized_shape), 2)
   end
   local xc = x - x:mean(-1, true)
   local var = (xc * xc):mean(-1, true)
   local y = xc / (var + self.eps):sqrt()
   if self.weight then y = y * self.weight + self.bias end
   return y
end

-- ---- Dropout ------------------------------------------------------------------

--[[
nn.Dropout([p=0.5] [, opts]): in training mode, zero each element with
probability p and scale the rest by 1/(1-p); in eval mode, the identity.
ARGS    p     a number in [0, 1]
        opts  { seed }  the seed of the module's own generator; without one a
                        seed is drawn from the global generator when the
                        module is made
RETURNS a module whose masks come from its own generator state, so they are
        reproducible from the seed and leave the global sequence untouched
]]
local Dropout = nn.class("Dropout")
nn.Dropout = Dropout

function Dropout:__init(p, opts)
   if p == nil then p = 0.5 end
   if type(p) ~= "number" or p ~= p or p < 0 or p > 1 then
      argerror("dpo.nn.Dropout", "p must be a number in [0, 1]", p)
   end
   opts = check_opts("dpo.nn.Dropout", opts, { seed = true })
   local seed = opts.seed
   if seed == nil then
      seed = core.randint(0, 2147483647, 1)[1]
   else
      check_seed("dpo.nn.Dropout", "seed", seed)
   end
   self.p = p
   self:reseed(seed)
end

--[[
d:reseed(seed): restart the module's generator from seed. RETURNS d
]]
function Dropout:reseed(seed)
   if math.type(seed) ~= "integer" then
      error(("dpo.nn.Dropout:reseed: seed must be an integer (got %s)"):format(tostring(seed)), 2)
   end
   self.seed = seed
   self.rng_state = seed_state(seed)
   return self
end

function Dropout:__repr()
   return ("dpo.nn.Dropout(%g)"):format(self.p)
end

function Dropout:forward(x)
   check_tensor(self, x)
   if not self.training or self.p == 0 then return x end
   if self.p == 1 then return x * 0 end
   local shape, p = x:shape(), self.p
   local mask
   mask, self.rng_state = with_rng(self.rng_state, function()
      return core.rand(shape):ge(p):float()
   end)
   return x * (mask * (1 / (1 - p)))
end

-- ---- Activations --------------------------------------------------------------

local function activation(name, method)
   local cls = nn.class(name)
   cls.forward = function(self, x)
      check_tensor(self, x)
      return x[method](x)
   end
   nn[name] = cls
   return cls
end

--[[
nn.ReLU(), nn.GELU(), nn.Tanh(), nn.Sigmoid(), nn.LogSigmoid(): elementwise,
as the tensor methods relu, gelu (tanh approximation), tanh, sigmoid,
logsigmoid. nn.Identity(): returns its input.
]]
activation("ReLU", "relu")
activation("GELU", "gelu")
activation("Tanh", "tanh")
activation("Sigmoid", "sigmoid")
activation("LogSigmoid", "logsigmoid")

local Identity = nn.class("Identity")
nn.Identity = Identity
function Identity:forward(x)
   check_tensor(self, x)
   return x
end

--[[
nn.Softmax([dim=-1]), nn.LogSoftmax([dim=-1]): along dim (1-based; negative
counts from the end, -1 is the last dim).
]]
local function softmax_class(name, method)
   local cls = nn.class(name)
   cls.__init = function(self, dim)
      if dim ~= nil and (math.type(dim) ~= "integer" or dim == 0) then
         argerror("dpo.nn." .. name, "dim must be a non-zero integer", dim)
      end
      self.dim = dim or -1
   end
   cls.__repr = function(self)
      return ("dpo.nn.%s(dim=%d)"):format(name, self.dim)
   end
   cls.forward = function(self, x)
      check_tensor(self, x)
      -- called by name, so an error names the method
      if method == "softmax" then return x:softmax(self.dim) end
      return x:log_softmax(self.dim)
   end
   nn[name] = cls
   return cls
end

softmax_class("Softmax", "softmax")
softmax_class("LogSoftmax", "log_softmax")

-- ---- Sequential ---------------------------------------------------------------

--[[
nn.Sequential(m1, m2, ...): apply the modules in turn.
ARGS    modules (also accepted as one list)
RETURNS a container whose children are named "1", "2", ...; s.modules is the
        list; s:add(m) appends one and returns s
]]
local Sequential = nn.class("Sequential")
nn.Sequential = Sequential

local function is_module(m)
   return type(m) == "table" and type(m.forward) == "function" and m._params ~= nil
end

function Sequential:__init(...)
   self.modules = {}
   local args = table.pack(...)
   if args.n == 1 and type(args[1]) == "table" and not is_module(args[1]) then
      args = table.pack(table.unpack(args[1]))
   end
   for i = 1, args.n do
      if not is_module(args[i]) then
         argerror("dpo.nn.Sequential", ("argument #%d must be a module"):format(i), type(args[i]))
      end
      self:add(args[i])
   end
end

function Sequential:add(m)
   if not is_module(m) then
      error(("dpo.nn.Sequential:add: argument must be a module (got %s)"):format(type(m)), 2)
   end
   self.modules[#self.modules + 1] = m
   self:register_module(#self.modules, m)
   return self
end

function Sequential:__len()
   return #self.modules
end

function Sequential:forward(x)
   for _, m in ipairs(self.modules) do x = m:forward(x) end
   return x
end

-- ---- MLP ----------------------------------------------------------------------

local activations = { relu = nn.ReLU, gelu = nn.GELU, tanh = nn.Tanh, sigmoid = nn.Sigmoid }

--[[
nn.MLP(sizes [, opts]): Linear layers between consecutive sizes, with the
activation (and dropout, when > 0) between them, not after the last.
ARGS    sizes  list of at least two positive integers, e.g. {16, 64, 50}
        opts   { activation = 'relu' | 'gelu' | 'tanh' | 'sigmoid',
                 dropout = 0, bias = true,
                 seed }   the first Dropout's seed (the next get seed+1, ...)
RETURNS a module holding `layers`, a Sequential; parameter names are
        "layers.1.weight", "layers.1.bias", "layers.3.weight", ...
]]
local MLP = nn.class("MLP")
nn.MLP = MLP

function MLP:__init(sizes, opts)
   if type(sizes) ~= "table" or #sizes < 2 then
      argerror("dpo.nn.MLP", "sizes must be a list of at least two positive integers",
         type(sizes) == "table" and ("%d sizes"):format(#sizes) or type(sizes))
   end
   for i, s in ipairs(sizes) do
      check_posint("dpo.nn.MLP", ("sizes[%d]"):format(i), s)
   end
   opts = check_opts("dpo.nn.MLP", opts, { activation = true, dropout = true, bias = true, seed = true })
   local act = opts.activation or "relu"
   if not activations[act] then
      argerror("dpo.nn.MLP", "activation must be one of 'relu', 'gelu', 'tanh', 'sigmoid'", act)
   end
   local p = opts.dropout or 0
   if type(p) ~= "number" or not (p >= 0 and p <= 1) then
      argerror("dpo.nn.MLP", "dropout must be a number in [0, 1]", p)
   end
   check_bool("dpo.nn.MLP", "bias", opts.bias)
   check_seed("dpo.nn.MLP", "seed", opts.seed)
   self.sizes, self.activation, self.dropout = { table.unpack(sizes) }, act, p
   local layers = Sequential()
   local seed = opts.seed
   for i = 1, #sizes - 1 do
      layers:add(Linear(sizes[i], sizes[i + 1], { bias = opts.bias }))
      if i < #sizes - 1 then
         layers:add(activations[act]())
         if p > 0 then
            layers:add(Dropout(p, { seed = seed }))
            if seed then seed = seed + 1 end
         end
      end
   end
   self:register_module("layers", layers)
end

function MLP:__repr()
   local s = ("dpo.nn.MLP(%s, %s"):format(table.concat(self.sizes, " -> "), self.activation)
   if self.dropout > 0 then s = s .. (", dropout=%g"):format(self.dropout) end
   return s .. ")"
end

function MLP:forward(x)
   return self.layers:forward(x)
end

return nn
