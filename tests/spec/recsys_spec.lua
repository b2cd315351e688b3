-- examples/recsys.lua: DPO on a toy recommender, run short.
--
-- Loading the example with dofile runs nothing; its run(opts) trains and
-- returns the logged history.
local recsys = dofile("examples/recsys.lua")

describe("examples/recsys.lua", function()
   local result

   setup(function()
      result = recsys.run { steps = 150, log_every = 50, quiet = true }
   end)

   it("starts at loss ln 2 with the policy equal to its reference", function()
      local first = result.history[1]
      assert.are.equal(1, first.step)
      assert.is_true(math.abs(first.loss - math.log(2)) < 1e-5, "step-1 loss " .. first.loss)
      assert.is_true(first.heldout_acc > 0.3 and first.heldout_acc < 0.7,
         "step-1 held-out accuracy " .. first.heldout_acc)
   end)

   it("learns the held-out users' preferences (accuracy >= 0.8)", function()
      assert.are.same({ 1, 50, 100, 150 }, (function()
         local s = {}
         for i, h in ipairs(result.history) do s[i] = h.step end
         return s
      end)())
      assert.is_true(result.heldout_acc >= 0.8, "held-out accuracy " .. result.heldout_acc)
      assert.is_true(result.loss < 0.5, "final loss " .. result.loss)
   end)

   it("keeps the reference frozen while the policy moves", function()
      local ref = result.ref:state_dict()
      local moved = 0
      for name, p in pairs(result.policy:state_dict()) do
         if not p:equal(ref[name]) then moved = moved + 1 end
      end
      assert.are.equal(4, moved)
      for _, p in ipairs(result.ref:parameters()) do
         assert.is_nil(p.grad, "the reference never receives gradient")
      end
      assert.is_false(result.ref.training)
   end)

   it("is reproducible from its seed", function()
      local again = recsys.run { steps = 50, log_every = 50, quiet = true }
      assert.are.equal(result.history[2].loss, again.history[2].loss)
      assert.are.equal(result.history[2].heldout_acc, again.history[2].heldout_acc)
   end)
end)
