#!/usr/bin/env bash
# scripts/module-cycles.sh — checks that the modules of one crate use each other without a
# circle (issue 16: dependencies point one way, inside a crate as between crates).
#
# Usage: bash scripts/module-cycles.sh SRC_DIR [--edges]
#   SRC_DIR  a crate's src directory, e.g. crates/turnout/src
#   --edges  also print the module graph, one `module -> module` line per edge
#
# Exits 0 when the graph has no cycle, 1 when it has one (each cycle found is printed),
# 2 on a usage error. Needs only bash and awk (mawk or gawk).
#
# Nodes: one per file — `x.rs` and `x/mod.rs` are `x`, `x/y.rs` is `x::y`; `main.rs` or
# `lib.rs` is the crate root, `crate`. `src/bin/` (other crates) is left out.
# Edges, read from code outside `//` comments:
# - `crate::a::b::Item` (also inside `use crate::{a::X, b}` groups, over several lines)
#   is an edge to the longest module path it names (`a::b`); a name that is no module
#   (an item of the root, or one it re-exports) is an edge to `crate`;
# - `super::` is an edge to the parent module (`super::x::` to its child `x`); inside an
#   inline module (`mod tests { use super::*; }`) the first `super` is the file's own
#   module, so that is no edge;
# - in any module, `child::` or `self::child::` names its own submodule `child`.
# Declaring a module (`mod x;`) is no edge. The reading is textual: a `crate::` inside a
# string literal counts too, which errs on the side of reporting.
set -euo pipefail

