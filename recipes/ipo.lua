-- recipes/ipo.lua: recipes/hh.lua with the IPO loss (Azar et al., "A General
-- Theoretical Paradigm to Understand Learning from Human Preferences").
--
--   dpolua recipes/ipo.lua [--key=value ...]     (the options of hh.lua)
--
-- IPO regresses the per-token log-ratio margin onto 1/(2 beta) instead of
-- pushing it up without bound, so it keeps closer to the reference than DPO
-- when the preferences are (nearly) deterministic. --dpo.loss_options=average=false
-- uses the paper's summed log-probs instead of TRL's per-token averages.
local here = (arg and arg[0] or "recipes/ipo.lua"):match("^(.*)/[^/]*$") or "."
local hh = assert(loadfile(here .. "/hh.lua"))("dpo.recipe")
hh.main(arg, { ["dpo.loss"] = "ipo", ["dpo.beta"] = 0.1, out = "runs/ipo" })
