-- make_hh_sample.lua: writes the bundled HH-format sample, a set of small
-- multi-turn dialogues written for dpolua (no data set went into it).
--
--   dpolua examples/data/make_hh_sample.lua [--train=3000] [--test=400]
--          [--seed=1234] [--turns=3] [--dirty=true] [--out=examples/data/hh-sample]
--
-- writes OUT/train.jsonl.gz and OUT/test.jsonl.gz, one {"chosen", "rejected"}
-- record a line, both whole dialogues ("\n\nHuman: ...\n\nAssistant: ...")
-- that differ only in the final assistant reply. The chosen reply answers
-- the last question helpfully and correctly; the rejected one is rude,
-- evasive, off topic (the answer to another question) or wrong, in equal
-- shares, so a tiny model can learn the preference. Earlier turns are
-- greetings or other questions answered well. A question (the last human
-- turn) belongs to train or to test by a hash, so no prompt is in both.
-- No two rows are the same, except the deliberately dirty ones: with
-- --dirty=true a handful of rows carry the faults real HH data has (a
-- rejected dialogue with other earlier turns, identical replies, an empty
-- reply, two human turns in a row, an empty turn, an extra turn on one side,
-- a dialogue ending on a human turn, a duplicated row), which dpo.data.hh
-- and dpo.filters.hh_clean / dedupe must catch.
--
-- Same options, same bytes: the generator is seeded, and the gzip streams
-- carry no name or time. Larger sets (--train=160000) serve the benchmark.

local opts = { train = 3000, test = 400, seed = 1234, turns = 3, dirty = "true",
               out = "examples/data/hh-sample" }
for _, a in ipairs(arg or {}) do
   local k, v = a:match("^%-%-([%w_]+)=(.*)$")
   if not k or opts[k] == nil then
      io.stderr:write("make_hh_sample.lua: unknown argument ", a, "\n")
      os.exit(2)
   end
   opts[k] = type(opts[k]) == "number" and assert(math.tointeger(tonumber(v)), a) or v
end

-- ---- a seeded generator (splitmix64) ----------------------------------------------

local state = opts.seed * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019
local function rand(n) -- uniform in 1..n
   state = state + 0x9E3779B97F4A7C15
   local z = state
   z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
   z = (z ~ (z >> 27)) * 0x94D049BB133111EB
   z = z ~ (z >> 31)
   return (z >> 11) % n + 1
end

