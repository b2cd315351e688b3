-- dpo.report: a run's report, one self-contained HTML file (inline SVG and
-- CSS; no script, no font or image from the network).
--
--   dpo.report.write(path, opts) -> path      (written atomically)
--   dpo.report.html(opts) -> string
--   opts:
--     title      "dpolua run"
--     subtitle   a line under the title (the command, the date)
--     records    the metrics records of the run (run.records, or
--                dpo.log.read("runs/NAME/metrics.jsonl"))
--     table      the final table: {columns = {"", "SFT", "DPO"},
--                rows = {{"reward accuracy", 0.5, 0.9}, ...}, caption = "..."}
--                (numbers are printed with 4 significant digits; a row may
--                hold strings)
--     samples    generations: a list of {prompt, policy, reference, chosen}
--                (dpo.eval.samples), shown as policy_name / ref_name
--     policy_name, ref_name   ["policy", "reference"]
--     facts      a list of {label, value} shown under the title (data, model,
--                time, ...)
--     config     a list of "name=value" strings (the options of the run)
--
-- The plots share one x axis, the run's global step, with the phases (SFT,
-- DPO) shaded and named: loss, reward accuracy, reward margin, chosen and
-- rejected rewards, log-probs, learning rate, beta and gradient norm; train
-- values are solid lines, evaluations dashed lines with dots.
-- report.chart(spec, records) -> one SVG (spec: {title, series = {{key =,
-- label =, color =, eval = bool}}, y_min, y_max}) for other plots.
local core = require "dpo.core"
local check = require "dpo.check"
local last_turn = require("dpo.eval").last_turn

local report = {}

local format = string.format

-- ---- argument checks ---------------------------------------------------------------

local THIS = debug.getinfo(1, "S").source

-- Raise "dpo.report.<fname>: msg" at the first caller outside this file.
local function bad(fname, msg, ...)
   check.raise(THIS, format("dpo.report.%s: " .. msg, fname, ...))
end

-- v must be nil or of type ty.
local function check_type(fname, what, v, ty)
   if v ~= nil and type(v) ~= ty then bad(fname, "%s must be a %s, got %s", what, ty, type(v)) end
end

-- v must be nil or a list of tables (or of ty).
local function check_list(fname, what, v, ty)
   check_type(fname, what, v, "table")
   for i, x in ipairs(v or {}) do
      if type(x) ~= (ty or "table") then
         bad(fname, "%s[%d] must be a %s, got %s", what, i, ty or "table", type(x))
      end
   end
end

local function check_spec(fname, spec)
   if type(spec) ~= "table" then bad(fname, "a chart spec must be a table, got %s", type(spec)) end
   check_list(fname, "spec.series", spec.series)
   if spec.series == nil then bad(fname, "a chart spec needs series = {{key =, label =}, ...}") end
   for i, se in ipairs(spec.series) do
      if type(se.key) ~= "string" then bad(fname, "spec.series[%d].key must be a string", i) end
   end
   for _, k in ipairs { "y_min", "y_max" } do
      local v = spec[k]
      if v ~= nil and (type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge) then
         bad(fname, "spec.%s must be a finite number, got %s", k, tostring(v))
      end
   end
end

local function check_table(fname, what, t)
   if type(t) ~= "table" then bad(fname, "%s must be a table {columns =, rows =}, got %s", what, type(t)) end
   check_type(fname, what .. ".columns", t.columns, "table")
   for i, c in ipairs(t.columns or {}) do
      if type(c) ~= "string" and type(c) ~= "number" then
         bad(fname, "%s.columns[%d] must be a string, got %s", what, i, type(c))
      end
   end
   check_list(fname, what .. ".rows", t.rows)
end

local function esc(s)
   return (tostring(s):gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                         ['"'] = "&quot;" }))
end

local function finite(x)
   return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

