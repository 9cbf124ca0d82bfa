//! The crate's layout: one direction through the code. Reads every
//! `src/**/*.rs`, collects which file names which (`crate::…` paths,
//! `super::…`, and a parent's paths into its own child modules), outside
//! test code, and fails on any import cycle between files, printing it.
//! `cargo test --test layout -- --nocapture` prints the whole graph.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("audit::writer") of each file, and its text.
fn files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let module = match parts.as_slice() {
                [one] if one == "lib" || one == "main" => "crate".to_string(),
                _ => parts.join("::"),
            };
            if parts.last().is_some_and(|l| l == "tests")
                || parts.first().is_some_and(|f| f == "bin")
            {
                continue; // test modules and binaries are not the layout
            }
            if module == "crate" && parts[0] == "main" {
                continue;
            }
            out.insert(module, strip_tests(&std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

/// The text without comments, string literals and `#[cfg(test)]` items.
fn strip_tests(text: &str) -> String {
    let mut kept = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim();
        if skip_depth.is_none() && trimmed.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if pending_cfg_test && !trimmed.is_empty() && !trimmed.starts_with("#[") {
            pending_cfg_test = false;
            if opens > closes {
                skip_depth = Some(depth);
            } else {
                // A one-line item (`mod tests;`, a `use`): dropped.
                depth += opens - closes;
                continue;
            }
        }
        depth += opens - closes;
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        kept.push_str(&strip_strings(code));
        kept.push('\n');
    }
    kept
}

fn strip_strings(code: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    for c in code.chars() {
        if c == '"' && prev != '\\' && prev != '\'' {
            in_str = !in_str;
            prev = c;
            continue;
        }
        if !in_str {
            out.push(c);
        }
        prev = if prev == '\\' && c == '\\' { ' ' } else { c };
    }
    out
}

/// Every path a `use` tree or an inline path names, from `crate`.
fn paths_from(text: &str, lead: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(lead) {
        let before = rest[..i].chars().last();
        let start = &rest[i + lead.len()..];
        rest = start;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        // A use tree may span lines; it ends at `;`, an inline path sooner.
        let end = start.find(';').unwrap_or(start.len());
        let squashed: String = start[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand(&squashed, Vec::new(), &mut out);
    }
    out
}

/// Expands `a::b::{c, d::e}` (as far as it goes) into paths.
fn expand(s: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut s = s;
    loop {
        let ident: String = s
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !ident.is_empty() {
            prefix.push(ident.clone());
            s = &s[ident.len()..];
            if let Some(r) = s.strip_prefix("::") {
                s = r;
                continue;
            }
            out.push(prefix);
            return;
        }
        if let Some(r) = s.strip_prefix('{') {
            // Split the group at top-level commas.
            let mut depth = 0;
            let mut item_start = 0;
            let bytes: Vec<char> = r.chars().collect();
            for (k, c) in bytes.iter().enumerate() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        let item: String = bytes[item_start..k].iter().collect();
                        expand(&item, prefix.clone(), out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let item: String = bytes[item_start..k].iter().collect();
                        expand(&item, prefix.clone(), out);
                        item_start = k + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        out.push(prefix);
        return;
    }
}

/// The file module that owns `path` (its longest prefix that is a file).
fn owner(modules: &BTreeSet<String>, path: &[String]) -> Option<String> {
    let found = (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m));
    // Anything else is an item of lib.rs (the crate root) itself.
    Some(found.unwrap_or_else(|| "crate".to_string()))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = files();
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &files {
        let mut targets = BTreeSet::new();
        for p in paths_from(text, "crate::") {
            targets.extend(owner(&modules, &p));
        }
        let here: Vec<String> = if m == "crate" {
            Vec::new()
        } else {
            m.split("::").map(String::from).collect()
        };
        for p in paths_from(text, "super::") {
            let mut full = here[..here.len().saturating_sub(1)].to_vec();
            full.extend(p);
            targets.extend(owner(&modules, &full));
        }
        // A parent naming its own children (`writer::Writer`).
        for child in modules.iter().filter(|c| {
            let parts: Vec<&str> = c.split("::").collect();
            parts.len() == here.len() + 1
                && parts[..here.len()] == here.iter().map(String::as_str).collect::<Vec<_>>()[..]
        }) {
            let name = child.rsplit("::").next().unwrap();
            let used = paths_from(text, &format!("{name}::"));
            if !used.is_empty() {
                targets.insert(child.clone());
            }
        }
        targets.remove(m);
        g.insert(m.clone(), targets);
    }
    g
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_file_takes_part_in_an_import_cycle() {
    let g = graph();
    for (m, to) in &g {
        println!(
            "{m} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let found = cycles(&g);
    assert!(found.is_empty(), "import cycles between files: {found:#?}");
}

#[test]
fn the_reader_sees_grouped_uses_super_paths_and_skips_test_code() {
    let text = "use crate::{audit::{record::Record, Writer}, config};\nfn f() { crate::common::now_s(); super::x::y(); }\n#[cfg(test)]\nmod tests {\n    use crate::gateway;\n}\n";
    let kept = strip_tests(text);
    assert!(!kept.contains("gateway"));
    let paths = paths_from(&kept, "crate::");
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        [
            "audit::record::Record",
            "audit::Writer",
            "config",
            "common::now_s"
        ]
    );
    assert_eq!(paths_from(&kept, "super::")[0].join("::"), "x::y");
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
}

/// Nothing imports upwards: the composition root and the edges that serve
/// requests are imported only from above, and the leaves import nothing of
/// the crate (`common` at most).
#[test]
fn steps_never_import_the_composition_root_and_leaves_stay_leaves() {
    let g = graph();
    let importers = |target: &str| -> BTreeSet<String> {
        g.iter()
            .filter(|(_, to)| to.contains(target))
            .map(|(m, _)| m.clone())
            .collect()
    };
    let only_from: &[(&str, &[&str])] = &[
        (
            "app",
            &[
                "crate",
                "cli",
                "listen",
                "listen::http2",
                "gateway",
                "gateway::record",
                "admin",
            ],
        ),
        ("gateway", &["listen", "listen::http2"]),
        ("gateway::record", &["gateway"]),
        ("gateway::request", &["gateway", "gateway::record"]),
        ("admin", &["listen"]),
        ("listen", &["cli"]),
        ("listen::http2", &["listen"]),
        ("cli", &[]),
        ("dev", &["cli"]),
        ("preflight", &["app", "cli"]),
        // The shared state is a backend behind the limits step (whose one
        // admission round trip also spends the single-use jti there).
        ("shared", &["limits", "app"]),
    ];
    for (target, allowed) in only_from {
        let extra: Vec<String> = importers(target)
            .into_iter()
            .filter(|m| !allowed.contains(&m.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{target} imported from below by {extra:?}"
        );
    }
    for leaf in [
        "common",
        "route",
        "json",
        "metrics",
        "framing",
        "keyfile",
        "audit::record",
        "audit::lines",
    ] {
        let uses: Vec<&String> = g[leaf].iter().filter(|t| *t != "common").collect();
        assert!(uses.is_empty(), "the leaf {leaf} imports {uses:?}");
    }
}