local function pick(list)
   return list[rand(#list)]
end

-- FNV-1a of s: which split a question belongs to.
local function hash(s)
   local h = 0xcbf29ce484222325
   for i = 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
   return h
end

local function is_test(question)
   return (hash(question) >> 8) % 100 < 12
end

-- ---- what the dialogues talk about --------------------------------------------------

local capitals = {
   { "France", "Paris" }, { "Germany", "Berlin" }, { "Italy", "Rome" }, { "Spain", "Madrid" },
   { "Portugal", "Lisbon" }, { "Japan", "Tokyo" }, { "China", "Beijing" },
   { "India", "New Delhi" }, { "Canada", "Ottawa" }, { "Mexico", "Mexico City" },
   { "Brazil", "Brasília" }, { "Argentina", "Buenos Aires" }, { "Egypt", "Cairo" },
   { "Kenya", "Nairobi" }, { "Australia", "Canberra" }, { "Norway", "Oslo" },
   { "Sweden", "Stockholm" }, { "Finland", "Helsinki" }, { "Poland", "Warsaw" },
   { "Greece", "Athens" }, { "Turkey", "Ankara" }, { "Ireland", "Dublin" },
   { "Austria", "Vienna" }, { "Hungary", "Budapest" }, { "Peru", "Lima" },
   { "Chile", "Santiago" }, { "Colombia", "Bogotá" }, { "Thailand", "Bangkok" },
   { "Vietnam", "Hanoi" }, { "South Korea", "Seoul" }, { "Indonesia", "Jakarta" },
   { "Nigeria", "Abuja" }, { "Morocco", "Rabat" }, { "Denmark", "Copenhagen" },
   { "the Netherlands", "Amsterdam" }, { "Belgium", "Brussels" }, { "Switzerland", "Bern" },
   { "the Czech Republic", "Prague" }, { "New Zealand", "Wellington" }, { "Iceland", "Reykjavík" },
}

local opposites = {
   { "hot", "cold" }, { "big", "small" }, { "fast", "slow" }, { "happy", "sad" },
   { "early", "late" }, { "full", "empty" }, { "open", "closed" }, { "up", "down" },
   { "young", "old" }, { "hard", "soft" }, { "wet", "dry" }, { "loud", "quiet" },
   { "rich", "poor" }, { "strong", "weak" }, { "thick", "thin" }, { "high", "low" },
   { "near", "far" }, { "first", "last" }, { "push", "pull" }, { "win", "lose" },
   { "buy", "sell" }, { "begin", "end" }, { "inside", "outside" }, { "above", "below" },
   { "clean", "dirty" }, { "heavy", "light" }, { "narrow", "wide" }, { "sweet", "bitter" },
   { "true", "false" }, { "always", "never" }, { "arrive", "leave" }, { "remember", "forget" },
}

local animals = { -- name, sound, legs
   { "dog", "woof", 4 }, { "cat", "meow", 4 }, { "cow", "moo", 4 }, { "duck", "quack", 2 },
   { "sheep", "baa", 4 }, { "horse", "neigh", 4 }, { "pig", "oink", 4 }, { "owl", "hoot", 2 },
   { "lion", "roar", 4 }, { "frog", "croak", 4 }, { "bee", "buzz", 6 }, { "snake", "hiss", 0 },
   { "mouse", "squeak", 4 }, { "goat", "bleat", 4 }, { "crow", "caw", 2 }, { "donkey", "hee-haw", 4 },
}

local colors = {
   { "grass", "green" }, { "the sky on a clear day", "blue" }, { "fresh snow", "white" },
   { "a ripe banana", "yellow" }, { "coal", "black" }, { "a ripe tomato", "red" },
   { "a carrot", "orange" }, { "milk", "white" }, { "a lemon", "yellow" },
   { "dark chocolate", "brown" }, { "a flamingo", "pink" }, { "an eggplant", "purple" },
   { "a crow", "black" }, { "a pumpkin", "orange" }, { "a lime", "green" },
   { "a strawberry", "red" }, { "the sea on a sunny day", "blue" }, { "a blueberry", "blue" },
}
local color_names = { "red", "green", "blue", "yellow", "black", "white", "orange", "purple",
                      "pink", "brown", "grey" }

local units = { -- small unit, big unit, factor
   { "minutes", "hours", 60 }, { "seconds", "minutes", 60 }, { "hours", "days", 24 },
   { "days", "weeks", 7 }, { "months", "years", 12 }, { "centimeters", "meters", 100 },
   { "meters", "kilometers", 1000 }, { "grams", "kilograms", 1000 },
   { "millimeters", "centimeters", 10 }, { "minutes", "days", 1440 },
}

local days = { "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday" }
local months = { "January", "February", "March", "April", "May", "June", "July", "August",
                 "September", "October", "November", "December" }

local words = {
   "apple", "garden", "window", "rabbit", "pencil", "orange", "kitchen", "planet", "river",
   "bottle", "candle", "forest", "guitar", "island", "jacket", "ladder", "marble", "needle",
   "pillow", "rocket", "saddle", "ticket", "violin", "wallet", "yellow", "basket", "camera",
   "dragon", "engine", "flower", "hammer", "kettle", "lemon", "mirror", "number", "parrot",
   "silver", "turtle", "summer", "winter", "bridge", "castle", "desert", "market", "puzzle",
   "stream", "thunder", "blanket", "teacher", "library", "morning", "picture", "station",
}

local howto = { -- task, good answer, wrong answer
   { "boil an egg",
     "Put the egg in a pot of cold water, bring it to a boil, let it cook for about nine minutes, then cool it in cold water.",
     "Put the egg in the freezer for an hour and it will be boiled." },
   { "make a cup of tea",
     "Boil water, pour it over a tea bag in a cup, and let it steep for three to five minutes before taking the bag out.",
     "Put the tea bag in cold water and drink it right away, no need to heat anything." },
   { "water a houseplant",
     "Check that the top of the soil is dry, water slowly until it drains from the bottom, and empty the saucer afterwards.",
     "Pour a full bucket of water on it every day, the more the better." },
   { "wash my hands properly",
     "Wet your hands, rub them with soap for at least twenty seconds, rinse them, and dry them with a clean towel.",
     "Just wipe them on your trousers, that is as good as soap." },
   { "fall asleep faster",
     "Keep a regular bedtime, avoid screens for an hour before bed, and keep your room cool, dark and quiet.",
     "Drink two cups of strong coffee right before bed." },
   { "save money each month",
     "Write down what you spend, set a budget, and move a fixed amount into savings as soon as you are paid.",
     "Spend everything as soon as you are paid, then save whatever is left." },
   { "learn a new language",
     "Practice a little every day, learn the most common words first, and talk with native speakers as soon as you can.",
     "Read a dictionary once from start to finish and you will be fluent." },
   { "clean a cast iron pan",
     "Rinse it with hot water, scrub off food with a brush or coarse salt, dry it completely, and rub in a thin layer of oil.",
     "Leave it to soak in soapy water overnight and let it air dry." },
   { "start running",
     "Begin with short runs mixed with walking, go slowly enough that you can talk, and add a little distance each week.",
     "Run as far as you possibly can on the first day to build strength quickly." },
   { "write a good email",
     "State your purpose in the first line, keep it short, and end with a clear request or next step.",
     "Make it as long as possible and put the main point at the very end." },
   { "cook rice",
     "Rinse the rice, use about two cups of water for each cup of rice, simmer it covered for about eighteen minutes, then let it rest.",
     "Fry the dry rice in a hot pan without any water until it turns soft." },
   { "remove a splinter",
     "Wash the area, pull the splinter out with clean tweezers in the direction it went in, then wash it again and cover it.",
     "Push it deeper so the skin grows over it." },
   { "keep cut flowers fresh",
     "Trim the stems at an angle, put them in clean water, change the water every two days, and keep them out of direct sun.",
     "Keep them in a dry vase in a sunny window." },
   { "study for an exam",
     "Start a few days early, review in short sessions, test yourself on old questions, and get a good night of sleep before the exam.",
     "Stay up all night before the exam and read everything once." },
   { "make a paper airplane",
     "Fold a sheet in half lengthwise, fold the top corners to the center line, fold the edges down to form wings, and throw it gently.",
     "Crumple the paper into a ball and throw it as hard as you can." },
   { "stay cool on a hot day",
     "Drink plenty of water, stay in the shade, wear light loose clothes, and avoid hard exercise at midday.",
     "Wear a thick wool sweater and sit in the sun." },
}

local good_open = { "", "", "Sure! ", "Of course. ", "Good question. ", "Happy to help. " }
local good_close = { "", "", "", " Hope that helps!", " Let me know if you have more questions." }

local rude = {
   "That's a stupid question. Look it up yourself.", "Ugh, why are you asking me this?",
   "Figure it out on your own.", "I can't believe you don't know that. Stop bothering me.",
   "Who cares? Go away.", "That's not worth my time.", "What a dumb thing to ask.",
   "Seriously? Even a child knows that. Leave me alone.",
}
local evasive = {
   "I'd rather not get into that.", "Hmm, hard to say. It depends.",
   "You could probably find that somewhere else.", "Let's talk about something else.",
   "I'm not sure that's something I want to answer.", "Maybe, maybe not. Who knows?",
   "That's an interesting question. What do you think?", "I don't really know, sorry.",
}

-- ---- questions: {q = question, good = answer, wrong = a wrong answer or nil} ----------

local function other(list, avoid)
   local v
   repeat v = pick(list) until v ~= avoid
   return v
end

local skills = {
   function() -- addition
      local a, b = rand(99), rand(99)
      local w = a + b + (rand(2) == 1 and -1 or 1) * rand(9)
      return { q = ("What is %d plus %d?"):format(a, b),
               good = ("%d plus %d is %d."):format(a, b, a + b),
               wrong = ("%d plus %d is %d."):format(a, b, w) }
   end,
   function() -- subtraction
      local a = rand(90) + 9
      local b = rand(a)
      return { q = ("What is %d minus %d?"):format(a, b),
               good = ("%d minus %d is %d."):format(a, b, a - b),
               wrong = ("%d minus %d is %d."):format(a, b, a - b + rand(9)) }
   end,
   function() -- multiplication
      local a, b = rand(11) + 1, rand(19) + 1
      return { q = ("What is %d times %d?"):format(a, b),
               good = ("%d times %d is %d."):format(a, b, a * b),
               wrong = ("%d times %d is %d."):format(a, b, a * b + rand(2) * a - a + rand(5)) }
   end,
   function() -- capitals
      local c = pick(capitals)
      local w = other(capitals, c)
      return { q = ("What is the capital of %s?"):format(c[1]),
               good = ("The capital of %s is %s."):format(c[1], c[2]),
               wrong = ("The capital of %s is %s."):format(c[1], w[2]) }
   end,
   function() -- opposites
      local o = pick(opposites)
      local a, b = o[1], o[2]
      if rand(2) == 2 then a, b = b, a end
      local w = other(opposites, o)
      return { q = ("What is the opposite of \"%s\"?"):format(a),
               good = ("The opposite of \"%s\" is \"%s\"."):format(a, b),
               wrong = ("The opposite of \"%s\" is \"%s\"."):format(a, w[rand(2)]) }
   end,
   function() -- animal sounds
      local an = pick(animals)
      local w = other(animals, an)
      return { q = ("What sound does a %s make?"):format(an[1]),
               good = ("A %s says \"%s\"."):format(an[1], an[2]),
               wrong = ("A %s says \"%s\"."):format(an[1], w[2]) }
   end,
   function() -- legs
      local an = pick(animals)
      local w = an[3] + 2 * rand(2) - (an[3] > 2 and 3 or 0)
      if w == an[3] then w = an[3] + 2 end
      return { q = ("How many legs does a %s have?"):format(an[1]),
               good = ("A %s has %d legs."):format(an[1], an[3]),
               wrong = ("A %s has %d legs."):format(an[1], w) }
   end,
   function() -- colors
      local c = pick(colors)
      return { q = ("What color is %s?"):format(c[1]),
               good = ("%s%s is %s."):format(c[1]:sub(1, 1):upper(), c[1]:sub(2), c[2]),
               wrong = ("%s%s is %s."):format(c[1]:sub(1, 1):upper(), c[1]:sub(2),
                                              other(color_names, c[2])) }
   end,
   function() -- units
      local u = pick(units)
      local n = rand(12)
      return { q = ("How many %s are in %d %s?"):format(u[1], n, n == 1 and u[2]:sub(1, -2) or u[2]),
               good = ("There are %d %s in %d %s."):format(n * u[3], u[1], n,
                                                         n == 1 and u[2]:sub(1, -2) or u[2]),
               wrong = ("There are %d %s in %d %s."):format(n * u[3] + u[3] // 2 + 1, u[1], n,
                                                          n == 1 and u[2]:sub(1, -2) or u[2]) }
   end,
   function() -- days and months
      local list = rand(2) == 1 and days or months
      local i = rand(#list)
      local what = list == days and "day" or "month"
      local nxt = list[i % #list + 1]
      return { q = ("Which %s comes after %s?"):format(what, list[i]),
               good = ("The %s after %s is %s."):format(what, list[i], nxt),
               wrong = ("The %s after %s is %s."):format(what, list[i], other(list, nxt)) }
   end,
   function() -- spelling backwards
      local w = pick(words)
      local bad = w:sub(2) .. w:sub(1, 1)
      return { q = ("How do you spell \"%s\" backwards?"):format(w),
               good = ("\"%s\" spelled backwards is \"%s\"."):format(w, w:reverse()),
               wrong = ("\"%s\" spelled backwards is \"%s\"."):format(w, bad) }
   end,
   function() -- letter counts
      local w = pick(words)
      return { q = ("How many letters are in the word \"%s\"?"):format(w),
               good = ("The word \"%s\" has %d letters."):format(w, #w),
               wrong = ("The word \"%s\" has %d letters."):format(w, #w + rand(3)) }
   end,
   function() -- sorting
      local n, xs = 3 + rand(3), {}
      for i = 1, n do xs[i] = rand(50) end
      local s = table.move(xs, 1, n, 1, {})
      table.sort(s)
      local w = table.move(s, 1, n, 1, {})
      w[1], w[n] = w[n], w[1]
      return { q = ("Can you sort these numbers from smallest to largest: %s?"):format(table.concat(xs, ", ")),
               good = ("Here they are in order: %s."):format(table.concat(s, ", ")),
               wrong = ("Here they are in order: %s."):format(table.concat(w, ", ")) }
   end,
   function() -- how-to
      local h = pick(howto)
      local q = pick { "How do I %s?", "What is the best way to %s?", "Can you tell me how to %s?" }
      return { q = q:format(h[1]), good = h[2], wrong = h[3] }
   end,
}

local function question()
   local x = skills[rand(#skills)]()
   if x.wrong == x.good then x.wrong = nil end
   return x
end

-- A question of the split (test or not).
local function question_in(test)
   while true do
      local x = question()
      if is_test(x.q) == test then return x end
   end
end

-- ---- dialogues ---------------------------------------------------------------------

local greetings = {
   { "Hi!", "Hello! How can I help you today?" },
   { "Hello there.", "Hi! What would you like to know?" },
   { "Hey, are you there?", "Yes, I'm here. What do you need?" },
   { "Good morning!", "Good morning! What can I do for you?" },
   { "Can you help me with something?", "Of course. What do you need help with?" },
   { "I have a few questions.", "Sure, go ahead and ask." },
}
local follow = { "", "", "Thanks! ", "Great. ", "Okay, another one. ", "One more thing. " }

local function turn(role, text)
   return "\n\n" .. role .. ": " .. text
end

local function good_reply(x)
   return pick(good_open) .. x.good .. pick(good_close)
end

local function bad_reply(x, test)
   local kind = rand(4)
   if kind == 4 and not x.wrong then kind = rand(3) end
   if kind == 1 then return pick(rude) end
   if kind == 2 then return pick(evasive) end
   if kind == 3 then
      local y
      repeat y = question_in(test) until y.good ~= x.good
      return pick(good_open) .. y.good
   end
   return pick(good_open) .. x.wrong
end

-- One row: the shared earlier turns, the last question, two replies.
local function dialogue(test)
   local parts, n, asked = {}, rand(opts.turns), false
   for k = 1, n - 1 do
      if k == 1 and rand(2) == 1 then
         local g = pick(greetings)
         parts[#parts + 1] = turn("Human", g[1]) .. turn("Assistant", g[2])
      else
         local y = question()
         parts[#parts + 1] = turn("Human", (asked and pick(follow) or "") .. y.q) ..
            turn("Assistant", good_reply(y))
         asked = true
      end
   end
   local x = question_in(test)
   local prompt = table.concat(parts) .. turn("Human", (asked and pick(follow) or "") .. x.q) ..
      "\n\nAssistant:"
   return { prompt = prompt, chosen = " " .. good_reply(x), rejected = " " .. bad_reply(x, test),
            q = x.q }
end

local function row(d)
   return { chosen = d.prompt .. d.chosen, rejected = d.prompt .. d.rejected }
end

-- The dirty rows, made from clean dialogues d1, d2 (of the split).
local dirty = {
   function(d) -- the rejected side has other earlier turns: prompt_mismatch
      local r = row(d)
      r.rejected = turn("Human", "Hi!") .. turn("Assistant", "Go away.") .. d.prompt .. d.rejected
      return r
   end,
   function(d) -- identical replies
      return { chosen = d.prompt .. d.chosen, rejected = d.prompt .. d.chosen }
   end,
   function(d) -- an empty chosen reply
      return { chosen = d.prompt, rejected = d.prompt .. d.rejected }
   end,
   function(d) -- two human turns in a row
      local p = turn("Human", "Hello?") .. d.prompt
      return { chosen = p .. d.chosen, rejected = p .. d.rejected }
   end,
   function(d) -- an empty human turn
      local p = turn("Human", "") .. turn("Assistant", "Hello! How can I help you today?") .. d.prompt
      return { chosen = p .. d.chosen, rejected = p .. d.rejected }
   end,
   function(d) -- the rejected side goes on for another exchange
      local r = row(d)
      r.rejected = r.rejected .. turn("Human", "What?") .. turn("Assistant", "Never mind.")
      return r
   end,
   function(d) -- both sides end on a human turn
      local tail = turn("Human", "Thanks, bye.")
      return { chosen = d.prompt .. d.chosen .. tail, rejected = d.prompt .. d.rejected .. tail }
   end,
   "duplicate", -- a repeat of an earlier row
}

local function make_split(n, test)
   local rows, seen, clean = {}, {}, {}
   local ndirty = opts.dirty == "true" and math.min(#dirty, n // 50) or 0
   local slots = {}
   for k = 1, ndirty do slots[(k * n) // (ndirty + 1)] = dirty[k] end
   while #rows < n do
      local slot = slots[#rows + 1]
      if slot == "duplicate" then
         rows[#rows + 1] = rows[clean[rand(#clean)]]
      else
         local d = dialogue(test)
         local r = row(d)
         local set = seen[r.chosen] or {}
         seen[r.chosen] = set
         if not set[d.rejected] then
            set[d.rejected] = true
            rows[#rows + 1] = slot and slot(d) or r
            if not slot then clean[#clean + 1] = #rows end
         end
      end
   end
   return rows
end

-- ---- write -------------------------------------------------------------------------

local data = dpo and dpo.data or require("dpo.data")
local lfs = require "lfs"
local dir = ""
for part in opts.out:gmatch("[^/]+") do
   dir = (dir == "" and opts.out:sub(1, 1) ~= "/") and part or dir .. "/" .. part
   if not lfs.attributes(dir) then assert(lfs.mkdir(dir)) end
end
for _, split in ipairs { { "train", opts.train, false }, { "test", opts.test, true } } do
   if split[2] > 0 then
      local path = opts.out .. "/" .. split[1] .. ".jsonl.gz"
      local rows = make_split(split[2], split[3])
      assert(data.write_jsonl(path, rows, { keys = { "chosen", "rejected" } }))
      print(("%s: %d rows"):format(path, #rows))
   end
end