-- A number in at most 4 significant digits.
local function num(v)
   if type(v) ~= "number" then return tostring(v) end
   if v ~= v then return "nan" end
   if math.type(v) == "integer" then return tostring(v) end
   local a = math.abs(v)
   if a == 0 then return "0" end
   if a >= 1e5 or a < 1e-3 then return format("%.3e", v) end
   return format("%.4g", v)
end
report.num = num

-- ---- axes --------------------------------------------------------------------------

-- Round ticks (1, 2, 5 x 10^k) covering [lo, hi].
local function ticks(lo, hi, n)
   if hi <= lo then
      local d = math.abs(lo) > 0 and math.abs(lo) * 0.1 or 1
      lo, hi = lo - d, hi + d
   end
   local raw = (hi - lo) / (n or 5)
   local mag = 10 ^ math.floor(math.log(raw, 10))
   local step = mag
   for _, m in ipairs{ 1, 2, 2.5, 5, 10 } do
      if m * mag >= raw then
         step = m * mag
         break
      end
   end
   local first = math.floor(lo / step + 1e-9) * step
   local last = math.ceil(hi / step - 1e-9) * step
   local out = {}
   local k = 0
   while first + k * step <= last + step * 1e-6 do
      local v = first + k * step
      if math.abs(v) < step * 1e-9 then v = 0 end
      out[#out + 1] = v
      k = k + 1
   end
   return out, first, last, step
end

local function tick_label(v, step)
   if v == 0 then return "0" end
   local a = math.abs(v)
   if a >= 1e5 or a < 1e-3 then
      local s = format("%.1e", v):gsub("%.0e", "e"):gsub("e%+?(%-?)0*(%d)", "e%1%2")
      return s
   end
   local decimals = math.max(0, -math.floor(math.log(step, 10) + 1e-9))
   if step * 10 ^ decimals % 1 > 1e-6 then decimals = decimals + 1 end
   return format("%." .. decimals .. "f", v)
end

-- ---- one chart ------------------------------------------------------------------------

local W, H = 560, 250
local ML, MR, MT, MB = 62, 14, 20, 34

-- The phases of the records: list of {name, lo, hi} in step order.
local function phases_of(records)
   local list, by = {}, {}
   for _, r in ipairs(records) do
      if r.phase and finite(r.step) then
         local p = by[r.phase]
         if not p then
            p = { name = r.phase, lo = r.step, hi = r.step }
            by[r.phase] = p
            list[#list + 1] = p
         end
         p.lo, p.hi = math.min(p.lo, r.step), math.max(p.hi, r.step)
      end
   end
   table.sort(list, function(a, b) return a.lo < b.lo end)
   return list
end

-- The points of one series: segments (one per phase) of {x, y}.
local function series_points(records, key)
   local segs, by = {}, {}
   for _, r in ipairs(records) do
      local v = r[key]
      if finite(v) and finite(r.step) then
         local ph = r.phase or ""
         local seg = by[ph]
         if not seg then
            seg = {}
            by[ph] = seg
            segs[#segs + 1] = seg
         end
         seg[#seg + 1] = { r.step, v }
      end
   end
   return segs
end

local PHASE_FILL = { "#eef4fb", "#fbf1e8", "#eef8ef", "#f6eef8" }

function report.chart(spec, records, opts)
   check_spec("chart", spec)
   if type(records) ~= "table" then bad("chart", "records must be a list, got %s", type(records)) end
   check_list("chart", "records", records)
   check_type("chart", "options", opts, "table")
   opts = opts or {}
   for k in pairs(opts) do
      if k ~= "phases" then bad("chart", "unknown option '%s' (options: phases)", tostring(k)) end
   end
   check_list("chart", "phases", opts.phases)
   local all = {}
   local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
   for _, s in ipairs(spec.series) do
      local segs = series_points(records, s.key)
      all[#all + 1] = { spec = s, segs = segs }
      for _, seg in ipairs(segs) do
         for _, p in ipairs(seg) do
            xmin, xmax = math.min(xmin, p[1]), math.max(xmax, p[1])
            ymin, ymax = math.min(ymin, p[2]), math.max(ymax, p[2])
         end
      end
   end
   if xmin == math.huge then return nil end
   local phases = opts.phases or phases_of(records)
   for _, p in ipairs(phases) do
      xmin, xmax = math.min(xmin, p.lo), math.max(xmax, p.hi)
   end
   -- the data's range, widened to the spec's bounds, plus a little room
   if spec.y_min then ymin = math.min(ymin, spec.y_min) end
   if spec.y_max then ymax = math.max(ymax, spec.y_max) end
   if spec.zero and ymin > 0 then ymin = 0 end
   local pad = (ymax - ymin) * 0.04
   if ymin ~= spec.y_min and ymin ~= 0 then
      -- values that are never negative keep their axis at 0 or above
      ymin = ymin >= 0 and math.max(0, ymin - pad) or ymin - pad
   end
   if ymax ~= spec.y_max and ymax ~= 0 then ymax = ymax + pad end
   local yt, y0, y1, ystep = ticks(ymin, ymax, 5)
   if xmax <= xmin then xmax = xmin + 1 end
   local xt = ticks(xmin, xmax, 6)
   local pw, ph = W - ML - MR, H - MT - MB
   local function X(x) return ML + (x - xmin) / (xmax - xmin) * pw end
   local function Y(y) return MT + ph - (y - y0) / (y1 - y0) * ph end
   local out = {}
   local function add(...) out[#out + 1] = format(...) end
   add('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" ' ..
       'role="img" aria-label="%s">', W, H, W, H, esc(spec.title))
   -- phases
   for i, p in ipairs(phases) do
      local x0 = X(p.lo)
      local x1 = phases[i + 1] and X(phases[i + 1].lo) or X(xmax)
      if i == 1 then x0 = ML end
      add('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>', x0, MT, math.max(x1 - x0, 0),
          ph, PHASE_FILL[(i - 1) % #PHASE_FILL + 1])
      add('<text x="%.1f" y="%d" class="phase">%s</text>', x0 + 4, MT - 6, esc(p.name:upper()))
      if i > 1 then
         add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="divider"/>', x0, MT, x0, MT + ph)
      end
   end
   -- grid and axes
   for _, v in ipairs(yt) do
      add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>', ML, Y(v), ML + pw, Y(v))
      add('<text x="%d" y="%.1f" class="ylab">%s</text>', ML - 6, Y(v) + 4, tick_label(v, ystep))
   end
   for _, v in ipairs(xt) do
      if v >= xmin - 1e-9 and v <= xmax + 1e-9 then
         add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="tick"/>', X(v), MT + ph, X(v), MT + ph + 4)
         add('<text x="%.1f" y="%d" class="xlab">%s</text>', X(v), MT + ph + 16, tick_label(v, 1))
      end
   end
   add('<rect x="%d" y="%d" width="%d" height="%d" class="frame"/>', ML, MT, pw, ph)
   add('<text x="%.1f" y="%d" class="xlab">step</text>', ML + pw / 2, H - 3)
   -- series
   for _, s in ipairs(all) do
      local color = s.spec.color or "#1f77b4"
      for _, seg in ipairs(s.segs) do
         local pts = {}
         for i, p in ipairs(seg) do pts[i] = format("%.1f,%.1f", X(p[1]), Y(p[2])) end
         if #pts > 1 then
            add('<polyline points="%s" fill="none" stroke="%s" stroke-width="%s"%s/>',
                table.concat(pts, " "), color, s.spec.eval and "1.6" or "1.8",
                s.spec.eval and ' stroke-dasharray="5 3"' or "")
         end
         if s.spec.eval or #pts == 1 then
            for _, p in ipairs(seg) do
               add('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s at step %s: %s</title></circle>',
                   X(p[1]), Y(p[2]), color, esc(s.spec.label), num(p[1]), num(p[2]))
            end
         end
      end
   end
   add("</svg>")
   return table.concat(out, "\n"), all
end

-- ---- the page ---------------------------------------------------------------------------

local BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#1f6fb4", "#e8772e", "#2a9d5c", "#d1495b", "#7b4fa8", "#555"

report.CHARTS = {
   { title = "Loss", note = "SFT: token-mean NLL of the chosen response; DPO: the preference loss",
     series = { { key = "loss", label = "train", color = BLUE },
                { key = "eval/loss", label = "eval", color = ORANGE, eval = true } } },
   { title = "Reward accuracy", note = "pairs whose chosen reward beats the rejected one (strict)",
     y_min = 0, y_max = 1,
     series = { { key = "rewards/accuracies", label = "train", color = BLUE },
                { key = "eval/rewards/accuracies", label = "eval", color = ORANGE, eval = true } } },
   { title = "Reward margin", note = "mean of beta * (log-ratio chosen - log-ratio rejected)",
     zero = true,
     series = { { key = "rewards/margins", label = "train", color = BLUE },
                { key = "eval/rewards/margins", label = "eval", color = ORANGE, eval = true } } },
   { title = "Chosen and rejected rewards", note = "beta * (log p_policy - log p_ref), summed over the response",
     zero = true,
     series = { { key = "rewards/chosen", label = "chosen (train)", color = GREEN },
                { key = "rewards/rejected", label = "rejected (train)", color = RED },
                { key = "eval/rewards/chosen", label = "chosen (eval)", color = GREEN, eval = true },
                { key = "eval/rewards/rejected", label = "rejected (eval)", color = RED, eval = true } } },
   { title = "Log-probabilities", note = "summed log p of each response under the policy",
     series = { { key = "logps/chosen", label = "chosen (train)", color = GREEN },
                { key = "logps/rejected", label = "rejected (train)", color = RED },
                { key = "eval/logps/chosen", label = "chosen (eval)", color = GREEN, eval = true },
                { key = "eval/logps/rejected", label = "rejected (eval)", color = RED, eval = true } } },
   { title = "Learning rate", zero = true,
     series = { { key = "learning_rate", label = "learning rate", color = PURPLE } } },
   { title = "Beta", zero = true,
     series = { { key = "beta", label = "beta", color = PURPLE } } },
   { title = "Gradient norm", note = "global norm before clipping", zero = true,
     series = { { key = "grad_norm", label = "grad norm", color = GREY } } },
}

local CSS = [[
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 12px}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:8px 0 0;padding:0;list-style:none}
.facts b{color:#555;font-weight:600;margin-right:4px}
table.final{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001}
table.final th,table.final td{padding:6px 14px;border-bottom:1px solid #e5e5e5;text-align:right}
table.final th:first-child,table.final td:first-child{text-align:left}
table.final thead th{background:#f0f0f0}
caption{caption-side:bottom;text-align:left;color:#666;padding-top:6px;font-size:13px}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:18px}
@media (max-width:900px){.charts{grid-template-columns:1fr}}
.chart svg{width:100%;height:auto;display:block}
.chart{background:#fff;box-shadow:0 1px 2px #0001;padding:10px 12px}
.chart h3{font-size:15px;margin:0}.chart .note{color:#777;font-size:12px;margin:0 0 4px}
.legend{font-size:12px;color:#444;margin:2px 0 4px}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:18px;height:0;border-top:2px solid;vertical-align:middle;margin-right:4px}
.legend i.eval{border-top-style:dashed}
svg text{font:11px sans-serif;fill:#555}svg .ylab{text-anchor:end}svg .xlab{text-anchor:middle}
svg .phase{font-weight:600;fill:#8a8a8a;font-size:11px}
svg .grid{stroke:#e8e8e8}svg .tick{stroke:#999}svg .frame{fill:none;stroke:#bbb}
svg .divider{stroke:#aaa;stroke-dasharray:3 3}
.sample{background:#fff;box-shadow:0 1px 2px #0001;padding:10px 14px;margin:0 0 12px}
.sample .q{color:#333;margin:0 0 6px;white-space:pre-wrap}
.sample table{border-collapse:collapse;width:100%}
.sample td{vertical-align:top;padding:3px 8px;border-top:1px solid #eee;white-space:pre-wrap}
.sample td:first-child{width:110px;color:#666;font-weight:600;white-space:nowrap}
pre.config{background:#fff;box-shadow:0 1px 2px #0001;padding:10px 14px;font-size:12px;columns:2;white-space:pre-wrap}
.empty{color:#999;font-style:italic}
]]

local function table_html(t)
   local out = { '<table class="final">' }
   if t.caption then out[#out + 1] = "<caption>" .. esc(t.caption) .. "</caption>" end
   if t.columns then
      local cells = {}
      for i, c in ipairs(t.columns) do cells[i] = "<th>" .. esc(c) .. "</th>" end
      out[#out + 1] = "<thead><tr>" .. table.concat(cells) .. "</tr></thead>"
   end
   out[#out + 1] = "<tbody>"
   for _, row in ipairs(t.rows or {}) do
      local cells = {}
      for i, v in ipairs(row) do
         local text = type(v) == "number" and num(v) or esc(v)
         cells[i] = (i == 1 and "<th>" or "<td>") .. text .. (i == 1 and "</th>" or "</td>")
      end
      out[#out + 1] = "<tr>" .. table.concat(cells) .. "</tr>"
   end
   out[#out + 1] = "</tbody></table>"
   return table.concat(out, "\n")
end

-- report.text_table(t) -> the final table as aligned text (for a terminal)
function report.text_table(t)
   check_table("text_table", "t", t)
   local rows = {}
   if t.columns then rows[1] = t.columns end
   for _, r in ipairs(t.rows or {}) do rows[#rows + 1] = r end
   local width = {}
   local cells = {}
   for i, r in ipairs(rows) do
      cells[i] = {}
      for j, v in ipairs(r) do
         local s = type(v) == "number" and num(v) or tostring(v)
         cells[i][j] = s
         width[j] = math.max(width[j] or 0, #s)
      end
   end
   local out = {}
   for i, r in ipairs(cells) do
      local parts = {}
      for j, s in ipairs(r) do
         if j == 1 then
            parts[j] = s .. string.rep(" ", width[j] - #s)
         else
            parts[j] = string.rep(" ", width[j] - #s) .. s
         end
      end
      out[#out + 1] = table.concat(parts, "   ")
      if i == 1 and t.columns then
         local total = 0
         for j = 1, #width do total = total + width[j] + (j > 1 and 3 or 0) end
         out[#out + 1] = string.rep("-", total)
      end
   end
   if t.caption then out[#out + 1] = t.caption end
   return table.concat(out, "\n")
end

local function legend(series)
   local parts = {}
   for _, s in ipairs(series) do
      if #s.segs > 0 then
         parts[#parts + 1] = format('<span><i class="%s" style="border-color:%s"></i>%s</span>',
                                    s.spec.eval and "eval" or "", s.spec.color or BLUE, esc(s.spec.label))
      end
   end
   return '<div class="legend">' .. table.concat(parts) .. "</div>"
end

local HTML_OPTS = { title = "string", subtitle = "string", records = "list", table = "table",
                    samples = "list", policy_name = "string", ref_name = "string", facts = "list",
                    config = "strings", charts = "list", samples_title = "string" }

local function check_html_opts(fname, opts)
   check_type(fname, "options", opts, "table")
   for k, v in pairs(opts or {}) do
      local want = HTML_OPTS[k]
      if not want then
         local names = {}
         for n in pairs(HTML_OPTS) do names[#names + 1] = n end
         table.sort(names)
         bad(fname, "unknown option '%s' (options: %s)", tostring(k), table.concat(names, ", "))
      elseif want == "list" then
         check_list(fname, k, v)
      elseif want == "strings" then
         check_list(fname, k, v, "string")
      else
         check_type(fname, k, v, want)
      end
   end
   opts = opts or {}
   if opts.table then check_table(fname, "table", opts.table) end
   for _, spec in ipairs(opts.charts or {}) do check_spec(fname, spec) end
   for i, s in ipairs(opts.samples or {}) do
      if type(s.prompt) ~= "string" or type(s.policy) ~= "string" then
         bad(fname, "samples[%d] must have strings prompt and policy", i)
      end
   end
end

function report.html(opts)
   check_html_opts("html", opts)
   opts = opts or {}
   local records = opts.records or {}
   local out = {}
   local function add(s) out[#out + 1] = s end
   add("<!DOCTYPE html>")
   add('<html lang="en"><head><meta charset="utf-8">')
   add("<title>" .. esc(opts.title or "dpolua run") .. "</title>")
   add("<style>" .. CSS .. "</style></head><body><main>")
   add("<h1>" .. esc(opts.title or "dpolua run") .. "</h1>")
   if opts.subtitle then add('<p class="sub">' .. esc(opts.subtitle) .. "</p>") end
   if opts.facts and #opts.facts > 0 then
      add('<ul class="facts">')
      for _, f in ipairs(opts.facts) do
         add("<li><b>" .. esc(f[1]) .. "</b>" .. esc(type(f[2]) == "number" and num(f[2]) or f[2]) .. "</li>")
      end
      add("</ul>")
   end
   if opts.table then
      add("<h2>" .. esc(opts.table.title or "Held-out evaluation") .. "</h2>")
      add(table_html(opts.table))
   end
   add("<h2>Training curves</h2>")
   local phases = phases_of(records)
   add('<div class="charts">')
   local drawn = 0
   for _, spec in ipairs(opts.charts or report.CHARTS) do
      local svg, series = report.chart(spec, records, { phases = phases })
      if svg then
         drawn = drawn + 1
         add('<figure class="chart" style="margin:0">')
         add("<h3>" .. esc(spec.title) .. "</h3>")
         if spec.note then add('<p class="note">' .. esc(spec.note) .. "</p>") end
         add(legend(series))
         add(svg)
         add("</figure>")
      end
   end
   add("</div>")
   if drawn == 0 then add('<p class="empty">No metrics were logged.</p>') end
   if opts.samples and #opts.samples > 0 then
      add("<h2>" .. esc(opts.samples_title or "Sample generations (held-out prompts)") .. "</h2>")
      local pname, rname = opts.policy_name or "policy", opts.ref_name or "reference"
      for i, s in ipairs(opts.samples) do
         add('<div class="sample">')
         local q = last_turn(s.prompt)
         add(format('<p class="q"><b>%d. Human:</b> %s</p><table>', i, esc(q)))
         if s.reference then add("<tr><td>" .. esc(rname) .. "</td><td>" .. esc(s.reference) .. "</td></tr>") end
         add("<tr><td>" .. esc(pname) .. "</td><td>" .. esc(s.policy) .. "</td></tr>")
         if s.chosen then add("<tr><td>data: chosen</td><td>" .. esc(s.chosen) .. "</td></tr>") end
         if s.rejected then add("<tr><td>data: rejected</td><td>" .. esc(s.rejected) .. "</td></tr>") end
         add("</table></div>")
      end
   end
   if opts.config and #opts.config > 0 then
      add("<h2>Options</h2>")
      add('<pre class="config">' .. esc(table.concat(opts.config, "\n")) .. "</pre>")
   end
   add("</main></body></html>")
   return table.concat(out, "\n") .. "\n"
end

function report.write(path, opts)
   if type(path) ~= "string" then bad("write", "path must be a string, got %s", type(path)) end
   if path:find("\0", 1, true) then bad("write", "path contains a zero byte") end
   check_html_opts("write", opts)
   local ok, err = core.write_file(path, report.html(opts))
   if not ok then error("dpo.report.write: " .. err, 2) end
   return path
end

return report
