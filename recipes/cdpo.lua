-- recipes/cdpo.lua: recipes/hh.lua with conservative DPO (cDPO; Mitchell, "A
-- note on DPO with noisy preferences & relationship to IPO"), for data whose
-- labels are sometimes wrong.
--
--   dpolua recipes/cdpo.lua [--key=value ...]    (the options of hh.lua)
--
-- cDPO assumes a fraction eps of the pairs are flipped and trains towards a
-- preference probability of 1 - eps rather than 1, so the margins stop
-- growing once they are large. eps is --dpo.loss_options=label_smoothing=0.1
-- (the default here).
local here = (arg and arg[0] or "recipes/cdpo.lua"):match("^(.*)/[^/]*$") or "."
local hh = assert(loadfile(here .. "/hh.lua"))("dpo.recipe")
hh.main(arg, { ["dpo.loss"] = "cdpo", ["dpo.loss_options"] = "label_smoothing=0.1", out = "runs/cdpo" })
