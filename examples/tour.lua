-- A short tour of dpolua's tensors: run it with `dpolua examples/tour.lua`.
-- Every line here also works typed into the REPL (`dpolua` with no arguments).

dpo.manual_seed(42) -- the same numbers on every run and every machine

print("-- a tensor from a nested table")
local a = dpo.tensor{{1, 2, 3}, {4, 5, 6}}
print(a)

print("-- shape, size, indexing (1-based, like Lua)")
print("shape", table.concat(a:shape(), "x"), "size(2)", a:size(2), "a[2][3]", a[2][3])

print("-- arithmetic broadcasts: a 2x3 plus a row of 3")
print(a + dpo.tensor{10, 20, 30})

print("-- matrix products go through OpenBLAS")
local w = dpo.randn(3, 4)
print(a:mm(w))

print("-- reductions, along everything or one dimension")
print("sum of all:", a:sum():item())
print("mean of each row:")
print(a:mean(2))

print("-- the pieces of a DPO loss: log-sigmoid of a scaled margin")
local beta = 0.1
local margins = dpo.tensor{2.0, -0.5, 1.25}
local losses = -(margins * beta):logsigmoid()
print(losses)
print(string.format("mean loss %.4f, accuracy %.2f", losses:mean():item(),
   margins:gt(0):float():mean():item()))

print("-- log-probabilities of chosen tokens with log_softmax + gather")
local logits = dpo.randn(2, 5)          -- 2 positions, vocabulary of 5
local targets = dpo.tensor({{3}, {1}}, "int32") -- 1-based token positions
print(logits:log_softmax(2):gather(2, targets))

print("-- errors name the function, the argument and the shapes")
local ok, err = pcall(function() return a + dpo.zeros(4) end)
print(ok, err)