usage() {
  echo "usage: bash scripts/module-cycles.sh SRC_DIR [--edges]" >&2
  exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
src=${1%/}
show_edges=0
if [ $# -eq 2 ]; then
  [ "$2" = "--edges" ] || usage
  show_edges=1
fi
[ -d "$src" ] || { echo "module-cycles: $src is not a directory" >&2; exit 2; }

# The crate root first: what it imports and re-exports is known before the others.
files=()
for root in "$src/lib.rs" "$src/main.rs"; do
  if [ -f "$root" ]; then files+=("$root"); fi
done
while IFS= read -r -d '' f; do
  case "$f" in "$src/lib.rs" | "$src/main.rs") continue ;; esac
  files+=("$f")
done < <(find "$src" -name '*.rs' -not -path "$src/bin/*" -print0 | sort -z)
[ "${#files[@]}" -gt 0 ] || { echo "module-cycles: no .rs files under $src" >&2; exit 2; }

# The module path of each file, in the same order, as one `path<TAB>module` line each.
names=""
for f in "${files[@]}"; do
  rel=${f#"$src"/}
  rel=${rel%.rs}
  case "$rel" in
    main | lib) m=crate ;;
    */mod) m=${rel%/mod} ;;
    *) m=$rel ;;
  esac
  m=${m//\//::}
  names+="$f	$m"$'\n'
done

read -r -d '' program <<'AWK' || true
function strip_comment(line,    i, c, q, out) {
  # Drops a `//` comment, but not `//` inside a string ("http://...").
  q = 0
  out = ""
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (c == "\\" && q) { out = out c substr(line, i + 1, 1); i++; continue }
    if (c == "\"") q = !q
    if (!q && c == "/" && substr(line, i + 1, 1) == "/") break
    out = out c
  }
  return out
}
function add_edge(from, to) {
  if (from == to || to == "") return
  if (!((from SUBSEP to) in edge)) {
    edge[from SUBSEP to] = 1
    out_n[from]++
    out_e[from, out_n[from]] = to
    n_edges++
  }
}
# The longest known module path among the `::`-separated names in `path`, starting at
# `base` ("" for the crate root); `base` itself when the first name is no module.
function resolve(base, path,    parts, n, i, cand, best) {
  n = split(path, parts, "::")
  best = base == "" ? "crate" : base
  if (base == "" && !(parts[1] in is_module) && (parts[1] in imported)) return imported[parts[1]]
  cand = base
  for (i = 1; i <= n; i++) {
    if (parts[i] == "") break
    cand = cand == "" ? parts[i] : cand "::" parts[i]
    if (cand in is_module) best = cand; else break
  }
  return best
}
# Every path a `use`-style group text names at its top level: "a::X, b::{c, d}, e" ->
# "a::X", "b", "e" (a nested group stops the path at its module).
function group_paths(text, from, base,    i, c, depth, cur) {
  depth = 0
  cur = ""
  for (i = 1; i <= length(text); i++) {
    c = substr(text, i, 1)
    if (c == "{") { depth++; continue }
    if (c == "}") { if (depth == 0) break; depth--; continue }
    if (depth > 0) continue
    if (c == ",") { if (cur != "") add_edge(from, resolve(base, cur)); cur = ""; continue }
    if (c ~ /[A-Za-z0-9_:]/) cur = cur c
  }
  if (cur != "") add_edge(from, resolve(base, cur))
}
function parent(m,    i) {
  if (m == "crate") return ""
  i = match(m, /::[A-Za-z0-9_]+$/)
  return i ? substr(m, 1, i - 1) : "crate"
}
# Reads the paths after each `prefix` (e.g. "crate::") in `line` as edges from `from`,
# resolved from module `base` ("" = the root); `pending` gets an unclosed group.
function scan(line, prefix, from, base,    rest, at, path, c) {
  rest = line
  while ((at = index(rest, prefix)) > 0) {
    # The prefix must start a path: not the tail of a longer name.
    c = at > 1 ? substr(rest, at - 1, 1) : " "
    rest = substr(rest, at + length(prefix))
    if (c ~ /[A-Za-z0-9_]/ || (c == ":" && prefix != "super::")) continue
    if (substr(rest, 1, 1) == "{") {
      if (balanced(rest)) group_paths(substr(rest, 2), from, base)
      else { pending = rest; pending_from = from; pending_base = base }
      continue
    }
    match(rest, /^[A-Za-z0-9_:]*/)
    path = substr(rest, 1, RLENGTH)
    sub(/::$/, "", path)
    if (path != "") add_edge(from, resolve(base, path))
  }
}
function balanced(text,    i, c, d) {
  d = 0
  for (i = 1; i <= length(text); i++) {
    c = substr(text, i, 1)
    if (c == "{") d++
    else if (c == "}") { d--; if (d == 0) return 1 }
  }
  return 0
}
# `use a::b::{X, Y as Z, c::W};` or `use a::X;` in the root: remembers, for each name
# it brings in, the module it comes from (one level of braces).
function root_use(text,    head, group, n, items, i, item, np, seg, name, path, from) {
  sub(/^[ ]*(pub(\([a-z]+\))? )?use /, "", text)
  sub(/;.*/, "", text)
  if (index(text, "{") > 0) {
    head = substr(text, 1, index(text, "{") - 1)
    group = substr(text, index(text, "{") + 1)
    sub(/}[^}]*$/, "", group)
  } else {
    head = ""
    group = text
  }
  gsub(/[ \t]/, "", head)
  sub(/^(self|crate)::/, "", head)
  n = split(group, items, ",")
  for (i = 1; i <= n; i++) {
    item = items[i]
    gsub(/^[ \t]+|[ \t]+$/, "", item)
    if (item == "" || index(item, "{") > 0) continue
    name = ""
    if (match(item, /[ \t]+as[ \t]+[A-Za-z0-9_]+$/)) {
      name = substr(item, RSTART, RLENGTH)
      sub(/^[ \t]+as[ \t]+/, "", name)
      item = substr(item, 1, RSTART - 1)
    }
    path = head item
    np = split(path, seg, "::")
    if (name == "") name = seg[np]
    from = resolve("", path)
    if (from != "crate" && name != "_" && name != "*") imported[name] = from
  }
}
function visit(m,    i, to, k, cyc) {
  color[m] = 1
  stack[++depth_] = m
  for (i = 1; i <= out_n[m]; i++) {
    to = out_e[m, i]
    if (color[to] == 1) {
      cyc = to
      for (k = depth_; k >= 1 && stack[k] != to; k--) {}
      cyc = ""
      for (; k <= depth_; k++) cyc = cyc stack[k] " -> "
      print "module-cycles: cycle in " src ": " cyc to
      cycles++
    } else if (color[to] == 0) {
      visit(to)
    }
  }
  depth_--
  color[m] = 2
}
BEGIN {
  n = split(names, lines, "\n")
  for (i = 1; i <= n; i++) {
    if (lines[i] == "") continue
    split(lines[i], kv, "\t")
    module_of[kv[1]] = kv[2]
    is_module[kv[2]] = 1
    order[++n_modules] = kv[2]
  }
}
FNR == 1 { me = module_of[FILENAME]; inline_n = 0; pending = "" }
{
  raw = $0
  if (raw ~ /^[ \t]*\/\//) next
  line = strip_comment(raw)
  # Inline modules, by rustfmt layout: `mod x {` opens one, a `}` at its indentation
  # closes it.
  if (inline_n > 0 && line ~ /^[ ]*}[ ]*$/) {
    match(line, /^ */)
    if (RLENGTH == inline_indent[inline_n]) { inline_n--; next }
  }
  if (line ~ /^[ ]*(pub(\([a-z]+\))? )?mod [A-Za-z0-9_]+ *\{/) {
    match(line, /^ */)
    inline_indent[++inline_n] = RLENGTH
    next
  }
  if (pending != "") {
    pending = pending " " line
    if (balanced(pending)) { group_paths(substr(pending, 2), pending_from, pending_base); pending = "" }
    next
  }
  if (line ~ /^[ ]*(pub(\([a-z]+\))? )?mod [A-Za-z0-9_]+;/) next
  scan(line, "crate::", me, "")
  # super:: (repeated) — relative to the file module, minus the inline modules around.
  rest = line
  while ((at = index(rest, "super::")) > 0) {
    c = at > 1 ? substr(rest, at - 1, 1) : " "
    rest = substr(rest, at)
    if (c ~ /[A-Za-z0-9_:]/) { rest = substr(rest, 8); continue }
    ups = 0
    while (substr(rest, 1, 7) == "super::") { ups++; rest = substr(rest, 8) }
    base = me
    for (k = ups - inline_n; k > 0; k--) base = parent(base)
    if (base == "") base = "crate"
    if (base == me) continue
    b = base == "crate" ? "" : base
    if (substr(rest, 1, 1) == "{") {
      if (balanced(rest)) group_paths(substr(rest, 2), me, b)
      else { pending = rest; pending_from = me; pending_base = b }
    } else {
      match(rest, /^[A-Za-z0-9_:]*/)
      p = substr(rest, 1, RLENGTH)
      sub(/::$/, "", p)
      add_edge(me, p == "" ? base : resolve(b, p))
    }
  }
  # A module naming its own submodules: `child::` or `self::child::`.
  tmp = line
  while (match(tmp, /[A-Za-z0-9_]+(::[A-Za-z0-9_]*)+/)) {
    np = split(substr(tmp, RSTART, RLENGTH), seg, "::")
    tmp = substr(tmp, RSTART + RLENGTH)
    word = seg[1] == "self" ? seg[2] : seg[1]
    if (word == "crate" || word == "super") continue
    child = me == "crate" ? word : me "::" word
    if (child in is_module) add_edge(me, child)
  }
  # The root's `use` statements: `crate::Name` of a name it imports or re-exports is an
  # edge to the module the name comes from.
  if (me == "crate") {
    if (use_text != "") use_text = use_text " " line
    else if (line ~ /^[ ]*(pub(\([a-z]+\))? )?use [A-Za-z0-9_]/) use_text = line
    if (use_text != "" && index(use_text, ";") > 0) { root_use(use_text); use_text = "" }
  }
}
END {
  if (show_edges) {
    for (i = 1; i <= n_modules; i++) {
      m = order[i]
      if (out_n[m] == 0) { print m " -> (nothing)"; continue }
      list = ""
      for (j = 1; j <= out_n[m]; j++) list = list (j > 1 ? ", " : "") out_e[m, j]
      print m " -> " list
    }
  }
  for (i = 1; i <= n_modules; i++) if (color[order[i]] == 0) visit(order[i])
  if (cycles > 0) exit 1
  print "module-cycles: no cycle among the " n_modules " modules of " src " (" n_edges " edges)"
}
AWK
awk -v names="$names" -v show_edges="$show_edges" -v src="$src" "$program" "${files[@]}"
