-- dpo.jinja (lua/dpo/jinja.lua, lua/dpo/jinja/) against Python's jinja2 configured as
-- transformers configures it (tests/chat/render.py, run by
-- tests/chat/reference.lua): the real chat templates of Qwen3, Llama 3 and
-- Gemma 3 (tests/fixtures/chat, from their npm packages), templates in the
-- style of SmolLM2, Llama 2, Mistral and Llama 3.1, and a template for each
-- construct, over conversations with and without a system message, with
-- add_generation_prompt on and off, multi-turn, with tool-like variables.
-- Every output must be the same bytes; where jinja2 raises, dpo.jinja must
-- raise too (raise_exception's message must be the same). Constructs this
-- interpreter does not render must be errors naming the line and construct.
local h = dofile("tests/spec/helper.lua")
local ref = dofile("tests/chat/reference.lua")
local jinja = require "dpo.jinja"
local none, L, D = jinja.none, jinja.list, jinja.dict

-- ---- construct cases ----------------------------------------------------------------------

local CASES = {}
local function case(name, template, vars)
   CASES[#CASES + 1] = { name = name, template = template, vars = vars or {} }
end

local msgs = {
   { role = "user", content = "Hi there" },
   { role = "assistant", content = "Hello! How can I help?" },
   { role = "user", content = "What is 2+2?" },
}

-- text, output, comments, whitespace control
case("plain text", "Hello, world!")
case("text with a trailing newline", "a\nb\n")
case("text with two trailing newlines", "a\n\n")
case("crlf text", "a\r\nb\rc\r\n")
case("output", "{{ x }} and {{ y }}", { x = "one", y = 2 })
case("comment", "a{# a comment #}b\n{# another #}\nc")
case("comment with dashes", "a  {#- c -#}  b")
case("whitespace control", "a  {{- x -}}  b\n  {%- if true -%}  c  {%- endif -%}  d", { x = "X" })
case("plus control", "a\n  {%+ if true %}x{% endif +%}\nb")
case("trim and lstrip", "<ul>\n  {% for i in xs %}\n    <li>{{ i }}</li>\n  {% endfor %}\n</ul>\n",
     { xs = { 1, 2, 3 } })
case("lstrip at the start", "   {% if true %}x{% endif %}")
case("lstrip after output", "{{ 1 }}   {% if true %}x{% endif %}")
case("lstrip not for output", "a\n   {{ 1 }}\n   {% if true %}\nyes\n   {% endif %}\n")
case("lstrip with a tab", "a\n\t {% if 1 %}b{% endif %}")
case("trim after comment", "a\n{# c #}\nb")
case("raw", "{% raw %}{{ not a tag }}{% endraw %}!")
case("raw with control", "a {%- raw -%} {{x}} {%- endraw -%} b")
case("newline in tag", "{{\n x\n }}|{%\nif x\n%}y{% endif %}", { x = 1 })
-- if / elif / else
case("if elif else", "{% for v in [0, 1, 2, 3] %}{% if v == 0 %}zero{% elif v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %} {% endfor %}")
case("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, {'a': 1}, none, 0.0, 0.5, true, false] %}{{ 'T' if v else 'F' }}{% endfor %}")
case("undefined is false", "{% if nope %}y{% else %}n{% endif %}{% if not nope %}!{% endif %}")
-- for
case("loop variables", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}")
case("loop previtem nextitem", "{% for x in [1, 2, 3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}|{% endfor %}")
case("loop cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}")
case("for else", "{% for x in [] %}{{ x }}{% else %}empty{% endfor %}{% for x in nope %}x{% else %}none{% endfor %}")
case("for over dict", "{% for k in d %}{{ k }}={{ d[k] }};{% endfor %}", { d = D({ b = 1, a = 2 }, { "b", "a" }) })
case("for items", "{% for k, v in d.items() %}{{ k }}:{{ v }} {% endfor %}", { d = { x = 1, y = "two" } })
case("for tuple unpacking", "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}{% for (a, b) in [(5, 6)] %}{{ a * b }}{% endfor %}")
case("for with if", "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }} {% endfor %}", { messages = msgs })
case("nested loops", "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|{% endfor %}")
case("break continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}")
case("loop scope", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }};{% endfor %}{{ x }}")
case("loop over string", "{% for c in 'héllo' %}[{{ c }}]{% endfor %}")
case("range", "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }}")
-- set, namespace
case("set", "{% set a = 1 %}{% set b, c = 'x', 'y' %}{{ a }}{{ b }}{{ c }}")
case("set block", "{% set s %}  hello {{ 1 + 1 }}  {% endset %}[{{ s }}]")
case("set block filtered", "{% set s | trim | upper %}  hello  {% endset %}[{{ s }}]")
case("namespace", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.found }} {{ ns.n }}", { messages = msgs })
case("set in if", "{% if true %}{% set x = 5 %}{% endif %}{{ x }}")
-- macros and call
case("macro", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}")
case("macro varargs kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}")
case("call block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 }}{% endcall %}")
case("call block with args", "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}<{{ x }}>{% endcall %}")
case("filter block", "{% filter upper %}hello {{ 'x' }}{% endfilter %}")
case("generation block", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}", { messages = msgs })
-- filters
case("trim", "[{{ '  a b \n'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ '\u{3000}a\u{a0}'|trim }}]")
case("tojson", "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ l|tojson(separators=(',', ':')) }}|{{ d|tojson(sort_keys=true) }}",
     { d = D({ z = 1, a = { 1.5, "é\"\\\n\t\1", none, true }, m = D({}) }, { "z", "a", "m" }), l = { 1, 2, { x = 3 } } })
