-- dpo.cli: recipe options as --key=value, nested names, aliases, defaults
-- that depend on other options, --help, and the errors a typo gets.
local cli = require "dpo.cli"

local function spec()
   return {
      usage = "dpolua recipes/x.lua [--key=value ...]",
      about = "A recipe for the tests.",
      { "data", "examples/data/hh-sample", "the data" },
      { "model", "", "a model directory" },
      { "overwrite", false, "replace the run" },
      { "seed", 0, "the seed" },
      { "lr_scale", 1.5, "a number" },
      { "dpo.beta", 0.1, "beta", alias = "beta" },
      { "dpo.steps", function(o) return o.model == "" and 300 or 0 end, "steps",
        show = "300, or 0 with --model", type = "integer" },
      { "dpo.loss", "sigmoid", "the loss", alias = "loss", choices = { "sigmoid", "ipo", "cdpo" } },
      { "sft.steps", 200, "SFT steps" },
   }
end

describe("dpo.cli", function()
   it("gives the defaults as nested tables", function()
      local o = cli.try_parse({}, spec())
      assert.are.equal("examples/data/hh-sample", o.data)
      assert.are.equal(false, o.overwrite)
      assert.are.equal(0.1, o.dpo.beta)
      assert.are.equal(300, o.dpo.steps)
      assert.are.equal(200, o.sft.steps)
      assert.are.same({}, o._given)
      assert.are.equal(0.1, o._flat["dpo.beta"])
   end)

   it("reads --key=value, --key value, nested names and aliases", function()
      local o = cli.try_parse({ "--dpo.beta=0.2", "--seed", "7", "--sft.steps=5", "--loss=ipo",
                                "--data=/tmp/x=y" }, spec())
      assert.are.equal(0.2, o.dpo.beta)
      assert.are.equal(7, o.seed)
      assert.are.equal("integer", math.type(o.seed))
      assert.are.equal(5, o.sft.steps)
      assert.are.equal("ipo", o.dpo.loss)
      assert.are.equal("/tmp/x=y", o.data)
      assert.is_true(o._given["dpo.beta"] and o._given["dpo.loss"])
      local p = cli.try_parse({ "--beta=0.3" }, spec())
      assert.are.equal(0.3, p.dpo.beta)
   end)

   it("reads booleans in every usual form", function()
      assert.is_true(cli.try_parse({ "--overwrite" }, spec()).overwrite)
      assert.is_true(cli.try_parse({ "--overwrite=true" }, spec()).overwrite)
      assert.is_true(cli.try_parse({ "--overwrite", "yes" }, spec()).overwrite)
      assert.is_false(cli.try_parse({ "--overwrite=0" }, spec()).overwrite)
      assert.is_false(cli.try_parse({ "--overwrite", "--no-overwrite" }, spec()).overwrite)
   end)

   it("computes defaults from other options", function()
      assert.are.equal(0, cli.try_parse({ "--model=gpt2" }, spec()).dpo.steps)
      assert.are.equal(9, cli.try_parse({ "--model=gpt2", "--dpo.steps=9" }, spec()).dpo.steps)
   end)

   it("takes replacement defaults from a recipe built on another", function()
      local o = cli.try_parse({}, spec(), { ["dpo.loss"] = "cdpo", seed = 3 })
      assert.are.equal("cdpo", o.dpo.loss)
      assert.are.equal(3, o.seed)
      assert.are.equal("ipo", cli.try_parse({ "--loss=ipo" }, spec(), { ["dpo.loss"] = "cdpo" }).dpo.loss)
      assert.has_error(function() cli.try_parse({}, spec(), { nope = 1 }) end,
                       "dpo.cli: a default for an unknown option 'nope'")
   end)

   it("suggests the closest name for an unknown option", function()
      local o, msg, kind = cli.try_parse({ "--dpo.betta=0.2" }, spec())
      assert.is_nil(o)
      assert.are.equal("error", kind)
      assert.are.equal("unknown option --dpo.betta (did you mean --dpo.beta?); --help lists the options", msg)
      local _, m2 = cli.try_parse({ "--sft.step=3" }, spec())
      assert.truthy(m2:find("did you mean --sft.steps?", 1, true))
      local _, m3 = cli.try_parse({ "--betas=1" }, spec())
      assert.truthy(m3:find("did you mean --dpo.beta?", 1, true))
      local _, m4 = cli.try_parse({ "--completely-different=1" }, spec())
      assert.are.equal("unknown option --completely-different; --help lists the options", m4)
   end)

   it("rejects bad values and stray arguments", function()
      local _, m1 = cli.try_parse({ "--seed=abc" }, spec())
      assert.are.equal("--seed expects a number, got 'abc'", m1)
      local _, m2 = cli.try_parse({ "--seed=1.5" }, spec())
      assert.are.equal("--seed expects an integer, got '1.5'", m2)
      local _, m3 = cli.try_parse({ "--overwrite=maybe" }, spec())
      assert.are.equal("--overwrite expects true or false, got 'maybe'", m3)
      local _, m4 = cli.try_parse({ "--loss=dpo" }, spec())
      assert.are.equal("--dpo.loss must be one of sigmoid, ipo, cdpo, got 'dpo' (did you mean cdpo?)", m4)
      local _, m5 = cli.try_parse({ "stray" }, spec())
      assert.truthy(m5:find("unexpected argument 'stray'", 1, true))
      local _, m6 = cli.try_parse({ "--seed" }, spec())
      assert.are.equal("--seed needs a value (--seed=VALUE)", m6)
   end)

   it("lists every option with its default for --help", function()
      local o, text, kind = cli.try_parse({ "--help" }, spec())
      assert.is_nil(o)
      assert.are.equal("help", kind)
      assert.truthy(text:find("usage: dpolua recipes/x.lua", 1, true))
      assert.truthy(text:find("--data=examples/data/hh-sample", 1, true))
      assert.truthy(text:find("--dpo.beta=0.1", 1, true))
      assert.truthy(text:find("(also --beta)", 1, true))
      assert.truthy(text:find("--dpo.steps=300, or 0 with --model", 1, true))
      assert.truthy(text:find("--overwrite=false", 1, true))
      assert.truthy(text:find("--model=\"\"", 1, true))
      assert.truthy(text:find("[sigmoid|ipo|cdpo]", 1, true))
      assert.are.equal("help", select(3, cli.try_parse({ "-h" }, spec())))
   end)

   it("finds the closest of a list of names", function()
      assert.are.equal("max_steps", cli.closest("max_step", { "max_steps", "batch_size" }))
      assert.is_nil(cli.closest("zzz", { "max_steps", "batch_size" }))
   end)

   it("dumps the values it parsed", function()
      local o = cli.try_parse({ "--seed=2" }, spec())
      local lines = cli.dump(o)
      assert.are.equal("data=examples/data/hh-sample", lines[1])
      local found = false
      for _, l in ipairs(lines) do
         if l == "seed=2" then found = true end
      end
      assert.is_true(found)
   end)
end)