case("tojson ensure_ascii", "{{ 'é😀\x7f'|tojson(ensure_ascii=true) }} {{ 'é😀'|tojson }}")
case("tojson numbers", "{{ [1, 1.0, 0.1, 1e20, 1.5e-7, -0.0, 123456789.125]|tojson }}")
case("tojson indent string", "{{ {'a': [1, {'b': []}]}|tojson(indent='\t') }}")
case("length", "{{ 'héllo'|length }} {{ [1, 2]|length }} {{ {'a': 1}|length }} {{ nope|length }} {{ [1,2]|count }}")
case("default", "{{ nope|default('d') }} {{ x|default('d') }} {{ ''|default('e', true) }} {{ ''|d('f') }} {{ none|default('g') }}", { x = "x" })
case("case filters", "{{ 'hello World'|upper }} {{ 'Hello'|lower }} {{ 'hello big-world (x)y'|title }} {{ 'hELLO wORLD'|capitalize }}")
case("replace", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', '-') }}")
case("join", "{{ [1, 2, 3]|join(', ') }} {{ 'abc'|join('-') }} {{ messages|join('|', attribute='role') }}", { messages = msgs })
case("first last", "{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} {{ 'abc'|last }} [{{ []|first }}]")
case("list items", "{{ 'ab'|list }} {{ {'a': 1, 'b': 2}|list }} {{ {'a': 1}|items|list }} {% for k, v in {'x': 1}|items %}{{ k }}{{ v }}{% endfor %}")
case("string int float", "{{ 1|string }}{{ [1]|string }} {{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '0x1A'|int(0, 16) }} {{ '2'|float }} {{ 'a'|float }} {{ 1|float }} {{ true|int }}")
case("abs round", "{{ -3|abs }} {{ (-3.5)|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(0, 'floor') }} {{ 7|round }}")
case("selectattr rejectattr", "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} {{ messages|rejectattr('role', 'eq', 'user')|list|length }} {{ [{'a': 0}, {'a': 1}]|selectattr('a')|list }}", { messages = msgs })
case("select reject", "{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }}")
case("map", "{{ ['a', 'b']|map('upper')|list }} {{ messages|map(attribute='role')|join(',') }} {{ [{'a': 1}, {}]|map(attribute='a', default=0)|list }}", { messages = msgs })
case("reverse", "{{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }} {% for m in messages|reverse %}{{ m.role }} {% endfor %}", { messages = msgs })
case("unique", "{{ [1, 2, 1, 3, 2]|unique|list }} {{ ['a', 'A', 'b']|unique|list }} {{ ['a', 'A']|unique(true)|list }}")
case("indent", "[{{ 'a\nb\n\nc'|indent }}][{{ 'a\nb'|indent(2, true) }}][{{ 'a\n\nb'|indent('> ', blank=true) }}]")
case("safe escape", "{{ '<b>'|safe }} {{ '<a href=\"x\">&\\'</a>'|e }} {{ '<i>'|escape }} {{ ('<x>'|e) + '<y>' }}")
case("sum min max sort", "{{ [1, 2, 3]|sum }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ ['b', 'A', 'c']|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ messages|sort(attribute='role')|map(attribute='role')|list }}", { messages = msgs })
case("dictsort", "{{ {'b': 1, 'a': 2}|dictsort }}")
-- tests
case("tests", "{{ x is defined }}{{ nope is defined }}{{ nope is undefined }}{{ n is none }}{{ s is string }}{{ 1 is number }}{{ 1.5 is number }}{{ true is number }}{{ 1 is integer }}{{ 1.0 is integer }}{{ 1.0 is float }}{{ d is mapping }}{{ l is mapping }}{{ l is iterable }}{{ s is iterable }}{{ 1 is iterable }}{{ l is sequence }}{{ d is sequence }}{{ true is boolean }}{{ 1 is boolean }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 2 is even }}{{ 3 is odd }}{{ 'a' is equalto 'a' }}{{ 1 is eq 1.0 }}{{ 'a' is in 'cat' }}{{ 2 is in [1, 2] }}{{ 6 is divisibleby 3 }}{{ x is not none }}{{ nope is iterable }}{{ nope is sequence }}",
     { x = 1, n = none, s = "s", d = { a = 1 }, l = { 1 } })
case("test without parentheses", "{{ 'x' if messages[0].content is string else 'y' }}{{ messages is not string }}", { messages = msgs })
-- operators
case("arithmetic", "{{ 1 + 2 }} {{ 1 + 2.0 }} {{ 7 - 10 }} {{ 3 * 4 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7.5 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 8 }} {{ 2 ** -1 }} {{ 2 ** 0.5 }} {{ -2 }} {{ - (3) }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ true + 1 }}")
case("concat", "{{ 'a' ~ 1 ~ none ~ nope ~ [1] ~ 1.0 }}")
case("string plus", "{{ 'a' + 'b' }} {{ [1] + [2, 3] }}")
case("comparisons", "{{ 1 < 2 }}{{ 2 <= 2 }}{{ 3 > 4 }}{{ 3 >= 3 }}{{ 1 == 1.0 }}{{ 'a' != 'b' }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ none == none }}{{ nope == nope }}{{ [1] == [1] }}{{ {'a': 1} == {'a': 1} }}{{ 1 == true }}")
case("logic", "{{ true and false }}{{ true or false }}{{ not true }}{{ 0 or 'x' }}{{ 1 and 'y' }}{{ '' and 'z' }}{{ none or none }}{{ not nope }}")
case("in", "{{ 'a' in 'cat' }}{{ 'x' in 'cat' }}{{ 1 in [1, 2] }}{{ 3 not in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 'v' in {'k': 'v'} }}{{ 'a' in nope }}{{ '</think>' in s }}", { s = "a</think>b" })
case("inline if", "{{ 'y' if true else 'n' }}{{ 'y' if false else 'n' }}{{ 'y' if false }}|{{ 1 if 0 else 2 if 0 else 3 }}")
case("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 * 3 ~ 4 }} {{ not 1 == 2 }} {{ 1 + 1 if true else 0 }} {{ -1|abs }} {{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }}")
-- literals
case("literals", "{{ 'single' }} {{ \"double\" }} {{ 'a' 'b' }} {{ 42 }} {{ 4.20 }} {{ 1_000 }} {{ 1e3 }} {{ 0x10 }} {{ [1, 'a', none, true, false, True, False, None] }} {{ {'k': [1, {'n': 2}]} }} {{ (1, 2) }} {{ (1,) }} {{ () }} {{ [] }} {{ {} }}")
case("escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\\"f\\x41\\u00e9\\U0001F600\\101' }}|{{ 'new\nline' }}")
case("python repr", "{{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'tab\\t', 'nl\\n', 'é', '\\x00', '\\x7f', 'a\\\\b', '\\u200b'] }}")
case("float printing", "{{ 0.1 + 0.2 }} {{ 1/3 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1.5e300 }} {{ 2.0 }} {{ 100.0 }} {{ -0.5 }} {{ 10 / 4 }} {{ 1e100 }}")
case("numbers in", "{{ x }} {{ y }} {{ x + y }} {{ [x, y] }}", { x = 3, y = 2.5 })
-- slices, attribute and item access
case("slices", "{{ l[::-1] }} {{ l[1:] }} {{ l[:-1] }} {{ l[1:3] }} {{ l[::2] }} {{ l[-2:] }} {{ l[5:] }} {{ l[3:1:-1] }} {{ s[::-1] }} {{ s[1:3] }} {{ s[-1] }} {{ s[0] }} {{ l[-1] }} {{ l[0] }}",
     { l = { 1, 2, 3, 4 }, s = "héllo" })
case("attribute and item access", "{{ m.role }} {{ m['role'] }} {{ m.nope }}|{{ m['nope'] }}|{{ l[10] }}|{{ l.0 }} {{ messages[-1].content }}", { m = msgs[1], l = { "a" }, messages = msgs })
case("missing attribute defined", "{{ m.nope is defined }} {{ m.role is defined }} {{ m.nope.deeper is defined if m.nope is defined else 'skip' }}", { m = msgs[1] })
-- methods
case("string methods", "{{ s.startswith('Hel') }}{{ s.endswith('!') }}{{ s.startswith(('x', 'H')) }}|{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.split() }}{{ 'a,b,,c'.split(',') }}{{ 'a b c'.split(' ', 1) }}|{{ s.replace('l', 'L') }}|{{ s.upper() }}{{ s.lower() }}{{ 'hello world'.title() }}{{ \"they're\".title() }}|{{ '{} and {}'.format('a', 1) }}{{ '{0}{name}'.format('z', name='n') }}|{{ ', '.join(['a', 'b']) }}|{{ s.find('l') }}{{ s.count('l') }}",
     { s = "Hello world!" })
case("split on think", "{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}", { c = "<think>\nreason\n</think>\n\nanswer" })
case("dict methods", "{{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 0) }} {% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}", { d = D({ b = 2, a = 1 }, { "b", "a" }) })
case("dict key shadowed by method", "{{ d['items'] is defined }} {{ d.items is defined }}", { d = { items = 3 } })
case("format percent", "{{ '%s-%d' % ('a', 3) }} {{ '%s' % 'x' }} {{ '100%%' % () }}")
-- globals
case("dict global", "{{ dict(a=1, b=2) }} {{ dict(a=1)|tojson }}")
case("raise_exception", "{% if x %}{{ raise_exception('x must not be set: ' ~ x) }}{% endif %}ok", { x = 5 })
case("undefined in output", "[{{ nope }}][{{ nope.attr is defined }}]")
case("undefined attribute raises", "{{ nope.attr }}")
case("undefined arithmetic raises", "{{ nope + 1 }}")
case("type error", "{{ 'a' + 1 }}")
case("division by zero", "{{ 1 / 0 }}")
case("sandbox", "{{ messages.append(1) }}", { messages = msgs })
case("strftime_now", "{{ strftime_now('%Y') | length }}")
case("lists from lua", "{{ l }} {{ e }} {{ d }}", { l = L {}, e = {}, d = D({}) })

-- more edges
case("macro sees template variables", "{% set who = 'x' %}{% macro m() %}[{{ who }}|{{ arg }}]{% endmacro %}{{ m() }}{% set who = 'y' %}{{ m() }}", { arg = "A" })
case("macro defaults from other arguments", "{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{% endmacro %}{{ m('x') }}{{ m('x', 'z') }}")
case("loop changed and depth", "{% for x in [1, 1, 2, 2, 3] %}{% if loop.changed(x) %}{{ x }}{% endif %}{{ loop.depth }}{% endfor %}")
case("unicode length and compare", "{{ '😀é'|length }} {{ 'é' > 'e' }} {{ '😀'[0] }} {{ 'aé😀'[::-1] }}")
case("split variants", "{{ ' a  b '.split() }} {{ 'a b c'.split(none, 1) }} {{ 'a,b'.split(',', -1) }} {{ ''.split() }} {{ ''.split(',') }} {{ ' a b '.split(' ') }}")
case("sameas", "{{ none is sameas none }}{{ false is sameas false }}{{ 0 is sameas false }}{{ 1 is sameas 1 }}")
case("views", "{{ 'a' in d.keys() }} {{ 1 in d.values() }} {{ d.items()|length }} {{ d.keys()|list }} {{ d.keys()|first }}", { d = { a = 1 } })
case("filters on undefined", "[{{ nope|trim }}][{{ nope|upper }}][{{ nope|list }}][{{ nope|join(',') }}][{{ nope|first }}][{{ nope|string }}][{{ nope|default }}][{{ nope|length }}][{{ nope|reverse|list }}]")
case("tojson of undefined", "{{ nope|tojson }}")
case("attribute of none", "[{{ n.x }}][{{ n.x is defined }}][{{ n['x'] }}]", { n = none })
case("none content", "{{ m.content is string }}{{ m.content is none }}{{ m.content }}", { m = { role = "assistant", content = none } })
case("tuples and dicts printed", "{{ (1, 'a', none) }} {{ {1: 'a', 'b': [1.5]} }} {{ [(1, 2)] }} {{ ('x',) }}")
case("more arithmetic", "{{ 10 / 3 * 3 }} {{ -7.5 // 2 }} {{ 7 % 2.5 }} {{ 'ab' * 0 }}[{{ 'ab' * -1 }}] {{ [1, 2, 3][1:]|length }} {{ 2 ** 62 }} {{ 1 - 0.9 }} {{ 3 * 0.1 }}")
case("percent formats", "{{ '%d' % 3.7 }} {{ '%s and %s' % (1, none) }} {{ '%r' % 'q' }}")
case("int and round edges", "{{ '  12  '|int }} {{ '1_000'|int }} {{ '-5'|int }} {{ '+5'|int }} {{ '1e3'|int }} {{ 1e-7|round(3) }} {{ 0.5|round }} {{ 1.5|round }} {{ -2.5|round }} {{ 1.25|round(1) }} {{ 2|float|round }}")
case("format filter", "{{ '%s-%s'|format('a', 1) }} {{ '%d%%'|format(50) }} {{ '%r'|format(none) }}")
case("or with lists", "{{ [] or 'x' }} {{ [0] or 'x' }} {{ {} or 'y' }} {{ '' or none }}")
case("break outside a loop", "{% break %}")
case("loop outside a loop", "{{ loop.index }}")
case("nested namespace and loop", "{% set ns = namespace(items=[]) %}{% for m in messages %}{% set ns.items = ns.items + [m.role] %}{% endfor %}{{ ns.items }}{{ ns.items|unique|list }}", { messages = msgs })
case("set tuple from list", "{% set a, b = [1, 2] %}{{ b }}{{ a }}")
case("filter with dotted name test", "{{ messages|selectattr('content', 'string')|list|length }} {{ messages|map(attribute='role')|select('in', ['user'])|list }}", { messages = msgs })
case("string escapes in repr", "{{ ['\\\\', '\\r', '\\x1b', '\\u00a0', 'é\\u0301'] }}")
case("ws control on every side", "x  \n  {{- 1 -}}  \n  {%- if 1 %}  a  {% endif -%}  \n  {#- c -#}  \n y")
case("lstrip inside for", "{% for i in [1, 2] %}\n    {% if i %}\n{{ i }}\n    {% endif %}\n{% endfor %}\n")
case("string methods with tuples", "{{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.endswith(('c',)) }} {{ 'abc'.startswith('b', 1) }}")
case("title and capitalize edges", "{{ \"o'neil mc-donald\"|title }} {{ 'ABC def'|capitalize }} {{ 'x1y z'.title() }}")

-- ---- chat cases: the real templates ----------------------------------------------------------

local cjson = require "cjson"
local function tokens_of(name)
   local t = cjson.decode(ref.fixture(name .. ".tokens.json"))
   local out = {}
   for k, v in pairs(t) do if v ~= cjson.null then out[k] = v end end
   return out
end

local SYS = { role = "system", content = "You are terse.\nAnswer in one line." }
local CONVERSATIONS = {
   { name = "one user turn", messages = { { role = "user", content = "Hello!" } } },
   { name = "system + user", messages = { SYS, { role = "user", content = "Hello!" } } },
   { name = "multi-turn", messages = msgs },
   { name = "system + multi-turn", messages = { SYS, msgs[1], msgs[2], msgs[3],
      { role = "assistant", content = "  4, of course.  " } } },
   { name = "unicode and specials", messages = { { role = "user", content = "Ünïcödé 😀 <|im_end|> {{ x }} \n\n" },
      { role = "assistant", content = "ok\n" } } },
   { name = "thinking", messages = { { role = "user", content = "Think." },
      { role = "assistant", content = "<think>\nstep 1\n</think>\n\nDone." } } },
   { name = "content parts", messages = { { role = "user", content = { { type = "text", text = "part one" },
      { type = "text", text = " and two" } } } } },
}

local TEMPLATES = { "qwen3", "llama3", "gemma3", "smollm2", "llama2", "mistral", "llama31_tools" }
local SPECIAL = {
   qwen3 = tokens_of("qwen3"), llama3 = tokens_of("llama3"), gemma3 = tokens_of("gemma3"),
   smollm2 = { bos_token = "<|im_start|>", eos_token = "<|im_end|>", pad_token = "<|im_end|>" },
   llama2 = { bos_token = "<s>", eos_token = "</s>", unk_token = "<unk>" },
   mistral = { bos_token = "<s>", eos_token = "</s>", unk_token = "<unk>" },
   llama31_tools = { bos_token = "<|begin_of_text|>", eos_token = "<|eot_id|>" },
}

local TOOLS = {
   { type = "function", ["function"] = D({ name = "get_weather", description = "Weather of a city",
      parameters = D({ type = "object", properties = { city = { type = "string", description = "The city" } },
                       required = { "city" } }, { "type", "properties", "required" }) },
      { "name", "description", "parameters" }) },
}
local TOOL_TURNS = {
   { role = "user", content = "Weather in Paris?" },
   { role = "assistant", content = "", tool_calls = { { id = "abcdefghi", type = "function",
      ["function"] = D({ name = "get_weather", arguments = { city = "Paris" } }, { "name", "arguments" }) } } },
   { role = "tool", content = "22 C", tool_call_id = "abcdefghi" },
   { role = "assistant", content = "It is 22 C." },
}

local CHAT = {}
for _, tname in ipairs(TEMPLATES) do
   local template = ref.fixture(tname .. ".jinja")
   for _, conv in ipairs(CONVERSATIONS) do
      for _, gen in ipairs { false, true } do
         CHAT[#CHAT + 1] = {
            name = string.format("%s: %s, add_generation_prompt=%s", tname, conv.name, tostring(gen)),
            template = template,
            chat = { messages = conv.messages, add_generation_prompt = gen, special = SPECIAL[tname] },
         }
      end
   end
   CHAT[#CHAT + 1] = {
      name = tname .. ": tools and tool calls",
      template = template,
      chat = { messages = TOOL_TURNS, add_generation_prompt = true, special = SPECIAL[tname], tools = TOOLS },
   }
   CHAT[#CHAT + 1] = {
      name = tname .. ": extra variables",
      template = template,
      chat = { messages = msgs, add_generation_prompt = true, special = SPECIAL[tname],
               extra = { enable_thinking = false, date_string = "01 Jan 2025", tools_in_user_message = false } },
   }
   CHAT[#CHAT + 1] = {
      name = tname .. ": roles out of order",
      template = template,
      chat = { messages = { msgs[2], msgs[1] }, add_generation_prompt = false, special = SPECIAL[tname] },
   }
end

-- The variables apply_chat_template gives a template (as transformers does).
local function chat_vars(chat)
   local vars = { messages = chat.messages, tools = chat.tools or none, documents = none,
                  add_generation_prompt = chat.add_generation_prompt }
   for k, v in pairs(chat.special or {}) do vars[k] = v end
   for k, v in pairs(chat.extra or {}) do vars[k] = v end
   return vars
end

-- ---- the comparison --------------------------------------------------------------------------

local ALL = {}
for _, c in ipairs(CASES) do ALL[#ALL + 1] = c end
for _, c in ipairs(CHAT) do ALL[#ALL + 1] = c end

local results
local function reference(i)
   results = results or ref.render(ALL)
   return results[i]
end

local function show(s) return string.format("%q", s) end

describe("dpo.jinja renders as transformers' jinja2 does", function()
   for i, c in ipairs(ALL) do
      it(c.name, function()
         local want = reference(i)
         local vars = c.chat and chat_vars(c.chat) or c.vars
         local ok, got = pcall(function() return jinja.compile(c.template, c.name):render(vars) end)
         if want.ok then
            if not ok then error("jinja2 renders " .. show(want.out) .. " but dpo.jinja raised: " .. tostring(got), 0) end
            assert.are.equal(want.out, got)
         else
            if ok then
               error("jinja2 raised (" .. want.type .. ": " .. want.error .. ") but dpo.jinja rendered " .. show(got), 0)
            end
            if want.type == "TemplateError" then
               -- raise_exception: the message as it is
               assert.are.equal(want.error, got)
            end
         end
      end)
   end
end)

describe("dpo.jinja's own errors", function()
   local function err(template, vars)
      local ok, e = pcall(function() return jinja.compile(template, "t"):render(vars or {}) end)
      assert.is_false(ok, "expected an error")
      return e
   end

   it("name the line and the construct", function()
      assert.are.equal("t:3: unsupported construct '{% include %}'", err("a\nb\n{% include 'x.j2' %}"))
      assert.are.equal("t:2: unsupported construct '{% extends %}'", err("\n{% extends 'base' %}"))
      assert.are.equal("t:1: unsupported construct '{% with %}'", err("{% with x = 1 %}{% endwith %}"))
      assert.are.equal("t:1: unsupported construct: unknown tag '{% frobnicate %}'", err("{% frobnicate %}"))
      assert.are.equal("t:2: unsupported filter 'frobnicate'", err("\n{{ x | frobnicate }}"))
      assert.are.equal("t:1: unsupported test 'frobnicate'", err("{{ x is frobnicate }}"))
      assert.matches("^t:2: unsupported: title of text with non%-ASCII", err("x\n{{ 'élan'|title }}"))
      assert.matches("^t:1: unsupported: printing a generator", err("{{ [1]|select }}"))
      assert.matches("^t:1: unsupported: a subscript with 2 parts", err("{{ x[1, 2] }}"))
   end)

   it("name the line of syntax and runtime faults", function()
      assert.matches("^t:1: unexpected end of template: looking for 'else' or 'endfor'", err("{% for x in y %}\n"))
      assert.matches("^t:1: unexpected '%)'", err("{{ (1)) }}"))
      assert.are.equal("t:2: 'nope' is undefined", err("a\n{{ nope.x }}"))
      assert.are.equal("t:1: 'dict object' has no attribute 'x'", err("{{ d.x.y }}", { d = { a = 1 } }))
      assert.are.equal("t:1: division by zero", err("{{ 1 / 0 }}"))
      assert.matches("^t:1: Missing end of comment tag", err("{# never closed"))
   end)

   it("raise_exception raises its message unchanged", function()
      assert.are.equal("Conversation roles must alternate", err("{{ raise_exception('Conversation roles must alternate') }}"))
   end)

   it("check their arguments", function()
      h.errors(function() jinja.compile(42) end, "bad argument #1 to 'compile'", true)
      h.errors(function() jinja.compile("x"):render(3) end, "bad argument #1 to 'render'", true)
      h.errors(function() jinja.render("{{ f }}", { f = coroutine.create(print) }) end, "thread cannot be a template value", true)
      local t = {}
      t.self = t
      h.errors(function() jinja.render("{{ t }}", { t = t }) end, "nested more than 100 deep", true)
   end)

   it("tojson from Lua", function()
      assert.are.equal('{"a": [1, 2.0, null]}', jinja.tojson({ a = { 1, 2.0, none } }))
      assert.are.equal('{\n  "a": 1\n}', jinja.tojson({ a = 1 }, { indent = 2 }))
      assert.are.equal('"\\u00e9"', jinja.tojson("é", { ensure_ascii = true }))
   end)
end)
